"""Removing rows like Excel's Delete Row (see the package docstring, *Removing*)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from journal.errors import Refused

from .constants import MAX_COL, MAX_ROW, NS_DOC_RELS, NS_MAIN, NS_X14, NS_XM, REL_CALC_CHAIN
from .edit import editing, write_workbook
from .formulas import shift_formula, translate_formula
from .package import Package, Replacement, damaged, rels_name, sheet_tables, table_element, xml_decl, xml_root
from .ranges import Range, RowMap, col_index, col_letters
from .scan import Sx, attr_span, open_sheetdata, reread, row_spans
from .text import drop_attrs, escape_xml, get_attr, set_attr, tag_re, xml_text

if TYPE_CHECKING:
    from lxml import etree

# --------------------------------------------------------------------------------------------
# Everything outside <sheetData>

_REFUSE_ON_REMOVE = {"scenarios": "scenarios", "dataConsolidate": "a data consolidation",
                     "smartTags": "smart tags"}


def _moves(text: str, rows: RowMap) -> bool:
    """Whether a range (or a space-separated list) would change with the removal; True when unreadable."""
    for t in text.split():
        try:
            rg = Range.parse(t)
        except ValueError:
            return True
        if not (rg.r1 == 1 and rg.r2 == MAX_ROW) and rows.span(rg.r1, rg.r2) != (rg.r1, rg.r2):
            return True
    return False


def _moving_reference(el: etree._Element, rows: RowMap, own: str) -> str | None:
    """The first reference to this sheet's cells inside ``el`` (scenarios, data consolidation, smart
    tags: parts of the sheet sop does not rewrite) that the removal would move; None when nothing would.

    References are the ``r``, ``ref`` and ``sqref`` attributes anywhere in the element; a
    consolidation source on another sheet or in another workbook is not this sheet's.
    """
    for sub in el.iter():
        if not isinstance(sub.tag, str):
            continue
        if sub.tag == f"{{{NS_MAIN}}}dataRef":
            sheet = sub.get("sheet")
            if sub.get(f"{{{NS_DOC_RELS}}}id") or (sheet is not None and sheet.casefold() != own.casefold()):
                continue
        for attr in ("r", "ref", "sqref"):
            v = sub.get(attr)
            if v is not None and _moves(v, rows):
                return v
    return None


def _remove_outside_rows(pkg: Package, head: bytes, tail: bytes, rows: RowMap, own: str) -> tuple[bytes, bytes]:
    """Move every range in the worksheet part outside its rows (lxml on head + tail, no rows)."""
    from lxml import etree

    doc = head + tail
    root = xml_root(doc, pkg.path, "the master worksheet")
    M = f"{{{NS_MAIN}}}"
    XM = f"{{{NS_XM}}}"
    X14 = f"{{{NS_X14}}}"

    for name, what in _REFUSE_ON_REMOVE.items():
        el = root.find(M + name)
        ref = _moving_reference(el, rows, own) if el is not None else None
        if ref is not None:
            raise damaged(pkg.path, f"the master worksheet holds {what} on {ref}, which sop cannot move when "
                          f"removing row {rows.first}", "Remove the row in Excel instead.")

    def drop(el: etree._Element) -> None:
        parent = el.getparent()
        if parent is not None:
            parent.remove(el)

    def fix_attr(el: etree._Element, attr: str, is_sqref: bool = False) -> bool:
        """Move a ref/sqref attribute; False when nothing of it is left."""
        v = el.get(attr)
        if v is None:
            return True
        try:
            nv = rows.sqref(v) if is_sqref else rows.range(v)
        except ValueError:
            raise damaged(pkg.path, f"the master worksheet has a range {v!r} that sop cannot read") from None
        if nv is None:
            return False
        if nv != v:
            el.set(attr, nv)
        return True

    def anchor_of(sqref: str | None, new_sqref: str | None) -> tuple[int, int] | None:
        if not sqref or not new_sqref:
            return None
        old = min(Range.parse(t).r1 for t in sqref.split())
        new = min(Range.parse(t).r1 for t in new_sqref.split())
        return old, new

    def fix_text(el: etree._Element, anchor: tuple[int, int] | None) -> None:
        if el.text:
            nt = shift_formula(el.text, rows, own, anchor=anchor)
            if nt != el.text:
                el.text = nt

    dim = root.find(M + "dimension")
    if dim is not None and not fix_attr(dim, "ref"):
        dim.set("ref", "A1")

    merges = root.find(M + "mergeCells")
    if merges is not None:
        for mc in list(merges.findall(M + "mergeCell")):
            if not fix_attr(mc, "ref") or ":" not in mc.get("ref", ""):
                drop(mc)
        left = len(merges.findall(M + "mergeCell"))
        if not left:
            drop(merges)
        elif merges.get("count") is not None:
            merges.set("count", str(left))

    for cf in list(root.findall(M + "conditionalFormatting")):
        old = cf.get("sqref")
        if not fix_attr(cf, "sqref", True):
            drop(cf)
            continue
        anchor = anchor_of(old, cf.get("sqref"))
        for f in cf.iter(M + "formula"):
            fix_text(f, anchor)

    dvs = root.find(M + "dataValidations")
    if dvs is not None:
        for dv in list(dvs.findall(M + "dataValidation")):
            old = dv.get("sqref")
            if not fix_attr(dv, "sqref", True):
                drop(dv)
                continue
            anchor = anchor_of(old, dv.get("sqref"))
            for tag in ("formula1", "formula2"):
                for f in dv.findall(M + tag):
                    fix_text(f, anchor)
        left = len(dvs.findall(M + "dataValidation"))
        if not left:
            drop(dvs)
        elif dvs.get("count") is not None:
            dvs.set("count", str(left))

    links = root.find(M + "hyperlinks")
    if links is not None:
        for h in list(links.findall(M + "hyperlink")):
            if not fix_attr(h, "ref"):
                drop(h)
        if not len(links.findall(M + "hyperlink")):
            drop(links)

    af = root.find(M + "autoFilter")
    if af is not None:
        if not fix_attr(af, "ref"):
            drop(af)
        else:
            for el in af.iter(M + "sortState", M + "sortCondition"):
                if not fix_attr(el, "ref"):
                    drop(el)
    for el in root.findall(M + "sortState"):
        if not fix_attr(el, "ref"):
            drop(el)
        else:
            for sc in el.iter(M + "sortCondition"):
                if not fix_attr(sc, "ref"):
                    drop(sc)

    for container, item, attr in (("protectedRanges", "protectedRange", "sqref"),
                                  ("ignoredErrors", "ignoredError", "sqref"),
                                  ("cellWatches", "cellWatch", "r")):
        box = root.find(M + container)
        if box is None:
            continue
        for el in list(box.findall(M + item)):
            if not fix_attr(el, attr, attr == "sqref"):
                drop(el)
        if not len(box.findall(M + item)):
            drop(box)

    breaks = root.find(M + "rowBreaks")
    if breaks is not None:
        for brk in list(breaks.findall(M + "brk")):
            n = rows.row(int(brk.get("id", "0") or 0)) if (brk.get("id") or "0").isdigit() else None
            if n is None:
                drop(brk)
            elif str(n) != brk.get("id"):
                brk.set("id", str(n))
        left = breaks.findall(M + "brk")
        if not left:
            drop(breaks)
        else:
            if breaks.get("count") is not None:
                breaks.set("count", str(len(left)))
            if breaks.get("manualBreakCount") is not None:
                breaks.set("manualBreakCount", str(sum(1 for b in left if b.get("man") in ("1", "true"))))

    # extension lists: 2010 conditional formats and validations, sparklines
    for sq in list(root.iter(XM + "sqref")):
        owner = sq.getparent()
        old = (sq.text or "").strip()
        try:
            new = rows.sqref(old) if old else None
        except ValueError:
            raise damaged(pkg.path, f"the master worksheet has a range {old!r} that sop cannot read") from None
        if new is None:
            box = owner.getparent() if owner is not None else None
            drop(owner)
            if box is not None and box.tag in (X14 + "conditionalFormattings", X14 + "dataValidations",
                                               X14 + "sparklines") and not len(box):
                grand = box.getparent()
                drop(box)
                if grand is not None and grand.tag == X14 + "sparklineGroup" and not len(grand):
                    drop(grand)
            continue
        if new != old:
            sq.text = new
        if owner is not None and owner.tag in (X14 + "conditionalFormatting", X14 + "dataValidation"):
            anchor = anchor_of(old, new)
            for f in owner.iter(XM + "f"):
                fix_text(f, anchor)
        elif owner is not None:
            for f in owner.iter(XM + "f"):
                fix_text(f, None)
    dvs14 = root.find(f".//{X14}dataValidations")
    if dvs14 is not None and dvs14.get("count") is not None:
        dvs14.set("count", str(len(dvs14.findall(X14 + "dataValidation"))))

    body = etree.tostring(root, encoding="UTF-8", xml_declaration=False)
    p = (root.prefix + ":") if root.prefix else ""
    marker = f"<{p}sheetData/>".encode()
    i = body.find(marker)
    if i < 0 or body.find(marker, i + 1) >= 0:
        raise damaged(pkg.path, "the master worksheet could not be rewritten around its rows")
    return (xml_decl(head) + body[:i] + f"<{p}sheetData>".encode(),
            f"</{p}sheetData>".encode() + body[i + len(marker):])


def _shift_table(pkg: Package, part: str, xml: bytes, rows: RowMap) -> bytes:
    """A table part after row removal: its ref, autofilter and sort state move or shrink."""
    m = table_element(pkg, part, xml)
    prefix = m.group(1) or b""
    tag = m.group(0)
    name = get_attr(tag, b"displayName") or get_attr(tag, b"name") or part
    ref = get_attr(tag, b"ref")
    if not ref:
        raise damaged(pkg.path, f"table {name!r} has no range")
    rg = Range.parse(ref)
    if rg.r2 < rows.first:
        return xml
    header = (get_attr(tag, b"headerRowCount") or "1") != "0"
    totals = int(get_attr(tag, b"totalsRowCount") or "0")
    if header and rg.r1 in rows.dset:
        raise Refused(f"row {rg.r1} is the header row of table {name!r}; sop does not remove it",
                      detail="Remove the row in Excel instead.")
    if totals and any(r in rows.dset for r in range(rg.r2 - totals + 1, rg.r2 + 1)):
        raise Refused(f"row {rg.r2} is the total row of table {name!r}; sop does not remove it",
                      detail="Remove the row in Excel instead.")
    sp = rows.span(rg.r1, rg.r2)
    if sp is None:   # a table without a header row lost every row
        raise Refused(f"removing these rows would remove all of table {name!r}",
                      detail="Remove the rows in Excel instead.")
    top = sp[0]
    bottom = sp[1]
    minimum = top + (1 if header else 0) + totals
    if bottom < minimum:  # no data row left: Excel keeps one empty data row
        bottom = minimum
    new_ref = str(Range(rg.c1, top, rg.c2, bottom))
    out = xml[:m.start()] + set_attr(tag, b"ref", new_ref) + xml[m.end():]

    def fix(el: re.Match[bytes]) -> bytes:
        t = el.group(0)
        v = get_attr(t, b"ref")
        if not v:
            return t
        if v == ref:
            return set_attr(t, b"ref", new_ref)
        nv = rows.range(v)
        return set_attr(t, b"ref", nv) if nv else t
    for name_ in (b"autoFilter", b"sortState", b"sortCondition"):
        out = tag_re(prefix, name_).sub(fix, out)
    return out


# --------------------------------------------------------------------------------------------
# The rows themselves


class _RowShifter:
    """Rewrites the sheetData body chunk by chunk: drops removed rows, renumbers, fixes formulas.

    Shared formulas are written out as one formula per cell (each translated to its cell, then
    shifted): after a removal a group's cells no longer stand in the same relation to each other.
    """

    def __init__(self, pkg: Package, sx: Sx, rows: RowMap, own: str) -> None:
        self.pkg, self.sx, self.rows, self.own = pkg, sx, rows, own
        p = re.escape(sx.prefix)
        self.renum_re = re.compile(rb"(<" + p + rb'(?:row|c) r="[A-Za-z]*)\d+"')
        self.any_tag_re = re.compile(rb"<" + p + rb"(?:row|c)(\s[^>]*?)?/?>")
        self.f_tag = b"<" + sx.prefix + b"f"
        self.f_re = re.compile(rb"<" + p + rb"f(\s[^>]*)?(?:/>|>(.*?)</" + p + rb"f>)", re.S)
        self.shared: dict[str, tuple[int, int, str]] = {}

    def chunk(self, chunk: bytes) -> bytes:
        sx, rows = self.sx, self.rows
        has_f = self.f_tag in chunk
        if not has_f:
            s0 = chunk.rfind(sx.row_tag)
            m = sx.row_re.match(chunk, s0) if s0 >= 0 else None
            last = sx.row_number(m.group(1)) if m is not None else None
            if last is None or last < rows.first:
                return chunk
        # r first in every row and cell (the usual spelling): one regex renumbers a row
        usual = sx.no_r_re.search(chunk) is None
        out: list[bytes] = []
        pos = 0
        for r, s0, _s1, e in row_spans(chunk, sx):
            assert r is not None
            out.append(chunk[pos:s0])
            pos = e
            xml = chunk[s0:e]
            new = rows.row(r)
            if new is None:
                if has_f and self.f_tag in xml:
                    self.formulas(xml, r, None)
                continue
            if new != r:
                nb = str(new).encode()
                if usual:
                    def renumber(m: re.Match[bytes], nb: bytes = nb) -> bytes:
                        return m.group(1) + nb + b'"'
                    xml = self.renum_re.sub(renumber, xml)
                else:
                    xml = self.renumber_any(xml, r, nb)
            if has_f and self.f_tag in xml:
                xml = self.formulas(xml, r, new)
            out.append(xml)
        out.append(chunk[pos:])
        return b"".join(out)

    def renumber_any(self, row_xml: bytes, r: int, nb: bytes) -> bytes:
        """Give a row and its cells the row number ``nb``, their ``r`` wherever it is among the attributes."""
        def tag(m: re.Match[bytes]) -> bytes:
            attrs = m.group(1) or b""
            sp = attr_span(attrs, b"r")
            if sp is None:
                raise damaged(self.pkg.path, f"row {r} has a cell without an r attribute")
            old = attrs[sp[0]:sp[1]]
            letters = old.rstrip(b"0123456789")
            if letters == old:
                raise damaged(self.pkg.path, f"row {r} has a cell whose r attribute {old.decode()!r} has no row")
            a = m.start(1)
            return row_xml[m.start():a + sp[0]] + letters + nb + row_xml[a + sp[1]:m.end()]
        return self.any_tag_re.sub(tag, row_xml)

    def formulas(self, row_xml: bytes, r: int, new: int | None) -> bytes:
        """Rewrite the formulas of one row (old number ``r``); ``new`` None: the row goes away."""
        sx = self.sx

        def cell(m: re.Match[bytes]) -> bytes:
            c_xml = m.group(0)
            if self.f_tag not in c_xml:
                return c_xml
            ref = sx.cell_ref(m.group(1))
            if ref is None:
                raise damaged(self.pkg.path, f"row {r} has a formula cell without an r attribute")
            col = col_index(ref[0])
            if col > MAX_COL:
                raise damaged(self.pkg.path, f"row {r} has a cell {ref[0].decode()}{ref[1].decode()} past the "
                              "last column XFD", "Open and re-save the workbook in Excel.")
            return self.f_re.sub(lambda fm: self.formula(fm, r, col, new), c_xml, count=1)
        return sx.cell_re.sub(cell, row_xml)

    def formula(self, fm: re.Match[bytes], r: int, col: int, new: int | None) -> bytes:
        attrs = fm.group(1) or b""
        raw = fm.group(2)
        text = xml_text(raw, xesc=False) if raw else ""
        t = get_attr(attrs, b"t") or "normal"
        where = f"{col_letters(col)}{r}"
        if t == "dataTable":
            raise damaged(self.pkg.path, f"cell {where} is part of a data table, which sop cannot move",
                          "Remove the row in Excel instead.")
        if t == "shared":
            si = get_attr(attrs, b"si") or ""
            if get_attr(attrs, b"ref") is not None or si not in self.shared:
                if not text:
                    raise damaged(self.pkg.path, f"cell {where} uses shared formula {si} before its master")
                self.shared[si] = (r, col, text)
            else:
                mr, mc, mtext = self.shared[si]
                text = translate_formula(mtext, r - mr, col - mc)
            attrs = drop_attrs(attrs, (b"t", b"ref", b"si"))
        elif t == "array":
            ref = get_attr(attrs, b"ref")
            if ref:
                rg = Range.parse(ref)
                cut = [x for x in range(rg.r1, rg.r2 + 1) if x in self.rows.dset]
                if cut and len(cut) != rg.r2 - rg.r1 + 1:
                    raise damaged(self.pkg.path, f"removing row {cut[0]} would cut the array formula in {ref}",
                                  "Remove the row in Excel instead (it asks what to do with the array).")
                nref = self.rows.range(ref)
                if nref and nref != ref:
                    attrs = set_attr(attrs, b"ref", nref)
        if new is None:
            return fm.group(0)
        new_text = shift_formula(text, self.rows, self.own) if text else text
        if new_text == text and attrs == (fm.group(1) or b""):
            return fm.group(0)
        p = self.sx.prefix
        return b"<" + p + b"f" + attrs + b">" + escape_xml(new_text).encode("utf-8") + b"</" + p + b"f>"


def _drop_calc_chain(pkg: Package, replace: dict[str, Replacement], drop: set[str]) -> None:
    """Remove xl/calcChain.xml with its content-type override and relationship (Excel rebuilds it)."""
    rels = [r for r in pkg.workbook_rels if r.type == REL_CALC_CHAIN and not r.external]
    if not rels:
        return
    part = rels[0].target
    drop.add(part)
    ct = pkg.read("[Content_Types].xml")
    ct_new = re.sub(rb"<([\w.-]+:)?Override\b[^>]*?PartName\s*=\s*[\"']/" + re.escape(part.encode())
                    + rb"[\"'][^>]*?(?:/>|>\s*</\1?Override>)", b"", ct, flags=re.I)
    if ct_new != ct:
        replace["[Content_Types].xml"] = ct_new
    rels_part = rels_name(pkg.workbook_part)
    wr = pkg.read(rels_part)
    ids = {r.rid for r in rels}

    def keep(m: re.Match[bytes]) -> bytes:
        return b"" if (get_attr(m.group(0), b"Id") or "") in ids else m.group(0)
    wr_new = re.sub(rb"<([\w.-]+:)?Relationship\b[^>]*?(?:/>|>\s*</\1?Relationship>)", keep, wr)
    if wr_new != wr:
        replace[rels_part] = wr_new


def remove_rows(path: str | os.PathLike[str], worksheet: str | None, numbers: list[int]) -> None:
    """Remove rows like Excel's Delete Row: rows below move up, with every range in the sheet.

    See the package docstring for what moves and what is left as it is.

    Raises:
        Refused: a row number is not a row, or the removal would take a table's header or total row.
        SheetDamaged: the workbook cannot be edited safely; it is left untouched.
        PermissionError: the file cannot be replaced (locked); it is left untouched.
    """
    for n in numbers:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_ROW:
            raise Refused(f"{n!r} is not a row number (1..{MAX_ROW:,})")
    if not numbers:
        return
    rows = RowMap(numbers)
    with editing(path, worksheet) as (pkg, info, validator, scan):
        sx = scan.sx
        head, tail = open_sheetdata(scan.seg, sx)
        head, tail = _remove_outside_rows(pkg, head, tail, rows, info.name)
        replace: dict[str, Replacement] = {}
        drop: set[str] = set()
        for tpart in sheet_tables(pkg, info.part):
            txml = pkg.read(tpart)
            new = _shift_table(pkg, tpart, txml, rows)
            if new != txml:
                replace[tpart] = new
        _drop_calc_chain(pkg, replace, drop)
        shifter = _RowShifter(pkg, sx, rows, info.name)

        def body() -> Iterator[bytes]:
            yield head
            for chunk in reread(pkg, info.part, scan):
                yield shifter.chunk(chunk)
            yield tail

        replace[info.part] = body
        write_workbook(path, pkg, validator, replace, drop)
