"""Creating a new minimal workbook (``sop init``)."""

from __future__ import annotations

import os
import re
import zipfile

from journal import fsops
from journal.errors import Refused

from .ranges import col_letters
from .text import cell_xml, encode_rows, escape_attr

_CT = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
       b'<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
       b'<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
       b'<Default Extension="xml" ContentType="application/xml"/>'
       b'<Override PartName="/xl/workbook.xml" '
       b'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
       b'<Override PartName="/xl/worksheets/sheet1.xml" '
       b'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
       b'<Override PartName="/xl/styles.xml" '
       b'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>'
       b'<Override PartName="/docProps/core.xml" '
       b'ContentType="application/vnd.openxmlformats-package.core-properties+xml"/>'
       b'<Override PartName="/docProps/app.xml" '
       b'ContentType="application/vnd.openxmlformats-officedocument.extended-properties+xml"/>'
       b"</Types>")
_ROOT_RELS = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
              b'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
              b'<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
              b'officeDocument" Target="xl/workbook.xml"/>'
              b'<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/package/2006/relationships/metadata/'
              b'core-properties" Target="docProps/core.xml"/>'
              b'<Relationship Id="rId3" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
              b'extended-properties" Target="docProps/app.xml"/>'
              b"</Relationships>")
_APP = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        b'<Properties xmlns="http://schemas.openxmlformats.org/officeDocument/2006/extended-properties" '
        b'xmlns:vt="http://schemas.openxmlformats.org/officeDocument/2006/docPropsVTypes">'
        b"<Application>sop</Application></Properties>")
_WORKBOOK = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
             b'<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
             b'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
             b'<bookViews><workbookView/></bookViews>'
             b'<sheets><sheet name="Master" sheetId="1" r:id="rId1"/></sheets></workbook>')
_WORKBOOK_RELS = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
                  b'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
                  b'<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
                  b'relationships/worksheet" Target="worksheets/sheet1.xml"/>'
                  b'<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
                  b'relationships/styles" Target="styles.xml"/>'
                  b"</Relationships>")
_STYLES = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
           b'<styleSheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
           b'<fonts count="2"><font><sz val="11"/><name val="Calibri"/><family val="2"/></font>'
           b'<font><b/><sz val="11"/><name val="Calibri"/><family val="2"/></font></fonts>'
           b'<fills count="2"><fill><patternFill patternType="none"/></fill>'
           b'<fill><patternFill patternType="gray125"/></fill></fills>'
           b'<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
           b'<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
           b'<cellXfs count="2"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
           b'<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1"/></cellXfs>'
           b'<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
           b"</styleSheet>")


def _core_xml(now: str) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            '<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/metadata/core-properties" '
            'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:dcterms="http://purl.org/dc/terms/" '
            'xmlns:dcmitype="http://purl.org/dc/dcmitype/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            '<dc:creator>sop</dc:creator>'
            f'<dcterms:created xsi:type="dcterms:W3CDTF">{now}</dcterms:created>'
            f'<dcterms:modified xsi:type="dcterms:W3CDTF">{now}</dcterms:modified>'
            "</cp:coreProperties>").encode()


def create_workbook(path: str | os.PathLike[str], headers: list[str], *, worksheet: str = "Master",
                    exist_ok: bool = False) -> None:
    """Write a new minimal workbook: one worksheet with the header row (bold), frozen below it.

    Raises:
        FileExistsError: ``path`` exists and ``exist_ok`` is false (``sop init`` never rewrites a sheet).
        Refused: a header cannot be stored.
    """
    import datetime
    import io

    if not exist_ok and os.path.lexists(path):
        raise FileExistsError(f"{os.fspath(path)} already exists")
    if not headers:
        raise Refused("a Master Sheet needs at least one header")
    cells = encode_rows([{i + 1: h for i, h in enumerate(headers)}])[0]
    if not 0 < len(worksheet) <= 31 or re.search(r"[\[\]:*?/\\]", worksheet):
        raise Refused(f"{worksheet!r} is not a valid worksheet name")
    last = col_letters(len(headers))
    row = (b'<row r="1">' + b"".join(cell_xml(b"", f"{col_letters(c)}1", t, v, b"1") for c, t, v in cells)
           + b"</row>")
    sheet = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
             b'<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
             b'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
             b'<dimension ref="A1:' + last.encode() + b'1"/>'
             b'<sheetViews><sheetView tabSelected="1" workbookViewId="0">'
             b'<pane ySplit="1" topLeftCell="A2" activePane="bottomLeft" state="frozen"/>'
             b'<selection pane="bottomLeft" activeCell="A2" sqref="A2"/></sheetView></sheetViews>'
             b'<sheetFormatPr defaultRowHeight="15"/>'
             b"<sheetData>" + row + b"</sheetData>"
             b'<pageMargins left="0.7" right="0.7" top="0.75" bottom="0.75" header="0.3" footer="0.3"/>'
             b"</worksheet>")
    workbook = _WORKBOOK.replace(b'name="Master"', b'name="' + escape_attr(worksheet).encode() + b'"')
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in (("[Content_Types].xml", _CT), ("_rels/.rels", _ROOT_RELS),
                           ("docProps/app.xml", _APP), ("docProps/core.xml", _core_xml(now)),
                           ("xl/workbook.xml", workbook), ("xl/_rels/workbook.xml.rels", _WORKBOOK_RELS),
                           ("xl/styles.xml", _STYLES), ("xl/worksheets/sheet1.xml", sheet)):
            z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    fsops.atomic_write(path, buf.getvalue())
