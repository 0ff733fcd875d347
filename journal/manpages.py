"""Find and show sop's manual pages: ``sop help [CMD]``.

The pages are roff (man(7) macros, tables through tbl), one source each: the
checkout's ``man/`` folder, which ``pip install`` puts under
``<prefix>/share/man/man1`` and ``man5``.  Where ``man(1)`` exists a page is
handed to ``man -l``: on a terminal it pages; through a pipe or into a file its
plain-text output is passed on, so that ``sop help begin | grep owner`` works.
Where there is no ``man`` (Windows, minimal containers), or it fails, the page
is printed from ``journal/help/PAGE.txt``: the same page rendered by groff at
build time (``tools/render_man.py``; tests/test_docs.py keeps it current).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
from importlib import resources
from pathlib import Path

SECTIONS = ("1", "5")
ALIASES = {"config": "sop-config", "journal": "sop-journal"}


# ---------------------------------------------------------------- finding a page

def search_dirs() -> list[Path]:
    """Where pages may be, best first: the checkout, then the installed prefixes."""
    dirs = [Path(__file__).resolve().parent.parent / "man"]
    prefixes = [sys.prefix, sysconfig.get_path("data"), getattr(site, "USER_BASE", None), sys.base_prefix]
    for p in prefixes:
        if p:
            dirs += [Path(p) / "share" / "man" / f"man{s}" for s in SECTIONS]
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def page_stem(command: str | None) -> str:
    """The page's name without its section: None -> ``sop``, ``begin`` -> ``sop-begin``."""
    if not command or command == "sop":
        return "sop"
    c = command.strip()
    c = re.sub(r"\.[15]$", "", c)
    c = ALIASES.get(c, c)
    return c if c.startswith("sop-") else f"sop-{c}"


def find(command: str | None) -> Path | None:
    """The file of a command's page, or None when no such page is installed."""
    stem = page_stem(command)
    for d in search_dirs():
        for s in SECTIONS:
            p = d / f"{stem}.{s}"
            if p.is_file():
                return p
    return None


def texts() -> dict[str, str]:
    """The build-time plain-text renderings shipped in the package, by page name."""
    try:
        folder = resources.files(__package__ or "journal").joinpath("help")
        return {f.name[:-4]: f.name for f in folder.iterdir() if f.name.endswith(".txt")}
    except (OSError, ModuleNotFoundError):
        return {}


def available() -> list[str]:
    """The names of every page that can be shown (``sop``, ``sop-begin``, ...)."""
    found: set[str] = set(texts())
    for d in search_dirs():
        try:
            found.update(p.stem for p in d.iterdir() if p.name.startswith("sop") and p.suffix in (".1", ".5"))
        except OSError:
            continue
    return sorted(found)


# ---------------------------------------------------------------- showing

# man-db keeps bold and underline as backspace overstrikes through a pipe when
# these ask it to (MANOPT may hold -T); a pipe gets plain text without them.
_FORMATTING_ENV = ("MAN_KEEP_FORMATTING", "MANOPT")


def _man(man: str, path: Path) -> bool:
    """Hand the page to ``man -l``; False when that did not show it (no usable man)."""
    if sys.stdout.isatty():
        try:
            return subprocess.call([man, "-l", str(path)]) == 0
        except OSError:
            return False
    env = {k: v for k, v in os.environ.items() if k not in _FORMATTING_ENV}
    try:
        p = subprocess.run([man, "-l", str(path)], stdout=subprocess.PIPE, env=env, check=False)
    except OSError:
        return False
    if p.returncode != 0 or not p.stdout.strip() or b"\x08" in p.stdout or b"\x1b" in p.stdout:
        return False                        # not man-db (a man that overstrikes into pipes): use the text
    sys.stdout.flush()
    sys.stdout.buffer.write(p.stdout)
    sys.stdout.buffer.flush()
    return True


def _print_text(name: str) -> None:
    text = resources.files(__package__ or "journal").joinpath("help", name).read_text(encoding="utf-8")
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")     # a cp1252 console and an em dash
    sys.stdout.write(text)
    sys.stdout.flush()


def show(command: str | None) -> int:
    """Show a command's page (None: sop(1)); the exit status for ``sop help``.

    With ``man`` it runs ``man -l PAGE`` (on a terminal it pages; otherwise its
    plain text goes to stdout); without it, or when man fails, it prints the
    page's build-time plain-text rendering.  An unknown page exits 2 with the
    known ones.
    """
    stem = page_stem(command)
    path = find(command)
    text = texts().get(stem)
    if path is None and text is None:
        known = ", ".join(n.removeprefix("sop-") if n != "sop" else "sop" for n in available())
        print(f"error: no manual page for {command!r} ({stem}).", file=sys.stderr)
        print(f"Known pages: {known or 'none installed'}.", file=sys.stderr)
        return 2
    try:
        man = shutil.which("man")
        if path is not None and man and _man(man, path):
            return 0
        if text is None:
            print(f"error: no man(1), and no plain-text {stem} installed; the page's source is {path}.",
                  file=sys.stderr)
            return 5
        _print_text(text)
    except BrokenPipeError:                 # sop help begin | head
        devnull = os.open(os.devnull, os.O_WRONLY | getattr(os, "O_BINARY", 0))
        os.dup2(devnull, sys.stdout.fileno())
    except OSError as e:
        print(f"error: cannot read the page {stem}: {e.strerror or e}", file=sys.stderr)
        return 5
    return 0
