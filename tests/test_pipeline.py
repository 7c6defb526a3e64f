"""Pipeline text: parse, canonical print, round trip, every error message; and the pass registry."""

from __future__ import annotations

import pkgutil
import re
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import ClassVar, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cimc.passes
from cimc.errors import CimcError, ParseError
from cimc.passes import all_passes, get_pass, register_pass
from cimc.passes.fold_constants import FoldConstantsPass
from cimc.passmanager import Pass, PassResult, option
from cimc.pipeline import Pipeline, PipelineError, options_of


@register_pass
@dataclass(frozen=True)
class OptionsTestPass(Pass):
    """A pass with one option of every supported type."""

    name: ClassVar[str] = "options-test"
    bits: int = option(8, "an int")
    ratio: float = option(0.5, "a float")
    per_channel: bool = option(True, "a bool")
    calibration: Literal["minmax", "percentile"] = option("minmax", "a choice")
    label: str = option("plain", "a string")
    tile: tuple[int, ...] = option((256, 256), "a tuple")
    limit: int | None = option(None, "an optional int")
    path: str | None = option(None, "an optional string")

    def run(self, graph, ctx):
        return PassResult(False)


def parse(text: str) -> Pipeline:
    """Parse and check the canonical print round-trips."""
    p = Pipeline.parse(text)
    assert Pipeline.parse(str(p)) == p and str(Pipeline.parse(str(p))) == str(p)
    return p


def error(text: str) -> str:
    with pytest.raises(PipelineError) as e:
        Pipeline.parse(text)
    assert isinstance(e.value, ParseError) and e.value.source == "<pipeline>" and e.value.line == 1
    return str(e.value)


def test_parse_and_print_canonically():
    p = parse("fold-constants, options-test{bits=4 ratio=0.25 per-channel=false}")
    assert p.passes == (FoldConstantsPass(), OptionsTestPass(bits=4, ratio=0.25, per_channel=False))
    assert str(p) == ("fold-constants{max-size=268435456 keep-ops=[DequantizeLinear]},options-test{bits=4 ratio=0.25 "
                      "per-channel=false calibration=minmax label=plain tile=[256,256] limit=none "
                      "path=none}")


def test_every_value_kind():
    p = parse('options-test{calibration=percentile label="two words" tile=[1, 2,3] limit=7 '
              'path=/tmp/a.npz ratio=1e-3}')
    assert p.passes[0] == OptionsTestPass(calibration="percentile", label="two words",
                                          tile=(1, 2, 3), limit=7, path="/tmp/a.npz", ratio=1e-3)
    assert parse("options-test{label=\"none\" path=\"none\" tile=[]}").passes[0] == \
        OptionsTestPass(label="none", path="none", tile=())
    assert parse("options-test{ratio=3}").passes[0].ratio == 3.0
    assert parse("options-test{per_channel=false}").passes[0].per_channel is False  # snake too


def test_empty_pipeline():
    assert parse("").passes == () and parse("  ").passes == () and str(Pipeline()) == ""


@settings(deadline=None)  # no timing in unit tests: a busy CI machine is slow, not wrong
@given(bits=st.integers(-(2**40), 2**40), ratio=st.floats(allow_nan=False),
       label=st.text(max_size=12), tile=st.lists(st.integers(0, 999), max_size=4),
       limit=st.none() | st.integers(0, 10), path=st.none() | st.text(max_size=8))
def test_round_trip_property(bits, ratio, label, tile, limit, path):
    p = Pipeline((OptionsTestPass(bits=bits, ratio=ratio, label=label, tile=tuple(tile), limit=limit,
                                  path=path), FoldConstantsPass(max_size=5)))
    assert Pipeline.parse(str(p)) == p


@pytest.mark.parametrize("text, message", [
    ("fold-constant", "<pipeline>:1:1: unknown pass 'fold-constant'; did you mean 'fold-constants'? "
                      "(`cimc passes` lists them)"),
    ("fold-constants,zzz", "<pipeline>:1:16: unknown pass 'zzz' (`cimc passes` lists them)"),
    ("fold-constants{max-sise=3}", "<pipeline>:1:16: pass 'fold-constants' has no option 'max-sise'; "
                                   "did you mean 'max-size'? (its options: max-size, keep-ops)"),
    ("fold-constants{max-size=big}", "<pipeline>:1:25: option 'max-size' of pass 'fold-constants' "
                                     "expects an integer, found 'big'"),
    ("fold-constants{max-size=1.5}", "expects an integer, found '1.5'"),
    ('fold-constants{max-size="3"}', 'expects an integer, found "3"'),
    ("fold-constants{max-size=[1,2]}", "expects an integer, found [1,2]"),
    ("options-test{per-channel=yes}", "<pipeline>:1:26: option 'per-channel' of pass 'options-test' "
                                      "expects true or false, found 'yes'"),
    ("options-test{calibration=max}", "expects one of 'minmax', 'percentile', found 'max'"),
    ("options-test{tile=4}", "expects a list like [a,b] of integers, found '4'"),
    ("options-test{tile=[4,x]}", "expects a list like [a,b] of integers, found [4,x]"),
    ("options-test{limit=x}", "expects an integer or none, found 'x'"),
    ("options-test{ratio=fast}", "expects a number, found 'fast'"),
    ("options-test{bits=1 bits=2}", "<pipeline>:1:21: option 'bits' of pass 'options-test' is given twice"),
    ("fold-constants{", "<pipeline>:1:16: syntax error: expected '}' or a name, found the end of the pipeline"),
    ("fold-constants}", "<pipeline>:1:15: syntax error: expected ',', '{' or the end, found '}'"),
    ("fold-constants,,x", "<pipeline>:1:16: syntax error: expected a name, found ','"),
    ("fold-constants{max-size}", "<pipeline>:1:24: syntax error: expected '=', found '}'"),
    ("a b", "<pipeline>:1:3: syntax error: expected ',', '{' or the end, found 'b'"),
    ("fold-constants{max-size=[1 2]}", "<pipeline>:1:28: syntax error: expected ',' or ']', found '2'"),
    ("fold-constants{max-size=1}}", "<pipeline>:1:27: syntax error"),
    ("fold-constants{max-size=@}", None),
])
def test_error_messages(text, message):
    got = error(text)
    if message is not None:
        assert message in got
    assert re.match(r"<pipeline>:1:\d+: ", got)


