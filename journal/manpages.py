"""Find and show sop's manual pages: ``sop help [CMD]``.

The pages are roff (man(7) macros, tables through tbl).  They live in the
checkout's ``man/`` folder beside the package, and ``pip install`` puts them
under ``<prefix>/share/man/man1`` and ``man5``.  On a terminal with
``man(1)`` a page is shown by ``man -l``; otherwise (a pipe, a file, a
machine without man) it is rendered here as plain text, so that
``sop help begin | grep owner`` works everywhere.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
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


def available() -> list[str]:
    """The names of every page that can be shown (``sop``, ``sop-begin``, ...)."""
    found: set[str] = set()
    for d in search_dirs():
        try:
            found.update(p.stem for p in d.iterdir() if p.name.startswith("sop") and p.suffix in (".1", ".5"))
        except OSError:
            continue
    return sorted(found)


# ---------------------------------------------------------------- rendering as plain text

_GLYPHS = {"em": "\u2014", "en": "\u2013", "bu": "\u2022", "lq": "\u201c", "rq": "\u201d", "aq": "'",
           "dq": '"', "oq": "\u2018", "cq": "\u2019", "co": "\u00a9", "rs": "\\", "mi": "-", "hy": "-",
           "ha": "^", "ti": "~", "ga": "`", "ra": "\u2192", "->": "\u2192", "<-": "\u2190", "mu": "\u00d7",
           "de": "\u00b0", "+-": "\u00b1", ">=": "\u2265", "<=": "\u2264"}
_ESCAPE = re.compile(r"\\(f(?:\(..|\[[^\]]*\]|.)|\(..|\[[^\]]*\]|\*(?:\(..|\[[^\]]*\]|.)|.)", re.S)


def unescape(text: str) -> str:
    """Roff escapes to plain characters; font changes dropped."""
    def sub(m: re.Match[str]) -> str:
        e = m.group(1)
        if e[0] == "f" and len(e) > 1 or e[0] == "*":
            return ""
        if e[0] == "(":
            return _GLYPHS.get(e[1:], "")
        if e[0] == "[":
            return _GLYPHS.get(e[1:-1], "")
        return {"-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", "'": "'", "`": "`",
                ".": "."}.get(e, "")
    return _ESCAPE.sub(sub, text)


def split_args(line: str) -> list[str]:
    """A macro line's arguments, with roff's quoting (``""`` inside quotes is one quote)."""
    args: list[str] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            break
        if line[i] == '"':
            i += 1
            buf = []
            while i < n:
                if line[i] == '"':
                    if i + 1 < n and line[i + 1] == '"':
                        buf.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(line[i])
                i += 1
            args.append("".join(buf))
        else:
            j = i
            while j < n and line[j] not in " \t":
                j += 2 if line[j] == "\\" else 1
            args.append(line[i:j])
            i = j
    return args


class _Renderer:
    """Just enough of man(7) and tbl(1) to read sop's pages without man."""

    BODY = 7

    def __init__(self, width: int) -> None:
        self.width = max(width, 40)
        self.out: list[str] = []
        self.base = self.BODY          # left margin of body text
        self.stack: list[int] = []     # .RS/.RE
        self.hang = 0                  # indent of the current tagged paragraph's body, past base
        self.prevailing = self.BODY    # the indent .RS uses and .TP/.IP set
        self.tag: str | None = None    # the tag of a .TP/.IP paragraph, not printed yet
        self.words: list[str] = []
        self.fill = True
        self.want_tag = False          # the next text line is a .TP tag
        self.table: list[str] | None = None
        self.header = ""
        self.footer = ""

    # -- output
    def blank(self) -> None:
        if self.out and self.out[-1] != "":
            self.out.append("")

    def flush(self) -> None:
        indent = self.base + self.hang
        tag = self.tag
        self.tag = None
        if not self.words:
            if tag:
                self.out.append(" " * self.base + tag)
            return
        text = " ".join(self.words)
        self.words = []
        lines = textwrap.wrap(text, max(self.width - indent, 20), break_on_hyphens=False,
                              break_long_words=False) or [""]
        if tag is not None:
            if self.hang and len(tag) < self.hang:
                self.out.append(" " * self.base + tag.ljust(self.hang) + lines[0])
                lines = lines[1:]
            else:
                self.out.append(" " * self.base + tag)
        self.out.extend(" " * indent + ln for ln in lines)

    def text(self, s: str) -> None:
        s = unescape(s)
        if self.want_tag:
            self.want_tag = False
            self.tag = s.strip()
            return
        if self.fill:
            self.words.extend(s.split())
        else:
            self.flush()
            self.out.append((" " * (self.base + self.hang) + s).rstrip())

    def paragraph(self, tag: str | None = None, hang: int = 0) -> None:
        self.flush()
        self.blank()
        self.hang = hang
        self.tag = tag

    # -- tables
    def render_table(self, rows: list[str]) -> None:
        data = rows[1:] if rows and rows[0].rstrip().endswith(";") else rows   # the options line
        i = 0
        while i < len(data) and not data[i].rstrip().endswith("."):
            i += 1
        data = data[i + 1:] if i < len(data) else data
        cells: list[list[str]] = []
        block: list[str] | None = None
        for line in data:
            if block is not None:
                if line.startswith("T}"):
                    cells[-1][-1] = " ".join(block)
                    rest = line[2:].split("\t")[1:]
                    cells[-1].extend(unescape(c) for c in rest)
                    block = None
                else:
                    block.append(unescape(line).strip())
                continue
            parts = line.split("\t")
            row = []
            for p in parts:
                if p.strip() == "T{":
                    block = []
                    row.append("")
                else:
                    row.append(unescape(p))
            cells.append(row)
        if not cells:
            return
        ncol = max(len(r) for r in cells)
        widths = [max((len(r[c]) for r in cells if c < len(r) and c < ncol - 1), default=0) for c in range(ncol)]
        indent = self.base + self.hang
        lead = sum(w + 3 for w in widths[:-1])
        room = max(self.width - indent - lead, 20)
        for r in cells:
            prefix = "".join((r[c] if c < len(r) else "").ljust(widths[c] + 3) for c in range(ncol - 1))
            last = r[ncol - 1] if len(r) == ncol else ""
            wrapped = textwrap.wrap(last, room, break_on_hyphens=False) or [""]
            self.out.append((" " * indent + prefix + wrapped[0]).rstrip())
            self.out.extend(" " * (indent + lead) + w for w in wrapped[1:])

    # -- macros
    def macro(self, name: str, args: list[str]) -> None:
        if name == "TH":
            title = f"{unescape(args[0]) if args else ''}({args[1] if len(args) > 1 else ''})"
            manual = unescape(args[4]) if len(args) > 4 else ""
            gap = max(self.width - 2 * len(title) - len(manual), 2)
            self.header = title + " " * (gap // 2) + manual + " " * (gap - gap // 2) + title
            source = unescape(args[3]) if len(args) > 3 else ""
            date = unescape(args[2]) if len(args) > 2 else ""
            gap = max(self.width - len(source) - len(date) - len(title), 2)
            self.footer = source + " " * (gap // 2) + date + " " * (gap - gap // 2) + title
        elif name in ("SH", "SS"):
            self.flush()
            self.blank()
            self.base = self.BODY
            self.stack = []
            self.hang = 0
            self.prevailing = self.BODY
            head = unescape(" ".join(args))
            self.out.append((" " * 3 if name == "SS" else "") + head)
        elif name in ("PP", "P", "LP"):
            self.paragraph()
            self.prevailing = self.BODY
        elif name == "TP":
            self.prevailing = int(args[0]) if args and args[0].isdigit() else self.BODY
            self.paragraph(hang=self.prevailing)
            self.want_tag = True
        elif name == "IP":
            tag = unescape(args[0]) if args else ""
            self.prevailing = int(args[1]) if len(args) > 1 and args[1].isdigit() else self.prevailing
            self.paragraph(tag or None, hang=self.prevailing)
        elif name == "RS":
            self.flush()
            self.stack.append(self.base)
            self.base += int(args[0]) if args and args[0].isdigit() else self.prevailing
            self.hang = 0
            self.prevailing = self.BODY
        elif name == "RE":
            self.flush()
            self.base = self.stack.pop() if self.stack else self.BODY
            self.hang = 0
        elif name in ("nf", "EX"):
            self.flush()
            self.fill = False
        elif name in ("fi", "EE"):
            self.flush()
            self.fill = True
        elif name == "br":
            pending, self.tag = self.tag, None
            if pending:
                self.out.append(" " * self.base + pending)
            self.flush()
        elif name == "sp":
            self.flush()
            self.out.append("")
        elif name in ("B", "I", "SM", "SB"):
            self.text(" ".join(args))
        elif name in ("BR", "RB", "BI", "IB", "IR", "RI"):
            self.text("".join(args))
        # everything else (.nh, .ad, .hy, .ne, .in, ...) only affects typesetting

    def feed(self, source: str) -> str:
        for raw in source.splitlines():
            if self.table is not None:
                if raw.startswith(".TE"):
                    self.flush()
                    self.render_table(self.table)
                    self.table = None
                else:
                    self.table.append(raw)
                continue
            if raw.startswith(("'\\\"", '.\\"', "'\\\"")) or raw.strip() in (".", "'"):
                continue
            if raw.startswith(".TS"):
                self.flush()
                self.table = []
                continue
            if raw.startswith((".", "'")) and len(raw) > 1 and raw[1] not in " \\":
                head, _, rest = raw[1:].partition(" ")
                self.macro(head.strip(), split_args(rest))
            elif not raw.strip() and self.fill:
                self.paragraph()
            else:
                self.text(raw)
        self.flush()
        lines = [self.header, ""] if self.header else []
        lines += [ln.rstrip() for ln in self.out]
        if self.footer:
            lines += ["", self.footer]
        return "\n".join(lines).strip("\n") + "\n"


def render_text(source: str, width: int = 80) -> str:
    """A roff man page as plain text, for a pipe or a machine without man(1)."""
    return _Renderer(width).feed(source)


# ---------------------------------------------------------------- showing

def show(command: str | None) -> int:
    """Show a command's page (None: sop(1)); the exit status for ``sop help``.

    On a terminal with ``man`` it runs ``man -l PAGE``; otherwise it prints the
    page as plain text on stdout.  An unknown page exits 2 with the known ones.
    """
    path = find(command)
    if path is None:
        known = ", ".join(n.removeprefix("sop-") if n != "sop" else "sop" for n in available())
        print(f"error: no manual page for {command!r} ({page_stem(command)}).", file=sys.stderr)
        print(f"Known pages: {known or 'none installed'}.", file=sys.stderr)
        return 2
    man = shutil.which("man")
    if man and sys.stdout.isatty():
        try:
            status = subprocess.call([man, "-l", str(path)])
        except OSError:
            status = -1
        if status == 0:
            return 0
    width = min(shutil.get_terminal_size((80, 24)).columns, 100)
    try:
        text = render_text(path.read_text(encoding="utf-8"), width)
    except OSError as e:
        print(f"error: cannot read {path}: {e.strerror}", file=sys.stderr)
        return 5
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:                 # sop help begin | head
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0
