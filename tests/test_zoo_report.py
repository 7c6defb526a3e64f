"""The zoo accuracy table (examples/zoo/report.py): the README section is exactly what the script
renders from the numbers stored with it, and one cheap model's numbers still reproduce."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "zoo" / "report.py"
FIX = "regenerate the table with `python examples/zoo/report.py --write` and review the README diff"


@pytest.fixture(scope="module")
def report():
    """The report script, imported from its file."""
    spec = importlib.util.spec_from_file_location("zoo_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stored(report):
    """The numbers and the whole marked section of examples/zoo/README.md."""
    return report.read_section(report.README.read_text(encoding="utf-8"))


def test_readme_table_is_rendered_from_its_data(report, stored):
    """Nobody edited the table by hand, and it covers every zoo model with every column."""
    from cimc import zoo

    data, section = stored
    assert list(data) == list(zoo.NAMES), f"the table's models {list(data)} are not the zoo's; {FIX}"
    for name, row in data.items():
        assert set(report.COLUMNS) <= set(row), f"{name}: columns missing from the stored data; {FIX}"
    assert section == report.section(data), f"the README table is not what report.py renders; {FIX}"


def test_misses_are_marked(report):
    """A row below a goal says so in its goals cell and its cell."""
    row = dict.fromkeys(report.COLUMNS, 98.0) | {"w4a8": 95.0, "adc_bits": [7, 5]}
    table = report.render({"m": row})
    assert "MISS: W4A8 >= float - 2" in table and "95.00 **MISS**" in table
    assert report.render({"m": row | {"w4a8": 96.0}}).count("MISS") == 0


def test_cheap_model_reproduces(report, stored):
    """``mlp`` measured now gives the numbers in the README (the whole computation, one model)."""
    assert report.measure("mlp") == stored[0]["mlp"], f"mlp's accuracies changed; {FIX}"


def test_w4a8_table_is_rendered_from_its_data(report):
    """docs/quantization.md's W4A8 table: every zoo and held-out model, rendered from its numbers, each
    within 2 points of float with the default methods; mlp's row still reproduces."""
    from cimc import zoo

    fix = "regenerate it with `python examples/zoo/report.py --w4a8 --write` and review the diff"
    data, section = report.read_section(report.W4A8_DOC.read_text(encoding="utf-8"), report.W4A8_BEGIN)
    assert list(data) == [*zoo.NAMES, *report.heldout_models()], f"the W4A8 table's models are stale; {fix}"
    assert section == report.section(data, report.W4A8_BEGIN), f"the W4A8 table is not what report.py renders; {fix}"
    assert all(row["default"] >= row["float"] - 2.0 for row in data.values())
    assert report.measure_w4a8("mlp") == data["mlp"], f"mlp's W4A8 figures changed; {fix}"
    miss = report.render_w4a8({"m": data["mlp"] | {"default": data["mlp"]["float"] - 2.5}})
    assert "**MISS**" in miss and "| MISS |" in miss