def test_required_option_and_validating_pass():
    @register_pass
    @dataclass(frozen=True)
    class NeedsTestPass(Pass):
        """Has a required option and checks its value."""

        name: ClassVar[str] = "needs-test"
        k: int = option(__import__("dataclasses").MISSING, "required")

        def __post_init__(self):
            if self.k < 0:
                raise ValueError(f"k must be >= 0, got {self.k}")

    assert "<pipeline>:1:1: pass 'needs-test' needs option(s) k" in error("needs-test")
    assert "pass 'needs-test': k must be >= 0, got -1" in error("needs-test{k=-1}")
    assert str(parse("needs-test{k=2}")) == "needs-test{k=2}"


# ---- the registry ------------------------------------------------------------------------------

def _kebab(module: str) -> str:
    return module.replace("_", "-")


def test_every_pass_module_is_registered_with_matching_names():
    root = Path(cimc.passes.__file__).parent
    modules = [m.name for m in pkgutil.iter_modules([str(root)]) if not m.name.startswith("_")]
    assert "fold_constants" in modules
    registry = all_passes()
    for module in modules:
        cls = registry.get(_kebab(module))
        assert cls is not None, f"passes/{module}.py is not registered as '{_kebab(module)}'"
        assert cls.__module__ == f"cimc.passes.{module}"
        camel = "".join(w.capitalize() for w in module.split("_")) + "Pass"
        assert cls.__name__.lower() == camel.lower(), f"{cls.__name__} should be spelled like {camel}"
        assert is_dataclass(cls) and cls.__dataclass_params__.frozen
        assert cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(")
        for spec in options_of(cls):
            assert spec.doc, f"option {spec.name} of {cls.name} has no doc"


def test_unknown_and_duplicate_names():
    with pytest.raises(CimcError, match="unknown pass 'fold-constans'; did you mean 'fold-constants'"):
        get_pass("fold-constans")

    @dataclass(frozen=True)
    class Clash(Pass):
        """Clashes with the built-in."""

        name: ClassVar[str] = "fold-constants"

    with pytest.raises(CimcError, match=r"pass name 'fold-constants' is registered twice: by "
                                        r"cimc.passes.fold_constants:FoldConstantsPass and by .*Clash"):
        register_pass(Clash)

    @dataclass(frozen=True)
    class BadName(Pass):
        """Not kebab-case."""

        name: ClassVar[str] = "Bad_Name"

    with pytest.raises(CimcError, match="kebab-case"):
        register_pass(BadName)
    assert get_pass("fold-constants") is FoldConstantsPass


@dataclass(frozen=True)
class PluginTestPass(Pass):
    """Stands in for a pass another package ships through the ``cimc.passes`` entry points."""

    name: ClassVar[str] = "plugin-test"
    level: int = option(1, "a level")


def _plugins(monkeypatch, *eps: tuple[str, str]) -> None:
    from importlib.metadata import EntryPoint

    entries = [EntryPoint(name, value, "cimc.passes") for name, value in eps]
    import copy

    import cimc.registry

    fresh = copy.deepcopy(cimc.passes._REGISTRY)
    fresh._scanned = False
    monkeypatch.setattr(cimc.passes, "_REGISTRY", fresh)
    monkeypatch.setattr(cimc.registry, "entry_points", lambda group: entries if group == "cimc.passes" else [])


def test_entry_point_plugins_load_lazily(monkeypatch):
    _plugins(monkeypatch, ("plugin-test", f"{__name__}:PluginTestPass"))
    assert str(Pipeline.parse("fold-constants,plugin-test{level=2}")).endswith(",plugin-test{level=2}")
    assert all_passes()["plugin-test"] is PluginTestPass


def test_entry_point_plugin_errors(monkeypatch):
    _plugins(monkeypatch, ("plugin-bad", "cimc.passes.fold_constants:FoldConstantsPass"),
             ("plugin-gone", "no_such_module_xyz:Pass"))
    with pytest.raises(CimcError, match="should be a Pass subclass named 'plugin-bad'"):
        get_pass("plugin-bad")  # the class it names calls itself fold-constants
    with pytest.raises(CimcError, match="pass 'plugin-gone' could not be loaded from no_such_module_xyz:Pass"):
        get_pass("plugin-gone")
    _plugins(monkeypatch, ("fold-constants", "elsewhere:Folder"))
    with pytest.raises(CimcError, match=re.escape("pass name 'fold-constants' is registered twice: by cimc."
                                                  "passes.fold_constants:FoldConstantsPass and by elsewhere:Folder")):
        get_pass("not-a-pass")
