"""Write the instruction reference pages of this folder from the op definitions.

    python docs/instructions/generate.py          # rewrite the pages (and remove pages of targets gone)
    python docs/instructions/generate.py --check  # exit 1, naming the stale pages, if any would change

The pages are :func:`cimc.opref.reference_pages`: one per built-in target, ``shared.md`` and the
index ``README.md``. ``tests/test_docs.py`` fails when a committed page differs from what this writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cimc.opref import reference_pages

HERE = Path(__file__).resolve().parent


def stale_pages(folder: Path = HERE) -> list[str]:
    """File names of the pages in ``folder`` that differ from the generated ones, are missing, or are left
    over (a ``.md`` file no generated page has)."""
    pages = reference_pages()
    out = [name for name, text in pages.items()
           if not (folder / name).is_file() or (folder / name).read_text(encoding="utf-8") != text]
    out += sorted(p.name for p in folder.glob("*.md") if p.name not in pages)
    return out


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with ``--check`` only compare) the pages; the exit status is 1 if ``--check`` finds stale ones."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale pages (exit 1 if any)")
    args = parser.parse_args(argv)
    stale = stale_pages()
    if args.check:
        for name in stale:
            print(f"stale: docs/instructions/{name}")
        return 1 if stale else 0
    pages = reference_pages()
    for name in stale:
        path = HERE / name
        if name in pages:
            path.write_text(pages[name], encoding="utf-8")
            print(f"wrote docs/instructions/{name}")
        else:
            path.unlink()
            print(f"removed docs/instructions/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
