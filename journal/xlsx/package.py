"""The package: the workbook zip, its relationships and parts, shared strings, and writing the zip anew."""

from __future__ import annotations

import os
import re
import stat
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from journal.errors import SheetDamaged

from . import deflate, validate
from .constants import (
    CHUNK,
    NS_DOC_RELS,
    NS_MAIN,
    NS_PKG_RELS,
    NS_STRICT_DOC_RELS,
    NS_STRICT_MAIN,
    OLE_MAGIC,
    REL_OFFICE_DOCUMENT,
    REL_SHARED_STRINGS,
    REL_TABLE,
    REL_WORKSHEET,
    SHEET_COMPRESSLEVEL,
    SMALL_COMPRESSLEVEL,
)
from .text import xml_text

if TYPE_CHECKING:
    from xml.etree import ElementTree

# --------------------------------------------------------------------------------------------
# Zip, relationships, parts

# Bounded decompression: a part sop inflates may be at most MAX_PART_BYTES, and one larger than
# RATIO_FLOOR_BYTES may not inflate more than MAX_RATIO times its compressed size.  A 100k-row
# master worksheet is ~40 MB inflated at a ratio of ~10; a zip bomb (4 MB that inflates to 4 GB)
# is refused before a byte is inflated.  zipfile never inflates past a member's declared size.
MAX_PART_BYTES = 1 << 30
MAX_RATIO = 1000
RATIO_FLOOR_BYTES = 64 << 20


def inflate_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member is too big to inflate, or None."""
    if info.file_size > MAX_PART_BYTES:
        return f"would inflate to {info.file_size} bytes, more than sop's limit of {MAX_PART_BYTES}"
    if info.file_size > RATIO_FLOOR_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        return (f"would inflate {info.compress_size} bytes to {info.file_size}, more than {MAX_RATIO} times "
                "(a zip bomb?)")
    return None


def damaged(path: str | os.PathLike[str], what: str, detail: str | None = None) -> SheetDamaged:
    return SheetDamaged(f"Master Sheet {os.fspath(path)}: {what}", detail=detail)


def _strict(path: str | os.PathLike[str]) -> SheetDamaged:
    return damaged(path, "is a Strict Open XML workbook, which sop does not edit",
                   "Save it as 'Excel Workbook (.xlsx)' instead of 'Strict Open XML'.")


def _refuse_dtd(data: bytes, path: str | os.PathLike[str], part: str) -> None:
    if b"<!DOCTYPE" in data[:4096] or b"<!ENTITY" in data:
        raise damaged(path, f"{part} declares a DOCTYPE or entities; refusing to read it")


def part_root(data: bytes, path: str | os.PathLike[str], part: str) -> ElementTree.Element:
    """The root element of a small part read only (relationships, the workbook), parsed by the standard
    library's expat: it starts in ~2 ms where lxml takes ~10, and an append needs nothing more of lxml."""
    from xml.etree import ElementTree

    _refuse_dtd(data, path, part)          # no DTD, no entities: expat then resolves nothing
    try:
        return ElementTree.fromstring(data)
    except ElementTree.ParseError as e:
        raise damaged(path, f"{part} is not well-formed XML ({e})",
                      "Open and re-save it in Excel, or restore it from a backup.") from None


def xml_root(data: bytes, path: str | os.PathLike[str], part: str):  # -> lxml element
    from lxml import etree

    _refuse_dtd(data, path, part)
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)
    try:
        return etree.fromstring(data, parser)
    except etree.XMLSyntaxError as e:
        raise damaged(path, f"{part} is not well-formed XML ({e})",
                      "Open and re-save it in Excel, or restore it from a backup.") from None


def _resolve_target(base_part: str, target: str) -> str:
    """A relationship target relative to the part that owns the rels -> a zip member name."""
    if target.startswith("/"):
        return target.lstrip("/")
    base_dir = base_part.rsplit("/", 1)[0] if "/" in base_part else ""
    parts = [p for p in base_dir.split("/") if p] if base_dir else []
    for seg in target.split("/"):
        if seg == "..":
            if parts:
                parts.pop()
        elif seg and seg != ".":
            parts.append(seg)
    return "/".join(parts)


def rels_name(part: str) -> str:
    d, _, name = part.rpartition("/")
    return f"{d}/_rels/{name}.rels" if d else f"_rels/{name}.rels"


