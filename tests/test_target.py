"""The target core (Spec, param, TOML, overrides, Capabilities, Target) and the target registry."""

from __future__ import annotations

import copy
import re
from dataclasses import FrozenInstanceError, dataclass
from pathlib import Path
from typing import ClassVar

import pytest

import cimc.registry
import cimc.targets as registry
from cimc.errors import CimcError, InputError, ParseError
from cimc.target import Capabilities, Spec, Target, lossless_adc_bits, param
from cimc.targets import (
    all_targets,
    describe_target,
    describe_targets,
    dump_spec,
    get_target,
    load_target,
    register_target,
)


@dataclass(frozen=True)
class ToySpec(Spec):
    """A spec with one parameter of each kind and bound."""

    target: ClassVar[str] = "toy"
    rows: int = param(4, "Rows.", unit="rows", source="test", ge=1)
    bits: int = param(2, "Bits.", unit="bits", source="test", ge=1, le=8)
    clock_mhz: float = param(100.0, "Clock.", unit="MHz", source="test", gt=0)
    energy_pj: float = param(1e-05, "Energy.", unit="pJ", source="test", ge=0)
    fast: bool = param(False, "Fast.", source="test")
    label: str = param('a "quoted"\tlabel', "Label.", source="test")

    def check(self):
        yield from super().check()
        if self.bits > self.rows:
            yield f"bits = {self.bits} must be <= rows = {self.rows}"


@dataclass(frozen=True)
class ToyTarget(Target):
    """A target with a toy spec."""

    name: ClassVar[str] = "toy-target"
    Spec: ClassVar[type[ToySpec]] = ToySpec
    description: ClassVar[str] = "A toy."
    spec: ToySpec = None  # type: ignore[assignment]

    def capabilities(self) -> Capabilities:
        s = self.spec
        return Capabilities(rows=s.rows, cols=s.rows, cell_bits=1, weight_bits_max=s.bits, act_bits_max=s.bits,
                            dac_bits=1, adc_bits=None, rows_per_op=s.rows, arrays=1)


# -- Spec ------------------------------------------------------------------------------------------

def test_params_carry_metadata_and_types():
    ps = {p.name: p for p in ToySpec.params()}
    assert list(ps) == ["rows", "bits", "clock_mhz", "energy_pj", "fast", "label"]
    assert (ps["bits"].type, ps["bits"].unit, ps["bits"].le, ps["clock_mhz"].type) == (int, "bits", 8, float)
    assert ps["bits"].allowed() == "an integer in 1..8" and ps["clock_mhz"].allowed() == "a number > 0"
    assert ToySpec.get_param("clock-mhz") is ps["clock_mhz"]


def test_int_for_float_is_stored_as_float_and_spec_is_frozen():
    s = ToySpec(clock_mhz=200)
    assert type(s.clock_mhz) is float and s == ToySpec(clock_mhz=200.0)
    with pytest.raises(FrozenInstanceError):
        s.rows = 3  # type: ignore[misc]


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"rows": 0}, "rows = 0 is out of range: expected an integer >= 1 (Rows)"),
    ({"bits": 9}, "bits = 9 is out of range: expected an integer in 1..8 (Bits)"),
    ({"clock_mhz": 0.0}, "clock_mhz = 0.0 is out of range: expected a number > 0 (Clock)"),
    ({"energy_pj": -1.0}, "energy_pj = -1.0 is out of range: expected a number >= 0 (Energy)"),
    ({"energy_pj": float("inf")}, "energy_pj = inf should be a finite number"),
    ({"energy_pj": float("nan")}, "energy_pj = nan should be a finite number"),
    ({"rows": "4"}, "rows = '4' should be an integer"),
    ({"rows": True}, "rows = True should be an integer"),
    ({"rows": 4.0}, "rows = 4.0 should be an integer"),
    ({"fast": 1}, "fast = 1 should be true or false"),
    ({"label": 3}, "label = 3 should be a string"),
    ({"bits": 5, "rows": 4}, "bits = 5 must be <= rows = 4"),
])
def test_validation_names_field_value_and_range(kwargs, expected):
    with pytest.raises(InputError) as e:
        ToySpec(**kwargs)
    assert str(e.value) == f"toy spec: {expected}"


