"""The specs of the built-in targets (npu, sram-cim): sources, TOML round trips, every validation
message, capabilities and the calibration the defaults were derived for."""

from __future__ import annotations

import math

import pytest

from cimc.errors import InputError
from cimc.target import Param
from cimc.targets import BUILTIN, dump_spec, get_target

TARGETS = sorted(BUILTIN)
PARAMS = [(t, p) for t in TARGETS for p in get_target(t).Spec.params()]


def _id(tp: tuple[str, Param]) -> str:
    return f"{tp[0]}.{tp[1].name}"


@pytest.mark.parametrize("tp", PARAMS, ids=_id)
def test_every_default_has_doc_unit_and_source(tp):
    _, p = tp
    assert p.doc.strip() and p.source.strip() and len(p.source) > 10
    assert p.unit or p.type in (bool, str)  # a flag or a choice has no unit
    assert p.problem(p.default) is None


@pytest.mark.parametrize("name", TARGETS)
def test_toml_round_trip(name):
    spec_cls = get_target(name).Spec
    text = dump_spec(name)
    assert spec_cls.from_toml(text) == spec_cls()
    for p in spec_cls.params():  # each parameter: doc and unit, then its source, then the key
        unit = f" [{p.unit}]" if p.unit else ""
        assert f"# {p.doc}{unit}\n# source: {p.source}\n{p.name} = " in text
    changed = spec_cls().replace(**{p.name: (not p.default if p.type is bool else p.default * 2 if p.choices is None
                                             else next(c for c in p.choices if c != p.default))
                                    for p in spec_cls.params()
                                    if p.le is None and (p.type is not str or p.choices is not None)})
    assert changed != spec_cls() and spec_cls.from_toml(changed.to_toml()) == changed


def _out_of_range(p: Param):
    if p.le is not None:
        return p.type(p.le + 1)
    if p.gt is not None:
        return p.type(p.gt)
    return p.type(p.ge - 1)


@pytest.mark.parametrize("tp", [tp for tp in PARAMS if tp[1].type not in (bool, str)], ids=_id)
def test_out_of_range_and_wrong_type_name_the_field(tp):
    name, p = tp
    spec_cls = get_target(name).Spec
    bad = _out_of_range(p)
    with pytest.raises(InputError) as e:
        spec_cls().replace(**{p.name: bad})
    assert str(e.value).startswith(f"{name} spec: {p.name} = {bad!r} is out of range: expected {p.allowed()} (")
    with pytest.raises(InputError, match=f"{name} spec: {p.name} expects {p.kind}, found a string 'x'"):
        spec_cls.from_toml(f'{p.name} = "x"')


@pytest.mark.parametrize(("name", "overrides", "message"), [
    ("sram-cim", {"rows_per_op": 129}, "rows_per_op = 129 must be <= rows = 128 (word lines on at once"),
    ("sram-cim", {"rows": 32}, "rows_per_op = 64 must be <= rows = 32"),
    ("sram-cim", {"cols_per_adc": 256}, "cols_per_adc = 256 must be <= cols = 128 (columns sharing one ADC)"),
    ("sram-cim", {"cols": 4, "cols_per_adc": 4},
     "weight_bits_max = 8 needs 8 columns of 1-bit cells, more than cols = 4"),
    ("sram-cim", {"dac_bits": 4, "act_bits_max": 2}, "dac_bits = 4 must be <= act_bits_max = 2"),
    ("npu", {"acc_bits": 12}, "acc_bits = 12 must be >= 2 * mac_bits = 16"),
    ("sram-cim", {"p_sa0": 0.6, "p_sa1": 0.5}, "p_sa0 + p_sa1 = 1.1 must be <= 1"),
])
def test_cross_field_rules(name, overrides, message):
    with pytest.raises(InputError) as e:
        get_target(name).Spec(**overrides)
    assert str(e.value).startswith(f"{name} spec: {message}")


@pytest.mark.parametrize(("name", "key", "suggestion"), [
    ("sram-cim", "adc_bit", "adc_bits"), ("sram-cim", "rows-per-ops", "rows_per_op"),
    ("sram-cim", "macro", "macros"), ("npu", "mac_row", "mac_rows"), ("npu", "dram_pj", "dram_pj_per_byte"),
])
def test_unknown_key_did_you_mean(name, key, suggestion):
    spec_cls = get_target(name).Spec
    with pytest.raises(InputError, match=f"<spec>: {name} spec has no parameter '{key}'; did you mean '{suggestion}'"):
        spec_cls.from_toml(f"{key} = 1")
    with pytest.raises(InputError, match=f"did you mean '{suggestion}'"):
        spec_cls.parse_overrides([f"{key}=1"])


def test_sram_cim_capabilities():
    t = get_target("sram-cim")()
    c = t.capabilities()
    assert (c.rows, c.cols, c.cell_bits, c.dac_bits, c.adc_bits, c.rows_per_op, c.arrays) == (128, 128, 1, 1, 7, 64, 16)
    assert (c.weight_bits_max, c.act_bits_max, c.skips_zero_blocks, c.dynamic_matmul) == (8, 8, True, False)
    assert c.lossless_adc_bits() == 7 and c.adc_lossless  # the default ADC keeps every partial sum exact
    assert not t.with_spec(adc_bits=5).capabilities().adc_lossless  # NeuroSim's 5-b ADC truncates
    assert c.unit_of("q.conv") == "array" and c.unit_of("q.requant") == "vector"
    assert t.default_pipeline() == \
        "fold-constants,fuse-batchnorm,quantize{weight-bits=8 act-bits=8},legalize-convs,tile"
    assert [p.name for p in t.lowering_passes] == ["lower-sram-cim"]


