#!/usr/bin/env python3
"""Render the roff pages in man/ to plain text in journal/help/, for ``sop help`` without man(1).

The roff pages are the one source of the manual.  Where ``man`` exists, ``sop
help`` hands a page to it; elsewhere (Windows, minimal containers) it prints
the text made here, at build time, by groff:

    groff -t -man -Tutf8 -P -cbou PAGE     (tbl, man(7), no bold/underline/SGR)

with runs of blank lines squeezed to one, which is what man-db prints through
a pipe.  The texts are committed; tests/test_docs.py renders every page again
and fails when a text differs, so they cannot go stale.  After editing a page:

    python3 tools/render_man.py            # rewrite journal/help/*.txt
    python3 tools/render_man.py --check    # exit 1 if any text is stale
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
HELP = ROOT / "journal" / "help"
GROFF = ["-t", "-man", "-Tutf8", "-P", "-cbou"]


def pages() -> list[Path]:
    """Every page in man/: sections 1 and 5."""
    return sorted(p for p in MAN.iterdir() if p.suffix in (".1", ".5"))


def target(page: Path) -> Path:
    """Where a page's text goes: man/sop-begin.1 -> journal/help/sop-begin.txt."""
    return HELP / f"{page.stem}.txt"


def render_source(source: str) -> str:
    """Roff source (man(7) with tbl) as plain text, by groff."""
    groff = shutil.which("groff")
    if groff is None:
        raise FileNotFoundError("groff is not installed (Debian: apt-get install groff-base)")
    p = subprocess.run([groff, *GROFF], input=source.encode("utf-8"), capture_output=True, check=False)
    if p.returncode != 0 or p.stderr:
        raise RuntimeError(f"groff failed (exit {p.returncode}): {p.stderr.decode(errors='replace').strip()}")
    lines = [ln.rstrip() for ln in p.stdout.decode("utf-8").splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"


def render(page: Path) -> str:
    """One page as plain text."""
    return render_source(page.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a text is stale or missing")
    args = ap.parse_args(argv)
    try:
        want = {target(p): render(p) for p in pages()}
    except (FileNotFoundError, RuntimeError) as e:
        print(f"render_man: {e}", file=sys.stderr)
        return 2
    extra = [t for t in HELP.glob("*.txt") if t not in want] if HELP.is_dir() else []
    stale = [t for t, text in want.items() if not t.is_file() or t.read_text(encoding="utf-8") != text]
    if args.check:
        for t in stale + extra:
            print(f"{'stale' if t in want else 'no page for'}: {t.relative_to(ROOT)}", file=sys.stderr)
        return 1 if stale or extra else 0
    HELP.mkdir(exist_ok=True)
    for t in stale:
        t.write_text(want[t], encoding="utf-8", newline="\n")
        print(f"wrote {t.relative_to(ROOT)}")
    for t in extra:
        t.unlink()
        print(f"removed {t.relative_to(ROOT)} (no page)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