def test_validation_lists_every_bad_field():
    with pytest.raises(InputError, match=r"toy spec: rows = 0 .*; bits = 0 "):
        ToySpec(rows=0, bits=0)


def test_toml_round_trip_of_every_kind():
    s = ToySpec(rows=6, bits=3, clock_mhz=0.1 + 0.2, energy_pj=1e20, fast=True, label="ünï\ncode\\ \"x\"")
    text = s.to_toml()
    assert ToySpec.from_toml(text) == s
    assert 'target = "toy"' in text and "# Bits. [bits]\n# source: test\nbits = 3\n" in text


def test_from_toml_reads_files_and_keeps_defaults(tmp_path):
    path = tmp_path / "toy.toml"
    path.write_text("bits = 3\n")
    assert ToySpec.from_toml(path) == ToySpec.from_toml(str(path)) == ToySpec(bits=3)
    assert ToySpec.from_toml("") == ToySpec()
    assert ToySpec.from_toml("clock-mhz = 5") == ToySpec(clock_mhz=5.0)  # int read as float, '-' as '_'


def test_from_toml_errors():
    with pytest.raises(InputError, match=r"<spec>: toy spec has no parameter 'bitz'; did you mean 'bits'\?"):
        ToySpec.from_toml("bitz = 3")
    with pytest.raises(InputError, match=r"<spec>: toy spec: bits expects an integer, found a string '3' "
                                         r"\(e.g. bits = 2\)"):
        ToySpec.from_toml('bits = "3"')
    with pytest.raises(InputError, match="rows expects an integer, found a table"):
        ToySpec.from_toml("[rows]\nx = 1")
    with pytest.raises(InputError, match="clock_mhz expects a number, found a boolean True"):
        ToySpec.from_toml("clock_mhz = true")
    with pytest.raises(InputError, match="<spec>: toy spec: bits = 9 is out of range"):
        ToySpec.from_toml("bits = 9")
    with pytest.raises(InputError, match="this spec is for target 'npu', not 'toy'"):
        ToySpec.from_toml('target = "npu"')


def test_from_toml_parameter_given_twice():
    with pytest.raises(InputError, match=r"toy spec: parameter clock_mhz is given twice \(as 'clock-mhz' too\)"):
        ToySpec.from_toml("clock_mhz = 1.0\nclock-mhz = 2.0")


def test_toml_syntax_error_has_line_and_column(tmp_path):
    with pytest.raises(ParseError) as e:
        ToySpec.from_toml("rows = 4\nbits = = 3\n")
    assert (e.value.source, e.value.line, e.value.column) == ("<spec>", 2, 8)
    assert str(e.value).startswith("<spec>:2:8: invalid TOML in the toy spec: Invalid value")
    path = tmp_path / "bad.toml"
    path.write_text("rows = [")
    with pytest.raises(ParseError) as e:
        ToySpec.from_toml(path)
    assert e.value.source == str(path) and e.value.line == 1


def test_from_toml_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"the toy spec file /nonexistent/spec\.toml: no such file"):
        ToySpec.from_toml(Path("/nonexistent/spec.toml"))
    with pytest.raises(InputError, match=r"the toy spec file missing\.toml: no such file"):
        ToySpec.from_toml("missing.toml")
    (tmp_path / "latin1.toml").write_bytes(b"# caf\xe9\nbits = 3\n")
    with pytest.raises(ParseError, match=r"latin1\.toml:1:6: not UTF-8 text: byte e9"):
        ToySpec.from_toml(tmp_path / "latin1.toml")


def test_load_target_reads_spec_as_a_file_whatever_its_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"the sram-cim spec file adc_bits=3: no such file"):
        load_target("sram-cim", "adc_bits=3")  # not inline TOML
    (tmp_path / "a=b.toml").write_text('target = "sram-cim"\nadc_bits = 6\n')
    assert load_target("sram-cim", "a=b.toml").spec.adc_bits == 6


