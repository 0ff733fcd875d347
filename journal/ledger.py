"""Plumbing: the ledger of committed rows — what the Master Sheet should hold, by the journal's word.

The journal knows every row sop committed and every row a journaled act
took away again.  The ledger is that knowledge folded into one map, keyed by
the run id's comparison key (:func:`journal.names.key`)::

    run key -> Entry(txid, strategy, run_id, seq, row)

``seq`` is the sequence number of the record that committed it (so the
newest rows are known), ``row`` the sheet row it went to.  Records change it
(see :func:`op_of`):

* ``committed`` (a run's row is written, or found written) and ``adopt``
  (recovery found a begun run's row on the sheet) add the run;
* ``remove_row`` (a sweep or ``sop-release`` removes a row, its values kept
  in the record) takes it away when the strategy matches;
* ``restored`` (``sop-restore`` put a lost row back, the original txid in
  its data) adds it again;
* ``lost_accepted`` (a sweep quarantined a lost row's folders: the sheet is
  accepted as it is) marks it accepted, with where its folders went, so it
  is no longer expected on the sheet but ``sop-restore`` can still put it back;
* ``released`` (``sop-release`` freed the strategy's slot) takes it away.

A row of the ledger that is not on the sheet is a *lost row*: a stale save,
a hand edit or a sheet replaced, never a journaled act.

On disk, ``.sop/ledger.msgpack`` holds the ledger as of the checkpoint (the
sealed segments), written just before each checkpoint; a writer adds the
records of the active segment to it.  The file is tagged with the
checkpoint's sequence number and hash; one that does not match (missing,
older, damaged) is rebuilt by replaying the whole journal, so it can only
cost time, never truth.  Its bytes: a msgpack map
``{"version": 1, "seq": N, "hash": H, "rows": {key: [txid, strategy, run_id, seq, row, accepted, moved]}}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from . import fsops, names

VERSION = 1


class Entry(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One committed row the sheet should hold.

    ``gc=False``: an entry holds only text, numbers and a map of text, never a
    cycle, so the garbage collector need not track 100,000s of them (it halves
    the time to load the ledger).
    """

    txid: str
    strategy: str
    run_id: str
    seq: int
    row: int = 0
    accepted: bool = False           # its loss was accepted (a sweep quarantined its folders): not expected
    moved: dict[str, str] = {}       # where that sweep put its folders (old path -> quarantined path)


class File(msgspec.Struct, kw_only=True):
    version: int = VERSION
    seq: int = 0
    hash: str = ""
    rows: dict[str, Entry] = {}


_decode = msgspec.msgpack.Decoder(File).decode
_encode = msgspec.msgpack.Encoder().encode

TYPES = frozenset({"committed", "adopt", "remove_row", "released", "lost_accepted", "restored"})  # see op_of
Op = tuple[str, str, Any]   # ("add", key, Entry) | ("remove", key, strategy key) | ("accept", key, (skey, moved))


def op_of(rec: Any, kind: str, strategy: str, run_id: str) -> Op | None:
    """What one record does to the ledger, given its transaction's kind, strategy and run id (before it)."""
    t = rec.type
    d = rec.data
    if t in ("committed", "adopt") and kind == "run":
        return ("add", names.key(run_id), Entry(rec.txid, strategy, run_id, rec.seq, int(d.get("row_number", 0) or 0)))
    if t == "remove_row" and d.get("run_id") is not None:
        return ("remove", names.key(names.cell_text(d["run_id"])), names.key(names.cell_text(d.get("strategy"))))
    if t == "released":
        return ("remove", names.key(names.cell_text(d.get("run_id"))), names.key(names.cell_text(d.get("strategy"))))
    if t == "lost_accepted":
        return ("accept", names.key(names.cell_text(d.get("run_id"))),
                (names.key(names.cell_text(d.get("strategy"))), dict(d.get("moved") or {})))
    if t == "restored" and d.get("txid"):            # a row put back by a sweep's undo has no txid of its own
        s, r = names.cell_text(d.get("strategy")), names.cell_text(d.get("run_id"))
        return ("add", names.key(r), Entry(str(d.get("txid", "")), s, r, rec.seq, int(d.get("row_number", 0) or 0)))
    return None


def apply_op(rows: dict[str, Entry], op: Op) -> None:
    what, key, arg = op
    if what == "add":
        rows[key] = arg
        return
    cur = rows.get(key)
    if what == "remove":
        if cur is not None and names.key(cur.strategy) == arg:
            del rows[key]
    elif cur is not None and names.key(cur.strategy) == arg[0]:
        rows[key] = msgspec.structs.replace(cur, accepted=True, moved=arg[1])


def path(sop_dir: Path) -> Path:
    return sop_dir / "ledger.msgpack"


def decode(data: bytes, seq: int, hash_: str) -> dict[str, Entry] | None:
    """The ledger in ``data`` when it is the ledger as of record ``seq`` (hash ``hash_``), else None."""
    try:
        f = _decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if f.version != VERSION or f.seq != seq or f.hash != hash_:
        return None
    return dict(f.rows)


def encode(rows: dict[str, Entry], seq: int, hash_: str) -> bytes:
    return _encode(File(seq=seq, hash=hash_, rows=rows))


def read(sop_dir: Path, seq: int, hash_: str) -> dict[str, Entry] | None:
    """The ledger as of record ``seq`` (hash ``hash_``), or None when the file does not say so."""
    try:
        data = path(sop_dir).read_bytes()
    except OSError:
        return None
    return decode(data, seq, hash_)


def write(sop_dir: Path, rows: dict[str, Entry], seq: int, hash_: str) -> None:
    fsops.atomic_write(path(sop_dir), encode(rows, seq, hash_))


class Lost(msgspec.Struct, kw_only=True):
    """Committed rows that the sheet no longer holds, and whether it looks like a stale save."""

    rows: list[Entry] = []           # oldest first
    on_sheet: int = 0                # committed rows that are still there
    stale_save: bool = False         # the newest rows sop wrote are exactly the ones missing

    def message(self, sheet_name: str, saved_at: str | None) -> str:
        """What a person is told: how many, since when, and the likely cause."""
        n = len(self.rows)
        first = self.rows[0]
        rows = f"{n} committed row{'s' if n != 1 else ''} {'are' if n != 1 else 'is'} missing from {sheet_name}"
        when = f" at {saved_at}" if saved_at else ""
        older = f" older than row {first.row}" if first.row else ""
        if self.stale_save and not self.on_sheet:
            return (f"{rows}: the workbook holds none of the rows sop wrote — saved over{when} from a copy{older}, "
                    "or every one removed by hand (treated as a stale save: nothing is changed until you decide)")
        if self.stale_save:
            return (f"{rows}: the workbook was saved over{when} from a copy{older} (a stale save: the newest rows "
                    "sop wrote are the ones missing)")
        return f"{rows}: removed by hand or by another program{when}, not by sop"


def find_lost(rows: dict[str, Entry], present: set[str]) -> Lost:
    """Which ledger rows are missing from a sheet whose run keys are ``present``."""
    gone = rows.keys() - present                        # set arithmetic: 100,000s of rows in milliseconds
    missing = sorted((e for e in map(rows.__getitem__, gone) if not e.accepted), key=lambda e: e.seq)
    if not missing:
        return Lost(on_sheet=len(rows) - len(gone))
    kept = [rows[k].seq for k in rows.keys() & present]
    stale = not kept or min(e.seq for e in missing) > max(kept)
    return Lost(rows=missing, on_sheet=len(kept), stale_save=stale)
