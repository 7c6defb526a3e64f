"""The documentation in ``docs/`` stays true to the code and inside the repository.

- The generated instruction pages equal what ``docs/instructions/generate.py`` writes now.
- Every citation of ``hw-parameters.md §X`` (spec parameter sources, docstrings, comments, docs)
  names a section that ``docs/hw-parameters.md`` has.
- Nothing in the repository points outside it (to the team's own notes) or speaks of issues or
  briefs: a user has only the repository.
- ``docs/README.md`` links every page, and every relative link in the docs and the README reaches
  a file (and a heading, when it names one).

Each checker is a function run on the repository, and also shown catching a planted fault.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

from cimc.opref import REGENERATE

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HW = DOCS / "hw-parameters.md"


def _generator():
    spec = importlib.util.spec_from_file_location("docs_instructions_generate", DOCS / "instructions" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- generated instruction pages ----------------------------------------------------------------

def test_instruction_pages_are_current():
    stale = _generator().stale_pages()
    assert not stale, (f"stale generated pages in docs/instructions/: {', '.join(stale)}; "
                       f"regenerate them with `{REGENERATE}` and commit the result")


def test_stale_page_check_catches_edits_missing_and_leftover_pages(tmp_path):
    gen = _generator()
    for name, text in gen.reference_pages().items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert gen.stale_pages(tmp_path) == []
    page = tmp_path / "sram-cim.md"
    page.write_text(page.read_text(encoding="utf-8").replace("sram.mvm", "sram.mvx", 1), encoding="utf-8")
    (tmp_path / "npu.md").unlink()
    (tmp_path / "gone-target.md").write_text("# old\n", encoding="utf-8")
    assert sorted(gen.stale_pages(tmp_path)) == ["gone-target.md", "npu.md", "sram-cim.md"]


def test_generator_check_mode_exit_status(capsys):
    assert _generator().main(["--check"]) == 0
    assert capsys.readouterr().out == ""


# ---- hw-parameters.md citations -------------------------------------------------------------------

_CITE = re.compile(r"hw-parameters\.md((?:\s*(?:,|and)?\s*§\s*\d+(?:\.\d+)*)+)")
_SECTION = re.compile(r"§\s*(\d+(?:\.\d+)*)")
_HEADING = re.compile(r"^#{2,4}\s+(\d+(?:\.\d+)*)\.?\s", re.M)


def sections(markdown: str) -> set[str]:
    """Section numbers (``"2"``, ``"2.3"``) of the numbered headings of a page."""
    return set(_HEADING.findall(markdown))


def cited_sections(text: str) -> list[str]:
    """Every section number cited as ``hw-parameters.md §2.2, §2.3`` (or ``... §4 and §5``) in ``text``."""
    return [s for m in _CITE.finditer(text) for s in _SECTION.findall(m.group(1))]


def bad_citations(where_texts: list[tuple[str, str]], have: set[str]) -> list[str]:
    """``where: §X`` for each citation in the texts of a section ``have`` lacks."""
    return [f"{where}: §{s}" for where, text in where_texts for s in cited_sections(text) if s not in have]


def _spec_sources() -> list[tuple[str, str]]:
    from cimc.targets import BUILTIN, get_target

    return [(f"{name} spec parameter {p.name}", p.source) for name in sorted(BUILTIN)
            for p in get_target(name).Spec.params()]


_SKIP_DIRS = {"__pycache__", "build", "dist", "node_modules", "golden"}
_SUFFIXES = {".py", ".md", ".toml", ".txt", ".lark", ".cfg", ".ini", ".yaml", ".yml", ".sh", ".json", ""}


def _text_files() -> list[Path]:
    """The repository's text files (sources, docs, configuration, ``.ci/``), without hidden folders (git,
    venvs, caches), build output or the golden outputs."""
    out = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info")
                   and (not d.startswith(".") or d == ".ci")]
        out += [Path(folder) / f for f in files if Path(f).suffix in _SUFFIXES and (not f.startswith(".")
                                                                                   or f == ".gitignore")]
    return sorted(out)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def test_hw_parameters_keeps_its_sections():
    have = sections(HW.read_text(encoding="utf-8"))
    want = {"0", *map(str, range(1, 8)), "1.1", "1.2", "2.1", "2.2", "2.3", "3.1", "3.2", "4.1", "4.2",
            *(f"5.{i}" for i in range(1, 9))}
    assert want <= have, f"docs/hw-parameters.md lost sections {sorted(want - have)}"
    assert re.search(r"^## Appendix A\b", HW.read_text(encoding="utf-8"), re.M)


def test_every_spec_source_citation_resolves():
    sources = _spec_sources()
    assert sum(bool(cited_sections(t)) for _, t in sources) >= 10, "the specs should cite hw-parameters.md sections"
    bad = bad_citations(sources, sections(HW.read_text(encoding="utf-8")))
    assert not bad, f"spec sources cite sections docs/hw-parameters.md does not have: {bad}"


def test_every_citation_in_the_repository_resolves():
    have = sections(HW.read_text(encoding="utf-8"))
    texts = [(str(p.relative_to(ROOT)), t) for p in _text_files() if (t := _read(p)) is not None]
    bad = bad_citations(texts, have)
    assert not bad, f"citations of sections docs/hw-parameters.md does not have: {bad}"


def test_citation_check_catches_a_missing_section():
    have = sections(HW.read_text(encoding="utf-8"))
    good = "NeuroSim Param.cpp (hw-parameters.md §2.2, §2.3) [C]; PUMA (hw-parameters.md §1.2 and §4.1)"
    assert cited_sections(good) == ["2.2", "2.3", "1.2", "4.1"]
    assert bad_citations([("good", good)], have) == []
    page = "hw-parameters" + ".md"  # in pieces, so that this file cites nothing itself
    assert bad_citations([("typo", f"Wang split ({page} §2.3, §2.9) [C]")], have) == ["typo: §2.9"]
    assert bad_citations([("gone", f"docs/{page} §12")], have) == ["gone: §12"]


# ---- nothing points outside the repository ---------------------------------------------------------

# Spelled in pieces, so that this file does not match its own patterns.
_OUTSIDE = [
    (re.compile(r"\.\./" + "shared"), "a path to the team's shared folder"),
    (re.compile("shared" + r"/research"), "the team's research notes"),
    (re.compile("DESIGN" + r"\.md"), "the team's design note (ours is docs/architecture.md)"),
    (re.compile(r"\biss" + r"ue[- ]?#?[0-9]+", re.I), "an issue number"),
    (re.compile(r"\bthe bri" + r"ef\b", re.I), "a brief"),
]


def outside_pointers(path_texts: list[tuple[str, str]]) -> list[str]:
    """``file:line: what`` for every line that points outside the repository or speaks of issues or briefs."""
    out = []
    for where, text in path_texts:
        for i, line in enumerate(text.splitlines(), 1):
            out += [f"{where}:{i}: {why}: {line.strip()[:100]}" for pattern, why in _OUTSIDE if pattern.search(line)]
    return out


def test_nothing_points_outside_the_repository():
    texts = [(str(p.relative_to(ROOT)), t) for p in _text_files() if (t := _read(p)) is not None]
    assert any(w.startswith("cimc/") for w, _ in texts) and any(w.startswith("docs/") for w, _ in texts)
    bad = outside_pointers(texts)
    assert not bad, ("a user has only the repository: point to docs/ instead of\n  " + "\n  ".join(bad))


def test_outside_pointer_check_catches_each_kind():
    planted = ["see ../" + "shared/DESIGN" + ".md", "numbers from shared" + "/research/hw.md",
               "as the iss" + "ue-4 plan said", "(Iss" + "ue 12)", "the bri" + "ef asks for this"]
    assert len(outside_pointers([("x.py", "\n".join(planted))])) >= len(planted)
    fine = "docs/hw-parameters.md §2.3; tis" + "sue 3; brief summary; shared_param; an issue with the input"
    assert outside_pointers([("x.py", fine)]) == []


# ---- links --------------------------------------------------------------------------------------

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but ``-`` and ``_`` dropped, spaces as ``-``."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """The anchors of a page's headings (outside fenced code)."""
    out, fenced = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.*)", line)):
            out.add(slug(m.group(1)))
    return out