def test_replace_and_overrides():
    s = ToySpec()
    assert s.replace(bits=3, clock_mhz=7) == ToySpec(bits=3, clock_mhz=7.0)
    assert ToySpec.parse_overrides(["bits=3", "clock-mhz = 2.5", "fast=true", "label=plain", 'label="x y"']) == {
        "bits": 3, "clock_mhz": 2.5, "fast": True, "label": "x y"}
    assert s.with_overrides(["rows=8", "bits=8"]) == ToySpec(rows=8, bits=8)
    with pytest.raises(InputError, match="toy spec has no parameter 'bitz'; did you mean 'bits'"):
        s.replace(bitz=3)
    with pytest.raises(InputError, match="toy spec has no parameter 'clock'; did you mean 'clock_mhz'"):
        ToySpec.parse_overrides(["clock=3"])
    with pytest.raises(InputError, match=r"spec override 'bits' should be key=value, e.g. adc_bits=6"):
        ToySpec.parse_overrides(["bits"])
    with pytest.raises(InputError, match="toy spec: bits expects an integer, found a string 'three'"):
        ToySpec.parse_overrides(["bits=three"])
    with pytest.raises(InputError, match=r"bits expects an integer, found a string '3\\nrows = 5'"):
        ToySpec.parse_overrides(["bits=3\nrows = 5"])  # no TOML injection
    with pytest.raises(InputError, match="toy spec: bits = 9 is out of range"):
        s.with_overrides(["bits=9"])


def test_param_needs_a_source():
    @dataclass(frozen=True)
    class NoSource(Spec):
        x: int = 1

    with pytest.raises(TypeError, match="declared with param"):
        NoSource()


# -- Capabilities ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("rows", "dac", "cell", "bits"), [
    (1, 1, 1, 1), (2, 1, 1, 2), (3, 1, 1, 2), (4, 1, 1, 3), (64, 1, 1, 7), (128, 1, 1, 8), (127, 1, 1, 7),
    (256, 1, 1, 9), (128, 1, 2, 9), (128, 2, 2, 11), (64, 4, 2, 12), (1152, 1, 1, 11), (1, 8, 8, 16),
])
def test_lossless_adc_bits(rows, dac, cell, bits):
    import math

    assert lossless_adc_bits(rows, dac, cell) == bits
    assert bits == math.ceil(math.log2(rows * (2**dac - 1) * (2**cell - 1) + 1))


def test_lossless_adc_bits_rejects_nonpositive():
    with pytest.raises(InputError, match="rows_per_op=0"):
        lossless_adc_bits(0, 1, 1)


def test_capabilities():
    c = Capabilities(rows=128, cols=128, cell_bits=1, weight_bits_max=8, act_bits_max=8, dac_bits=1, adc_bits=7,
                     rows_per_op=64, arrays=4)
    assert c.lossless_adc_bits() == 7 and c.adc_lossless
    assert c.lossless_adc_bits(rows_per_op=128) == 8 and c.lossless_adc_bits(cell_bits=2) == 8
    assert not Capabilities(**{**c.__dict__, "adc_bits": 6}).adc_lossless
    assert Capabilities(**{**c.__dict__, "adc_bits": None}).adc_lossless
    assert (c.unit_of("q.conv"), c.unit_of("q.requant"), c.unit_of("QLinearConv")) == ("array", "vector", None)


# -- Target ----------------------------------------------------------------------------------------------

def test_target_holds_default_or_given_spec():
    assert ToyTarget().spec == ToySpec()
    t = ToyTarget(ToySpec(bits=4))
    assert t.with_spec(rows=8).spec == ToySpec(bits=4, rows=8) and t.spec.bits == 4
    with pytest.raises(InputError, match="target 'toy-target' needs a ToySpec, got a NpuSpec"):
        ToyTarget(get_target("npu").Spec())
    assert ToyTarget.lowering_passes == () and ToyTarget().register_ops() is None
    assert ToyTarget().default_pipeline() == \
        "fold-constants,fuse-batchnorm,quantize{weight-bits=2 act-bits=2},legalize-convs"


def test_describe_lists_every_parameter():
    text = ToyTarget().describe()
    assert text.splitlines()[0] == "toy-target: A toy."
    assert re.search(r"^  clock_mhz +100\.0 +MHz +Clock\.$", text, re.M)
    assert re.search(r"^  fast +false +- +Fast\.$", text, re.M)
    assert len(text.splitlines()) == 1 + len(ToySpec.params())


# -- registry --------------------------------------------------------------------------------------------

@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry's state, restored after the test."""
    monkeypatch.setattr(registry, "_REGISTRY", copy.deepcopy(registry._REGISTRY))
    return registry


