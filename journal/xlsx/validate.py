"""The whole-part XML check that runs in a child process beside a rewrite (see :class:`.edit.Validator`).

The parent starts it as ``python -I -S .../journal/xlsx/validate.py WORKBOOK MEMBER``: by its
file path, isolated and without ``site``, so the child starts in ~50 ms and runs exactly this
checkout's file (nothing but the standard library is importable there, and nothing else is
imported here).  ``python -m journal.xlsx.validate WORKBOOK MEMBER`` does the same.

Exit status 0: the member is well-formed XML without comments, processing instructions, CDATA
or a DOCTYPE.  3: it is not, and stdout says why (the parent refuses the write).  Anything else
means the check itself failed; the parent then checks the part in process.
"""

from __future__ import annotations

import struct
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any
from xml.parsers import expat


class Corrupt(ValueError):
    """A member whose bytes do not hold what its directory entry says (the reason is the message)."""


def data_offset(f: IO[bytes], info: zipfile.ZipInfo) -> int:
    """Where a member's compressed bytes start: after its local header, whose name and extra field
    lengths may differ from the central directory's."""
    f.seek(info.header_offset)
    lh = f.read(30)
    if len(lh) < 30 or lh[:4] != b"PK\x03\x04":
        raise Corrupt("a bad local header")
    n, e = struct.unpack("<HH", lh[26:30])
    return info.header_offset + 30 + n + e


def inflate_member(f: IO[bytes], info: zipfile.ZipInfo, decompressobj: Callable[[], Any],
                   crc32: Callable[[bytes, int], int], size: int = 1 << 22) -> Iterator[bytes]:
    """A deflated member of the zip open as ``f``, inflated ``size`` bytes at most at a time with a raw
    decompressor from ``decompressobj`` (zlib's interface: zlib's or ISA-L's), never past its declared
    size, its size and CRC-32 checked at the end (:class:`Corrupt`).  ``f`` is sought before each read:
    the file may be read elsewhere between two pieces.  The parent (:meth:`.package.Package.chunks`)
    and this child share it."""
    at = data_offset(f, info)
    left, want = info.compress_size, info.file_size
    d = decompressobj()
    crc = total = 0
    while True:
        f.seek(at)
        raw = f.read(min(left, 1 << 20))
        if not raw and left:
            raise Corrupt("truncated")
        at += len(raw)
        left -= len(raw)
        data = raw
        while data or (not left and not d.eof):
            out = d.decompress(data, min(size, want - total + 1))
            data = d.unconsumed_tail
            if not out:
                if not data:
                    break
                continue
            total += len(out)
            if total > want:
                raise Corrupt("it inflates past its declared size")
            crc = crc32(out, crc)
            yield out
        if not left:
            break
    if not d.eof:
        raise Corrupt("a truncated deflate stream")
    if total != want:
        raise Corrupt(f"it inflates to {total:,} bytes, not the {want:,} declared")
    if crc != info.CRC:
        raise Corrupt("a bad CRC-32")


def _inflated(z: zipfile.ZipFile, member: str, engine: Any) -> Iterator[bytes]:
    """A member inflated: a deflated one with ``engine`` (:func:`inflate_member`), another through zipfile."""
    info = z.getinfo(member)
    if info.compress_type != zipfile.ZIP_DEFLATED:
        with z.open(member) as f:
            while b := f.read(1 << 22):
                yield b
        return
    if z.fp is None:
        raise zipfile.BadZipFile("closed")
    yield from inflate_member(z.fp, info, lambda: engine.decompressobj(-15), engine.crc32)


def check(path: str, member: str, engine: Any = zlib) -> str | None:
    """Why ``member`` of the zip ``path`` cannot be edited, or None when it can."""
    p = expat.ParserCreate()
    odd: list[str] = []
    p.CommentHandler = lambda *a: odd.append("an XML comment")
    p.ProcessingInstructionHandler = lambda *a: odd.append("a processing instruction")
    p.StartCdataSectionHandler = lambda *a: odd.append("a CDATA section")
    p.StartDoctypeDeclHandler = lambda *a: odd.append("a DOCTYPE")
    try:
        with zipfile.ZipFile(path) as z:
            for b in _inflated(z, member, engine):
                p.Parse(b, False)
                if odd:
                    break
            else:
                p.Parse(b"", True)
    except expat.ExpatError as e:
        return f"is not well-formed XML ({e})"
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, Corrupt) as e:
        return f"cannot be inflated ({e})"
    if odd:
        return f"holds {odd[0]}, which sop does not edit"
    return None


def _engine(where: str | None) -> Any:
    """ISA-L's inflate when the parent says where python-isal is installed (this child runs without
    ``site``), else zlib."""
    if where:
        sys.path.append(where)
        try:
            from isal import isal_zlib
            return isal_zlib
        except ImportError:
            pass
    return zlib


def main(argv: list[str]) -> int:
    try:
        engine = _engine(argv[2] if len(argv) > 2 else None)
        problem = check(argv[0], argv[1], engine)
    except Exception as e:          # the check itself failed: not the part's fault (exit 1: checked in process)
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if problem is None:
        return 0
    print(problem)
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
