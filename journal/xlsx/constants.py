"""Limits of the format, tuning of the engine, and the namespaces and relationship types it knows."""

from __future__ import annotations

MAX_ROW = 1_048_576
MAX_COL = 16_384
MAX_CELL_CHARS = 32_767
HEADER_SCAN_ROWS = 10
CHUNK = 1 << 22                     # inflate this much at a time
SHEET_COMPRESSLEVEL = 1             # deflate level of the rewritten sheet: 0.2 s less at 100k rows, ~20% larger
SMALL_COMPRESSLEVEL = 6

NS_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
NS_STRICT_MAIN = "http://purl.oclc.org/ooxml/spreadsheetml/main"
NS_PKG_RELS = "http://schemas.openxmlformats.org/package/2006/relationships"
NS_DOC_RELS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
NS_STRICT_DOC_RELS = "http://purl.oclc.org/ooxml/officeDocument/relationships"
NS_X14 = "http://schemas.microsoft.com/office/spreadsheetml/2009/9/main"
NS_XM = "http://schemas.microsoft.com/office/excel/2006/main"
REL_OFFICE_DOCUMENT = NS_DOC_RELS + "/officeDocument"
REL_WORKSHEET = NS_DOC_RELS + "/worksheet"
REL_SHARED_STRINGS = NS_DOC_RELS + "/sharedStrings"
REL_CALC_CHAIN = NS_DOC_RELS + "/calcChain"
REL_TABLE = NS_DOC_RELS + "/table"

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