def test_builtin_lookup():
    assert get_target("npu").__name__ == "NpuTarget" and get_target("sram-cim").__name__ == "SramCimTarget"
    assert {"npu", "sram-cim"} <= set(all_targets())
    assert list(all_targets()) == sorted(all_targets())


@pytest.mark.parametrize(("name", "suggestion"), [("sram_cim", "sram-cim"), ("sram", "sram-cim"), ("npus", "npu")])
def test_unknown_target_did_you_mean(name, suggestion):
    with pytest.raises(CimcError, match=rf"unknown target '{name}'; did you mean '{suggestion}'\? \(`cimc targets`"):
        get_target(name)


def test_unknown_target_without_suggestion():
    with pytest.raises(CimcError, match=r"unknown target 'zzzzzz' \(`cimc targets` lists them: "):
        get_target("zzzzzz")


def test_register_target(fresh_registry):
    assert register_target(ToyTarget) is ToyTarget
    assert get_target("toy-target") is ToyTarget and "toy-target" in all_targets()
    assert register_target(ToyTarget) is ToyTarget  # the same class again is fine


def test_duplicate_name_names_both(fresh_registry):
    @dataclass(frozen=True)
    class OtherNpu(ToyTarget):
        name: ClassVar[str] = "npu"

    with pytest.raises(CimcError, match=r"target name 'npu' is registered twice: by cimc.targets.npu:NpuTarget "
                                        r"and by test_target:.*OtherNpu; rename one of them"):
        register_target(OtherNpu)


def test_register_rejects_bad_classes(fresh_registry):
    with pytest.raises(CimcError, match="needs a Target subclass"):
        register_target(ToySpec)  # type: ignore[arg-type]

    @dataclass(frozen=True)
    class Bad(ToyTarget):
        name: ClassVar[str] = "Bad_Name"

    with pytest.raises(CimcError, match="kebab-case"):
        register_target(Bad)


class _EntryPoint:
    def __init__(self, name, value):
        self.name, self.value, self.dist = name, value, type("D", (), {"name": "toy-dist"})()


def test_entry_point_plugins(fresh_registry, monkeypatch):
    eps = [_EntryPoint("toy-target", "test_target:ToyTarget")]
    monkeypatch.setattr(cimc.registry, "entry_points", lambda group: eps if group == "cimc.targets" else [])
    registry._REGISTRY._scanned = False
    assert get_target("toy-target") is ToyTarget


def test_entry_point_duplicate_and_broken(fresh_registry, monkeypatch):
    eps = [_EntryPoint("npu", "elsewhere:Npu")]
    monkeypatch.setattr(cimc.registry, "entry_points", lambda group: eps)
    registry._REGISTRY._scanned = False
    with pytest.raises(CimcError, match=r"'npu' is registered twice: by cimc.targets.npu:NpuTarget and by "
                                        r"elsewhere:Npu \(entry point of toy-dist\)"):
        all_targets()
    eps[:] = [_EntryPoint("gone", "no_such_module_xyz:T"), _EntryPoint("misnamed", "test_target:ToyTarget")]
    registry._REGISTRY._scanned = False
    with pytest.raises(CimcError, match="target 'gone' could not be loaded from no_such_module_xyz:T"):
        get_target("gone")
    with pytest.raises(CimcError, match=r"should be a Target subclass named 'misnamed', found .* named 'toy-target'"):
        get_target("misnamed")


def test_load_target_with_spec_and_overrides(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('target = "sram-cim"\nadc_bits = 6\nrows = 256\n')
    t = load_target("sram-cim", path, ["adc-bits=7"])
    assert (t.name, t.spec.adc_bits, t.spec.rows) == ("sram-cim", 7, 256)
    assert load_target("npu").spec == get_target("npu").Spec()
    with pytest.raises(InputError, match=f"{re.escape(str(path))}: this spec is for target 'sram-cim', not 'npu'"):
        load_target("npu", path)


def test_describe_and_dump():
    text = describe_targets()
    assert text.startswith("memristor: ReRAM/PCM crossbars") and "\n\nnpu: Digital NPU" in text
    assert "\n\nsram-cim: SRAM compute-in-memory" in text
    assert describe_target("sram-cim") in text
    assert get_target("sram-cim").Spec.from_toml(dump_spec("sram-cim")) == get_target("sram-cim").Spec()