def test_npu_capabilities():
    t = get_target("npu")()
    c = t.capabilities()
    assert (c.rows, c.cols, c.cell_bits, c.dac_bits, c.adc_bits, c.rows_per_op, c.arrays) == (32, 32, 8, 8, None, 32, 1)
    assert c.adc_lossless and c.dynamic_matmul and c.unit_of("q.matmul") == "array"
    assert t.default_pipeline() == "fold-constants,fuse-batchnorm,quantize{weight-bits=8 act-bits=8},legalize-convs"


def test_sram_cim_defaults_reproduce_the_calibration():
    """docs/hw-parameters.md §2.3: 1.8 fJ per 1b x 1b op all-in at the calibration point (4-b ADC, 1-b inputs, 64 rows),
    split ADC 34 %, DAC and word line 22 %, array 40 %, other 4 % (Wang et al.)."""
    s = get_target("sram-cim").Spec()
    cells, ref = s.rows_per_op * s.cols, s.adc_ref_bits
    full = s.pass_pj(ref, 1)
    assert ref == 4 and math.isclose(full / cells, 0.0018, rel_tol=1e-9)
    assert math.isclose(s.cols * s.adc_pj / full, 0.34, rel_tol=1e-9)
    assert math.isclose(s.rows_per_op * s.dac_pj / full, 0.22, rel_tol=1e-9)
    assert math.isclose(cells * s.mvm_cell_pj / full, 0.40, rel_tol=1e-9)
    assert math.isclose(s.cols * s.shift_add_pj / full, 0.04, rel_tol=1e-9)
    mac_8x8 = full / cells * 64 * 1000  # fJ per 8b x 8b MAC (8 input bits x 8 weight columns)
    assert 110 < mac_8x8 < 120 and 16 < 2000 / mac_8x8 < 18  # about 117 fJ, 17 TOPS/W
    # a full pass: 1 cycle of word-line drive, then 8 conversions per ADC of 0.8 ns (4 b) or 1.4 ns (7 b)
    assert s.adcs == 16 and s.pass_cycles(s.cols, ref) == 1 + 7 and s.pass_cycles(s.cols, 7) == 1 + 12


def test_sram_cim_converters_follow_the_published_laws():
    """ZigZag-IMC (docs/hw-parameters.md §2.2): ADC energy (100 B + 0.001 4^B) fF V^2, time B (k3 rows + k4), area
    10^(-0.0369 B + 1.206) 2^B um^2; DAC energy 50 fF B V^2; DAC area 2^B (ISAAC). At 0.8 V the ADC energies
    are 0.19 / 0.26 / 0.32 / 0.39 / 0.55 pJ at 3 / 4 / 5 / 6 / 8 b: the spec's figures keep those ratios."""
    s = get_target("sram-cim").Spec()
    zz = {3: 0.19, 4: 0.26, 5: 0.32, 6: 0.39, 8: 0.55}
    for b, pj in zz.items():
        assert math.isclose(s.adc_pj_at(b) / s.adc_pj_at(4), pj / zz[4], rel_tol=0.03), b
        assert math.isclose((100 * b + 0.001 * 4**b) * 0.64 / 1000, pj, rel_tol=0.03), b  # the law itself
    assert math.isclose(s.adc_ns_at(8), 2 * s.adc_ns_at(4)) and math.isclose(s.adc_ns_at(5), 1.0)  # NeuroSim 1 ns
    area = {4: 183, 5: 336, 8: 2085}  # um^2 at 28 nm
    for b, um2 in area.items():
        assert math.isclose(s.adc_area_um2_at(b), um2 * (22 / 28) ** 2, rel_tol=0.01), b
    assert math.isclose(s.dac_pj_at(4), 4 * s.dac_pj) and math.isclose(s.dac_area_um2_at(3), 4 * s.dac_area_um2)
    assert math.isclose(s.dac_area_um2, 0.166 * (22 / 32) ** 2, rel_tol=1e-4)


def test_npu_defaults_are_the_45nm_numbers_scaled():
    s = get_target("npu").Spec()
    assert math.isclose(s.mac_pj, 0.30 * 0.29) and math.isclose(s.vec_op_pj, 0.1 * 0.29)
    assert math.isclose(s.buffer_pj_per_byte, 20 * 2**0.46 / 8 * 0.29, rel_tol=1e-3)
    assert s.dram_pj_per_byte == 64.0 and s.dram_pj_per_byte > s.buffer_pj_per_byte > s.mac_pj  # Eyeriss order


def test_a_chip_file_that_is_not_one_is_one_clear_error(tmp_path):
    from cimc.targets import load_target

    t = load_target("sram-cim", overrides=[f"chip={tmp_path / 'none.npz'}"])
    with pytest.raises(InputError, match=r"none\.npz: no such file"):
        t.machine(0)
    with pytest.raises(InputError, match="sram-cim spec: chip expects a string, found an integer 3"):
        get_target("sram-cim").Spec.from_toml("chip = 3")