@dataclass
class Rel:
    rid: str
    type: str
    target: str        # resolved zip member name ("" for external)
    external: bool


@dataclass
class SheetInfo:
    name: str
    part: str


class Package:
    """An opened workbook zip with its workbook part and worksheet list resolved."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path
        try:                    # O_NONBLOCK: a FIFO in the sheet's place never blocks a command
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            raise damaged(path, "no such file", "Create it with `sop init`, or point [sheet].path at it.") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise damaged(path, "is not a regular file (a FIFO, a device or a folder)")
        self.f: BinaryIO = os.fdopen(fd, "rb")
        try:
            self._open()
        except BaseException:
            self.f.close()
            raise

    def _open(self) -> None:
        path = self.path
        magic = self.f.read(8)
        self.f.seek(0)
        if magic == OLE_MAGIC:
            raise damaged(path, "is an encrypted workbook or a legacy .xls file (OLE compound document)",
                          "Remove the password or save it as .xlsx/.xlsm in Excel.")
        if magic[:2] != b"PK":
            raise damaged(path, "is not an .xlsx/.xlsm workbook (not a zip file)")
        try:
            self.zf = zipfile.ZipFile(self.f)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as e:
            raise damaged(path, f"is not a readable zip file ({e})") from None
        self.infos = self.zf.infolist()
        self.names: dict[str, zipfile.ZipInfo] = {}
        for info in self.infos:
            if info.filename in self.names:
                raise damaged(path, f"holds the zip member {info.filename} twice")
            if info.flag_bits & 0x1:
                raise damaged(path, f"zip member {info.filename} is encrypted")
            self.names[info.filename] = info
        self.names_ci = {n.casefold(): n for n in self.names}   # OPC part names are case-insensitive
        if "EncryptedPackage" in self.names or "EncryptionInfo" in self.names:
            raise damaged(path, "is an encrypted workbook", "Remove the password in Excel.")
        rels = self.rels("")
        office = [r for r in rels if r.type == REL_OFFICE_DOCUMENT]
        if not office:
            if any(r.type.startswith(NS_STRICT_DOC_RELS) for r in rels):
                raise _strict(path)
            raise damaged(path, "has no workbook part (_rels/.rels names no officeDocument)")
        self.workbook_part = office[0].target
        wb = part_root(self.read(self.workbook_part), path, self.workbook_part)
        ns = wb.tag[1:].split("}")[0] if wb.tag.startswith("{") else ""
        if ns == NS_STRICT_MAIN:
            raise _strict(path)
        if ns != NS_MAIN:
            raise damaged(path, f"has a workbook part in an unknown namespace {ns!r}")
        self.workbook_rels = self.rels(self.workbook_part)
        by_id = {r.rid: r for r in self.workbook_rels}
        self.sheets: list[SheetInfo] = []
        self.other_sheets: list[str] = []
        for el in wb.iter(f"{{{NS_MAIN}}}sheet"):
            rid = el.get(f"{{{NS_DOC_RELS}}}id")
            rel = by_id.get(rid or "")
            name = el.get("name") or ""
            if rel is None:
                raise damaged(path, f"sheet {name!r} has no relationship {rid!r} in the workbook's rels")
            if rel.type == REL_WORKSHEET:
                self.sheets.append(SheetInfo(name, rel.target))
            else:
                self.other_sheets.append(name)
        sst = [r for r in self.workbook_rels if r.type == REL_SHARED_STRINGS]
        self.sst_part = sst[0].target if sst and sst[0].target in self.names else None

    def close(self) -> None:
        self.zf.close()
        self.f.close()

    def __enter__(self) -> Package:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_size(self, part: str) -> None:
        if part not in self.names:
            raise damaged(self.path, f"is missing its part {part}")
        problem = inflate_problem(self.names[part])
        if problem:
            raise damaged(self.path, f"part {part} {problem}")

    def read(self, part: str) -> bytes:
        self._check_size(part)
        try:
            return self.zf.read(part)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
            raise damaged(self.path, f"part {part} cannot be inflated ({e})") from None

    def data_offset(self, info: zipfile.ZipInfo) -> int:
        """Where a member's compressed bytes start (:func:`.validate.data_offset`)."""
        try:
            return validate.data_offset(self.f, info)
        except validate.Corrupt:
            raise damaged(self.path, f"zip member {info.filename} has a bad local header") from None

    def chunks(self, part: str, size: int = CHUNK) -> Iterator[bytes]:
        """Inflate a part piece by piece; a bad CRC or deflate stream is damage.

        A deflated member is inflated here, with :mod:`.deflate`'s engine (ISA-L when installed:
        ~2.5x zlib's speed; zipfile's reader adds its own buffering on top of zlib), never past
        its declared size, and its size and CRC-32 checked at the end; other members go through
        zipfile.
        """
        self._check_size(part)
        info = self.names[part]
        if info.compress_type == zipfile.ZIP_DEFLATED:
            yield from self._inflated(info, size)
            return
        try:
            with self.zf.open(part) as f:
                while True:
                    b = f.read(size)
                    if not b:
                        return
                    yield b
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
            raise damaged(self.path, f"part {part} cannot be inflated ({e})") from None

    def _inflated(self, info: zipfile.ZipInfo, size: int) -> Iterator[bytes]:
        bad: tuple[type[Exception], ...] = (validate.Corrupt, *deflate.error)
        try:
            yield from validate.inflate_member(self.f, info, deflate.decompressobj, deflate.crc32, size)
        except bad as e:
            raise damaged(self.path, f"part {info.filename} cannot be inflated ({e})") from None

    def rels(self, part: str) -> list[Rel]:
        name = "_rels/.rels" if part == "" else rels_name(part)
        if name not in self.names:
            return []
        root = part_root(self.read(name), self.path, name)
        out = []
        for el in root.iter(f"{{{NS_PKG_RELS}}}Relationship"):
            external = el.get("TargetMode") == "External"
            target = el.get("Target") or ""
            if not external:
                target = _resolve_target(part, target)
                target = self.names_ci.get(target.casefold(), target)
            out.append(Rel(el.get("Id") or "", el.get("Type") or "", target, external))
        return out

    def sheet(self, worksheet: str | None) -> SheetInfo:
        if not self.sheets:
            raise damaged(self.path, "has no worksheet")
        if worksheet is None or worksheet == "":
            info = self.sheets[0]
        else:
            found = [s for s in self.sheets if s.name == worksheet]
            if not found:
                found = [s for s in self.sheets if s.name.casefold() == worksheet.casefold()]
            if not found:
                names = ", ".join(repr(s.name) for s in self.sheets)
                raise damaged(self.path, f"has no worksheet named {worksheet!r} (it has {names})",
                              "Fix [sheet].worksheet in .sop/config.toml.")
            info = found[0]
        if info.part not in self.names:
            raise damaged(self.path, f"is missing the part {info.part} of worksheet {info.name!r}")
        return info


