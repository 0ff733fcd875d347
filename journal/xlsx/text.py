"""XML text: decoding character data, escaping text and attributes, encoding new cells, editing attributes."""

from __future__ import annotations

import math
import numbers
import re

from journal.errors import Refused

from .constants import MAX_CELL_CHARS, MAX_COL
from .ranges import col_letters

Value = str | int | float | bool

# --------------------------------------------------------------------------------------------
# Decoding and escaping

_ENTITY_RE = re.compile(rb"&(#[0-9]+|#x[0-9a-fA-F]+|lt|gt|amp|quot|apos);")
_ENTITIES = {b"lt": "<", b"gt": ">", b"amp": "&", b"quot": '"', b"apos": "'"}
_XESC_RE = re.compile(r"_x([0-9A-Fa-f]{4})_")


def xml_text(raw: bytes, xesc: bool = True) -> str:
    """XML character data as a parser would give it, then OOXML ``_xHHHH_`` escapes decoded."""
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if b"&" in raw:
        parts = _ENTITY_RE.split(raw)
        out = []
        for i, part in enumerate(parts):
            if i % 2:
                out.append(_entity_name(part))
            else:
                out.append(part.decode("utf-8"))
        s = "".join(out)
    else:
        s = raw.decode("utf-8")
    if xesc and "_x" in s:
        s = _XESC_RE.sub(lambda m: chr(int(m.group(1), 16)), s)
    return s


def _entity_name(name: bytes) -> str:
    if name[:2] == b"#x":
        return chr(int(name[2:], 16))
    if name[:1] == b"#":
        return chr(int(name[1:]))
    return _ENTITIES[name]


_ILLEGAL_XML_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_XESC_LITERAL_RE = re.compile(r"_(x[0-9A-Fa-f]{4}_)")


def escape_text(s: str) -> str:
    """Text for an XML text node that Excel reads back as exactly ``s``."""
    if "_x" in s:   # a literal "_x0041_" would be decoded by Excel: escape its underscore
        s = _XESC_LITERAL_RE.sub(r"_x005F_\1", s)
    return escape_xml(s)


def escape_xml(s: str) -> str:
    """Text for an XML text node that a parser reads back as exactly ``s`` (no OOXML escapes)."""
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return s.replace("\r", "&#13;")


def escape_attr(s: str) -> str:
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;"))


def parse_number(text: str | bytes) -> int | float | None:
    """A cell's number: int when integral (``123.0`` -> 123), else float; None when not a number."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        f = float(text)
    except ValueError:
        return None
    if math.isfinite(f) and f.is_integer() and abs(f) < 2**53:
        return int(f)
    return f


# --------------------------------------------------------------------------------------------
# Encoding new cells


def _encode_value(value: object, where: str) -> tuple[bytes, str] | None:
    """(t attribute, payload) of a new cell; None for no cell.  Bad input is Refused."""
    if value is None:
        return None
    if isinstance(value, bool):
        return b"b", "1" if value else "0"
    if isinstance(value, numbers.Integral):
        n = int(value)
        digits = str(abs(n))
        if len(digits.rstrip("0")) > 15 or len(digits) > 300:
            return b"inlineStr", str(n)
        return b"", str(n)
    if isinstance(value, numbers.Real):
        f = float(value)
        if not math.isfinite(f):
            return b"inlineStr", str(f)
        return b"", repr(f)
    if isinstance(value, str):
        if len(value) > MAX_CELL_CHARS:
            raise Refused(f"{where}: text of {len(value):,} characters is over Excel's limit of {MAX_CELL_CHARS:,}",
                          detail="Shorten the value in run_metadata.json.")
        m = _ILLEGAL_XML_RE.search(value)
        if m:
            raise Refused(f"{where}: the text holds the character U+{ord(m.group()):04X}, which a workbook cannot "
                          "store", detail="Remove control characters from the value in run_metadata.json.")
        if value == "":
            return None
        return b"inlineStr", value
    raise Refused(f"{where}: cannot store a {type(value).__name__} in the sheet (numbers, booleans and text only)")


def encode_rows(rows: list[dict[int, Value]]) -> list[list[tuple[int, bytes, str]]]:
    out = []
    for i, row in enumerate(rows):
        cells = []
        for col, value in row.items():
            if isinstance(col, bool) or not isinstance(col, int) or not 1 <= col <= MAX_COL:
                raise Refused(f"row {i + 1}: column {col!r} is not a column index 1..{MAX_COL}")
            enc = _encode_value(value, f"row {i + 1}, column {col_letters(col)}")
            if enc is not None:
                cells.append((col, enc[0], enc[1]))
        cells.sort()
        out.append(cells)
    return out


def cell_xml(p: bytes, ref: str, t: bytes, payload: str, style: bytes | None) -> bytes:
    s = b' s="' + style + b'"' if style else b""
    if t == b"inlineStr":
        return (b"<" + p + b'c r="' + ref.encode() + b'"' + s + b' t="inlineStr"><' + p + b"is><" + p
                + b't xml:space="preserve">' + escape_text(payload).encode("utf-8") + b"</" + p + b"t></" + p
                + b"is></" + p + b"c>")
    tt = b' t="' + t + b'"' if t else b""
    return b"<" + p + b'c r="' + ref.encode() + b'"' + s + tt + b"><" + p + b"v>" + payload.encode() + b"</" + p \
        + b"v></" + p + b"c>"


# --------------------------------------------------------------------------------------------
# Attribute edits on small elements


def _attr_re(name: bytes) -> re.Pattern[bytes]:
    return re.compile(rb"(\s" + re.escape(name) + rb"""\s*=\s*)(["'])(.*?)\2""", re.S)


def get_attr(tag: bytes, name: bytes) -> str | None:
    m = _attr_re(name).search(tag)
    return m.group(3).decode("utf-8") if m else None


def set_attr(tag: bytes, name: bytes, value: str) -> bytes:
    rx = _attr_re(name)
    enc = escape_attr(value).encode("utf-8")
    return rx.sub(lambda m: m.group(1) + m.group(2) + enc + m.group(2), tag, count=1)


def drop_attrs(attrs: bytes, names: tuple[bytes, ...]) -> bytes:
    for n in names:
        attrs = _attr_re(n).sub(b"", attrs, count=1)
    return attrs


def tag_re(prefix: bytes, name: bytes) -> re.Pattern[bytes]:
    """The start tag of element ``name`` (in the part's namespace prefix)."""
    return re.compile(rb"<" + re.escape(prefix) + name + rb"\b[^>]*>")