def broken_links(pages: list[Path]) -> list[str]:
    """``page: target`` for each relative link whose file (or heading anchor) does not exist."""
    bad = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for target in _LINK.findall(re.sub(r"```.*?```", "", text, flags=re.S)):
            if re.match(r"[a-z]+:", target):
                continue  # http(s):, mailto:
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                bad.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
                bad.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    return bad


def _doc_pages() -> list[Path]:
    return sorted([ROOT / "README.md", *DOCS.rglob("*.md")])


def test_docs_index_links_every_page():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    linked = {t.partition("#")[0] for t in _LINK.findall(index)}
    pages = {p.name for p in DOCS.glob("*.md")} - {"README.md"}
    missing = sorted(pages - linked)
    assert not missing, f"docs/README.md should link every page of docs/; add {missing} to its table"
    assert "instructions/README.md" in linked


def test_relative_links_resolve():
    bad = broken_links(_doc_pages())
    assert not bad, "broken links:\n  " + "\n  ".join(bad)


def test_link_check_catches_broken_links(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "b.md").write_text("# Title\n\n## The `.cimir` text\n", encoding="utf-8")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#the-cimir-text) [web](https://x.org) [gone](c.md) [anchor](b.md#nope)\n"
                    "```\n[in code](d.md)\n```\n", encoding="utf-8")
    assert broken_links([page]) == ["a.md: c.md (no such file)", "a.md: b.md#nope (no such heading)"]


@pytest.mark.parametrize("heading, anchor", [("The `.cimir` text", "the-cimir-text"),
                                             ("Two's-complement encoding", "twos-complement-encoding"),
                                             ("2.3 Suggested defaults", "23-suggested-defaults")])
def test_slug_matches_github(heading, anchor):
    assert slug(heading) == anchor


def test_glossary_terms_are_in_alphabetical_order():
    terms = re.findall(r"^### (.+)$", (DOCS / "glossary.md").read_text(encoding="utf-8"), re.M)
    keys = [re.sub(r"[^a-z0-9 ]", "", t.lower()) for t in terms]
    assert len(terms) > 40 and len(set(keys)) == len(keys)
    misplaced = [t for t, k, prev in zip(terms[1:], keys[1:], keys, strict=False) if k < prev]
    assert not misplaced, f"docs/glossary.md: put these terms in alphabetical order: {misplaced}"


def test_architecture_names_every_core_module_and_package():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    core = ROOT / "cimc"
    modules = [f"`{p.name}`" for p in core.glob("*.py") if not p.name.startswith("_")]
    packages = [f"`cimc/{p.name}/`" for p in core.iterdir() if (p / "__init__.py").is_file()]
    missing = [m for m in modules + packages if m not in text]
    assert not missing, f"docs/architecture.md (Where the code lives) should say what these hold: {missing}"