def sheet_tables(pkg: Package, part: str) -> list[str]:
    return [r.target for r in pkg.rels(part) if r.type == REL_TABLE and not r.external and r.target in pkg.names]


def table_element(pkg: Package, part: str, xml: bytes) -> re.Match[bytes]:
    """The ``<table>`` start tag of a table part (group 1: its namespace prefix, if any)."""
    m = re.search(rb"<([A-Za-z_][\w.-]*:)?table\b[^>]*>", xml)
    if not m:
        raise damaged(pkg.path, f"table part {part} has no <table> element")
    return m


# --------------------------------------------------------------------------------------------
# Shared strings


class SharedStrings:
    """The shared string table: simple entries decoded in bulk, rich ones on first use."""

    def __init__(self, raw: list[tuple[bytes, bytes, bytes]], prefix: bytes) -> None:
        p = re.escape(prefix)
        self._t = re.compile(rb"<" + p + rb"t(?:\s[^>]*)?>(.*?)</" + p + rb"t>|<" + p + rb"t(?:\s[^>]*)?/>", re.S)
        self._rph = re.compile(rb"<" + p + rb"rPh\b.*?</" + p + rb"rPh>", re.S)
        self.simple_tags = (b"<" + prefix + b"t>", b"</" + prefix + b"t>")
        # raw: (simple text, marker of a simple entry, rich body) per <si>, as the regex finds them
        simple = [t[0] for t in raw]
        joined = b"\x00".join(simple).decode("utf-8", "replace")
        strings: list[str | None] = [*joined.split("\x00")] if raw else []
        if "&" in joined or "_x" in joined or "\r" in joined:
            strings = [xml_text(simple[i]) if ("&" in st or "_x" in st or "\r" in st) else st  # type: ignore[operator]
                       for i, st in enumerate(strings)]
        self.rich: dict[int, bytes] = {}
        if len(raw) != sum(1 for t in raw if t[1]):
            for i, t in enumerate(raw):
                if not t[1]:
                    strings[i] = None
                    self.rich[i] = t[2]
        self.strings = strings

    def get(self, index: int) -> str:
        try:
            s = self.strings[index]
        except IndexError:
            return ""
        if s is None:
            s = self.strings[index] = self.decode_rich(self.rich.pop(index))
        return s

    def decode_rich(self, body: bytes) -> str:
        if not body:
            return ""
        if b"rPh" in body:
            body = self._rph.sub(b"", body)
        return "".join(xml_text(m.group(1) or b"") for m in self._t.finditer(body))


