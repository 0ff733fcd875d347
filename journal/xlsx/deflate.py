"""Deflate and inflate for the workbook writer: ISA-L when it is installed, zlib otherwise.

python-isal (``pip install 'sop-journal[fast]'``) wraps Intel's ISA-L, whose
deflate is ~3x and inflate ~2x faster than zlib's on worksheet XML, with
output no larger (measured here: 24 MB of rows, level 1: zlib 138 ms and
2.92 MB, ISA-L 49 ms and 2.75 MB; inflate 108 ms against 45 ms).  Its
streams are plain raw deflate: any reader inflates them, and the full
flushes the spliced layout needs (:mod:`journal.xlsx.splice`) are the same
byte-aligned empty stored blocks.  ISA-L has levels 0-3; zlib's 1-9 map to
1 (fast) and 2 (the rest).  ``$SOP_DEFLATE=zlib`` forces zlib.
"""

from __future__ import annotations

import os
import zlib
from typing import Any

_isal: Any = None
if os.environ.get("SOP_DEFLATE") != "zlib":
    try:
        from isal import isal_zlib as _isal
    except ImportError:
        pass

ENGINE = "isal" if _isal is not None else "zlib"
Z_FULL_FLUSH = zlib.Z_FULL_FLUSH
error: tuple[type[Exception], ...] = (zlib.error,) if _isal is None else (zlib.error, _isal.error)


crc32 = zlib.crc32 if _isal is None else _isal.crc32     # ISA-L's folds with PCLMUL: ~5x zlib's here


def compressobj(level: int) -> Any:
    """A raw-deflate compressor (no zlib header: zip members hold raw streams)."""
    if _isal is not None:
        return _isal.compressobj(1 if level <= 1 else 2, _isal.DEFLATED, -15)
    return zlib.compressobj(level, zlib.DEFLATED, -15)


def decompressobj() -> Any:
    """A raw-inflate decompressor."""
    if _isal is not None:
        return _isal.decompressobj(-15)
    return zlib.decompressobj(-15)


def isal_home() -> list[str]:
    """The folder python-isal is imported from ([] without it): a child started without ``site`` adds it."""
    if _isal is None:
        return []
    return [os.path.dirname(os.path.dirname(os.path.abspath(_isal.__file__)))]
