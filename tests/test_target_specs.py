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
    assert p.unit or p.type is bool
    assert p.problem(p.default) is None


@pytest.mark.parametrize("name", TARGETS)
def test_toml_round_trip(name):
    spec_cls = get_target(name).Spec
    text = dump_spec(name)
    assert spec_cls.from_toml(text) == spec_cls()
    for p in spec_cls.params():  # each parameter: doc and unit, then its source, then the key
        unit = f" [{p.unit}]" if p.unit else ""
        assert f"# {p.doc}{unit}\n# source: {p.source}\n{p.name} = " in text
    changed = spec_cls().replace(**{p.name: (not p.default if p.type is bool else p.default * 2)
                                    for p in spec_cls.params() if p.le is None})
    assert changed != spec_cls() and spec_cls.from_toml(changed.to_toml()) == changed


def _out_of_range(p: Param):
    if p.le is not None:
        return p.type(p.le + 1)
    if p.gt is not None:
        return p.type(p.gt)
    return p.type(p.ge - 1)


@pytest.mark.parametrize("tp", [tp for tp in PARAMS if tp[1].type is not bool], ids=_id)
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
    assert t.default_pipeline() == "fold-constants,fuse-batchnorm,quantize{weight-bits=8 act-bits=8},tile"
    assert [p.name for p in t.lowering_passes] == ["lower-sram-cim"]


def test_npu_capabilities():
    t = get_target("npu")()
    c = t.capabilities()
    assert (c.rows, c.cols, c.cell_bits, c.dac_bits, c.adc_bits, c.rows_per_op, c.arrays) == (32, 32, 8, 8, None, 32, 1)
    assert c.adc_lossless and c.dynamic_matmul and c.unit_of("q.matmul") == "array"
    assert t.default_pipeline() == "fold-constants,fuse-batchnorm,quantize{weight-bits=8 act-bits=8}"


def test_sram_cim_defaults_reproduce_the_calibration():
    """docs/hw-parameters.md §2.3: 1.8 fJ per 1b x 1b op all-in, split ADC 34 %, array 62 %, other 4 %."""
    s = get_target("sram-cim").Spec()
    cells = s.rows_per_op * s.cols
    assert math.isclose(s.pass_pj / cells, 0.0018, rel_tol=1e-9)
    assert math.isclose(s.cols * s.adc_pj / s.pass_pj, 0.34, rel_tol=1e-9)
    assert math.isclose(s.cols * s.shift_add_pj / s.pass_pj, 0.04, rel_tol=1e-9)
    mac_8x8 = s.pass_pj / cells * 64 * 1000  # fJ per 8b x 8b MAC (8 input bits x 8 weight columns)
    assert 110 < mac_8x8 < 120 and 16 < 2000 / mac_8x8 < 18  # about 117 fJ, 17 TOPS/W
    assert (s.adcs, s.pass_cycles) == (16, 9)


def test_npu_defaults_are_the_45nm_numbers_scaled():
    s = get_target("npu").Spec()
    assert math.isclose(s.mac_pj, 0.30 * 0.29) and math.isclose(s.vec_op_pj, 0.1 * 0.29)
    assert math.isclose(s.buffer_pj_per_byte, 20 * 2**0.46 / 8 * 0.29, rel_tol=1e-3)
    assert s.dram_pj_per_byte == 64.0 and s.dram_pj_per_byte > s.buffer_pj_per_byte > s.mac_pj  # Eyeriss order