_ROOT_RE = re.compile(rb"<([A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)((?:\s[^>]*)?)>")
_XMLNS_RE = re.compile(rb"""xmlns(?::([\w.-]+))?\s*=\s*(["'])(.*?)\2""")


def root_prefix(head: bytes, path: str | os.PathLike[str], part: str, expect: bytes) -> bytes:
    """Find the root element and the prefix bound to the SpreadsheetML namespace ('' or 'x:')."""
    pos = 0
    while True:
        m = _ROOT_RE.search(head, pos)
        if not m:
            raise damaged(path, f"{part} has no root element")
        if head[m.start() + 1:m.start() + 2] in (b"?", b"!"):
            pos = m.end()
            continue
        break
    pre = head[:m.start()]
    if b"<!DOCTYPE" in pre or b"<!ENTITY" in pre:
        raise damaged(path, f"{part} declares a DOCTYPE; refusing to read it")
    prefix = m.group(1) or b""
    if m.group(2) != expect:
        raise damaged(path, f"{part} is a <{m.group(2).decode()}>, not a <{expect.decode()}>")
    bound = {}
    for nm in _XMLNS_RE.finditer(m.group(3)):
        bound[(nm.group(1) or b"")] = nm.group(3).decode("utf-8", "replace")
    ns = bound.get(prefix[:-1] if prefix else b"")
    if ns == NS_STRICT_MAIN:
        raise _strict(path)
    if ns != NS_MAIN:
        raise damaged(path, f"{part} is in an unknown namespace {ns!r}")
    return prefix


def xml_decl(head: bytes) -> bytes:
    """The bytes before the root element (XML declaration, BOM)."""
    m = _ROOT_RE.search(head)
    while m and head[m.start() + 1:m.start() + 2] in (b"?", b"!"):
        m = _ROOT_RE.search(head, m.end())
    return head[:m.start()] if m else b""


def check_encoding(head: bytes, path: str | os.PathLike[str], part: str) -> None:
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or head[:4] in (b"\x00<\x00?", b"<\x00?\x00"):
        raise damaged(path, f"{part} is UTF-16 encoded, which sop does not edit",
                      "Open and re-save the workbook in Excel.")
    m = re.match(rb"(?:\xef\xbb\xbf)?<\?xml[^>]*encoding\s*=\s*[\"']([\w.-]+)[\"']", head)
    if m and m.group(1).lower() not in (b"utf-8", b"utf8"):
        raise damaged(path, f"{part} is {m.group(1).decode()} encoded, which sop does not edit",
                      "Open and re-save the workbook in Excel.")


def load_shared_strings(pkg: Package) -> SharedStrings:
    if pkg.sst_part is None:
        return SharedStrings([], b"")
    data = pkg.read(pkg.sst_part)
    check_encoding(data[:200], pkg.path, pkg.sst_part)
    prefix = root_prefix(data[:4096], pkg.path, pkg.sst_part, b"sst")
    p = re.escape(prefix)
    si = re.compile(rb"<" + p + rb"si(?:\s[^>]*)?(?:/>|>(?:<" + p + rb't(?: xml:space="preserve")?>([^<]*)</' + p
                    + rb"t>(</)" + p + rb"si>|(.*?)</" + p + rb"si>))", re.S)
    return SharedStrings(si.findall(data), prefix)


# --------------------------------------------------------------------------------------------
# Writing the zip

_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_CENTRAL = struct.Struct("<4sBBBBHHHHIIIHHHHHII")
_EOCD = struct.Struct("<4sHHHHIIH")
_LIMIT = 0xFFFFFFFF


def _dos_time(dt: tuple[int, int, int, int, int, int]) -> tuple[int, int]:
    y, mo, d, h, mi, s = dt
    if y < 1980:
        y, mo, d, h, mi, s = 1980, 1, 1, 0, 0, 0
    return (h << 11) | (mi << 5) | (s // 2), ((y - 1980) << 9) | (mo << 5) | d


# CRC-32 of a concatenation (zlib's crc32_combine, in GF(2)): a member spliced from pieces

_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial (bit-reflected)."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


_X2N = [1 << 30]                    # x^(2^k) modulo the polynomial, k = 0..31
for _ in range(31):
    _X2N.append(_multmodp(_X2N[-1], _X2N[-1]))


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of ``A + B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)`` (zlib's ``crc32_combine``)."""
    p = 1 << 31                     # x^0
    k = 3                           # x^(8 * len2): one factor per set bit of len2
    n = len2
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return _multmodp(p, crc1 & 0xFFFFFFFF) ^ (crc2 & 0xFFFFFFFF)


class Flush:
    """In a replacement's pieces: end the deflate piece here with a full flush (see :mod:`.splice`)."""


FLUSH = Flush()


@dataclass(frozen=True)
class Copied:
    """In a replacement's pieces, right after a :data:`FLUSH`: deflated bytes copied as they are.

    They are the ``csize`` bytes at ``offset`` of the file ``src`` (:func:`copy_range` copies
    them), and must be a deflate piece that starts and ends at a full flush (no back reference
    before its start, not the final block), whose inflated bytes are ``usize`` long with
    CRC-32 ``crc``.
    """

    usize: int
    crc: int
    src: BinaryIO
    offset: int
    csize: int


KERNEL_COPY_MIN = 1 << 16           # smaller ranges go through the writer's buffer (no flush, no extra call)


def _kernel_copy(src: BinaryIO, offset: int, length: int, out: BinaryIO) -> int:
    """Copy what the kernel will of ``length`` bytes at ``offset`` of ``src`` to the end of ``out``.

    ``os.copy_file_range`` (Linux) moves the bytes between the files without bringing them into
    this process (no 4 MB buffers to fault in, no copies through user space).  Returns how many
    it copied: 0 on another system or when the call fails at once (EXDEV, ENOSYS, EINVAL…, or
    any other error, which the plain copy then meets itself), fewer when the source ended or the
    call failed part way; ``out`` is positioned after what was copied.
    """
    if sys.platform != "linux" or length < KERNEL_COPY_MIN:
        return 0
    out.flush()
    pos = out.tell()
    done = 0
    try:
        while done < length:
            n = os.copy_file_range(src.fileno(), out.fileno(), length - done, offset + done, pos + done)
            if n <= 0:
                break                   # the source ended: the plain copy finds out how
            done += n
    except (OSError, AttributeError):   # AttributeError: a Python built without it
        pass
    if done:
        out.seek(pos + done)
    return done


def copy_range(src: BinaryIO, offset: int, length: int, out: BinaryIO) -> int:
    """Copy ``length`` bytes at ``offset`` of ``src`` to ``out``; returns how many there were (fewer: it ended).

    The kernel copies them where it can (:func:`_kernel_copy`), else they are read and written
    a chunk at a time.
    """
    done = _kernel_copy(src, offset, length, out)
    if done < length:
        src.seek(offset + done)
        while done < length:
            b = src.read(min(length - done, CHUNK))
            if not b:
                break
            out.write(b)
            done += len(b)
    return done


@dataclass(frozen=True)
class Mark:
    """A full flush in a member being written: the offsets after it, and the CRC-32 of the piece it ends."""

    c_end: int
    u_end: int
    crc: int


@dataclass(frozen=True)
class Written:
    """Where a replaced member went: its local header offset, sizes, CRC-32 and full flushes."""

    offset: int
    csize: int
    usize: int
    crc: int
    marks: list[Mark]


Replacement = bytes | Callable[[], Iterable[bytes | Flush | Copied]]


def _deflate(rep: Replacement, out: BinaryIO, level: int) -> tuple[int, int, int, list[Mark]]:
    """Deflate a replacement's pieces to ``out``; returns (crc, csize, usize, full flushes)."""
    comp = None
    crc = usize = csize = 0
    piece_crc = 0
    marks: list[Mark] = []
    for piece in ([rep] if isinstance(rep, bytes) else rep()):
        if isinstance(piece, Flush):
            if comp is None:
                comp = deflate.compressobj(level)
            z = comp.flush(deflate.Z_FULL_FLUSH)
            csize += len(z)
            out.write(z)
            comp = None
            marks.append(Mark(csize, usize, piece_crc))
            piece_crc = 0
            continue
        if isinstance(piece, Copied):
            if comp is not None:
                raise ValueError("copied deflate bytes must follow a full flush")
            if copy_range(piece.src, piece.offset, piece.csize, out) != piece.csize:
                raise OSError("the workbook was truncated while it was being copied")
            csize += piece.csize
            crc = crc32_combine(crc, piece.crc, piece.usize)
            piece_crc = crc32_combine(piece_crc, piece.crc, piece.usize)
            usize += piece.usize
            continue
        if not piece:
            continue
        if comp is None:
            comp = deflate.compressobj(level)
        crc = zlib.crc32(piece, crc)
        piece_crc = zlib.crc32(piece, piece_crc)
        usize += len(piece)
        z = comp.compress(piece)
        csize += len(z)
        out.write(z)
    if comp is None:
        comp = deflate.compressobj(level)
    z = comp.flush()
    csize += len(z)
    out.write(z)
    return crc, csize, usize, marks


def write_package(pkg: Package, out: BinaryIO, replace: dict[str, Replacement], drop: set[str],
                  level: int = SHEET_COMPRESSLEVEL) -> dict[str, Written]:
    """Write the package to ``out``: replaced members deflated anew, the others copied raw.

    A replacement given as a function yields its bytes in pieces, with :data:`FLUSH` where a
    full flush goes and :class:`Copied` deflate bytes after one; returns where each replaced
    member went.
    """
    central: list[bytes] = []
    written: dict[str, Written] = {}
    for info in pkg.infos:
        name = info.filename
        if name in drop:
            continue
        offset = out.tell()
        try:
            fname = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
        except UnicodeEncodeError:
            fname = info.orig_filename.encode("utf-8")
        flags = info.flag_bits & ~0x8
        t, d = _dos_time(info.date_time)
        if name in replace:
            rep = replace[name]
            method = zipfile.ZIP_DEFLATED
            flags &= 0x800
            out.write(_LOCAL.pack(b"PK\x03\x04", 20, flags, method, t, d, 0, 0, 0, len(fname), 0) + fname)
            crc, csize, usize, marks = _deflate(rep, out, level if callable(rep) else SMALL_COMPRESSLEVEL)
            if usize >= _LIMIT or csize >= _LIMIT:
                raise damaged(pkg.path, f"part {name} would be over 4 GB, which sop does not write")
            end = out.tell()
            out.seek(offset + 14)
            out.write(struct.pack("<III", crc, csize, usize))
            out.seek(end)
            written[name] = Written(offset, csize, usize, crc, marks)
        else:
            method, crc, csize, usize = info.compress_type, info.CRC, info.compress_size, info.file_size
            out.write(_LOCAL.pack(b"PK\x03\x04", max(info.extract_version, 20), flags, method, t, d, crc, csize,
                                  usize, len(fname), 0) + fname)
            if copy_range(pkg.f, pkg.data_offset(info), csize, out) != csize:
                raise damaged(pkg.path, f"zip member {name} is truncated")
        if offset >= _LIMIT:
            raise damaged(pkg.path, "the workbook would be over 4 GB, which sop does not write")
        version = max(info.extract_version, 20) if name not in replace else 20
        central.append(_CENTRAL.pack(b"PK\x01\x02", info.create_version, info.create_system, version, 0, flags,
                                     method, t, d, crc, csize, usize, len(fname), 0, len(info.comment), 0,
                                     info.internal_attr, info.external_attr, offset) + fname + info.comment)
    start = out.tell()
    for c in central:
        out.write(c)
    size = out.tell() - start
    if len(central) >= 0xFFFF or start >= _LIMIT:
        raise damaged(pkg.path, "the workbook would need ZIP64, which sop does not write")
    comment = pkg.zf.comment or b""
    out.write(_EOCD.pack(b"PK\x05\x06", 0, 0, len(central), len(central), size, start, len(comment)) + comment)
    return written
