"""sop-log and sop-fsck (SPEC §3, §5): the audit trail, and catching every kind of damage.

Most journals here are written with :class:`journal.wal.Writer` directly
(fast, with fixed times and tiny segments); the commands run in-process
through the ``conftest`` helpers, and as a real process on a terminal.
"""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, WS, scrubbed_env, sop, sop_json

from journal import audit, porcelain, wal, workspace
from journal.errors import JournalDamaged, NoSuchTransaction, UsageError

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OWNER = {"host": "ws1", "pid": 4242, "start": "81234", "boot": "b00t", "user": "ana"}


# ---------------------------------------------------------------- a journal written by hand

class Hist:
    """A workspace whose journal is written with wal.Writer, and the txids it holds."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        porcelain.init(root)                     # .sop/ and an empty Master Sheet
        self.ws = workspace.open_workspace(root)
        self.w = wal.Writer(self.ws)
        self.tx: dict[str, str] = {}
        self.runs: dict[str, str] = {}
        self.n = 0

    def run(self, strategy: str, end: str, t: datetime, *, name: str | None = None, delete: bool = False) -> str:
        """A run transaction: begun, then 'commit', 'abort', 'defer' or left 'open'."""
        self.n += 1
        txid = f"tx-{t.strftime('%Y%m%dT%H%M%SZ')}-{self.n:06x}"
        rid = f"R{self.n}"
        self.tx[name or f"{strategy}/{end}"] = txid
        self.runs[txid] = rid
        a = self.w.append
        a(txid, "begin", {"strategy": strategy, "run_id": rid, "owner": OWNER,
                          "strategy_dir": f"backtests/{strategy}", "run_dir": f"runs/{rid}"}, now=t)
        a(txid, "mkdir", {"path": f"backtests/{strategy}"}, now=t)
        a(txid, "mkdir", {"path": f"runs/{rid}"}, now=t)
        t1 = t + timedelta(minutes=5)
        row = {"Strategy": strategy, "RunID": rid, "TxID": txid, "Sharpe": 1.25}
        if end in ("commit", "defer"):
            a(txid, "decide", {"row": row}, now=t1)
        if end == "defer":
            a(txid, "defer", {"reason": "sheet locked", "locked_by": "bob"}, now=t1)
        if end == "commit":
            a(txid, "append", {"row": row, "sheet": "backtests/Strategy_Master_Filter.xlsx"}, now=t1)
            a(txid, "committed", {"row_number": self.n + 1}, now=t1)
        if end == "abort":
            a(txid, "rollback", {"reason": "command exited 3", "delete": delete}, now=t1)
            if delete:
                files = [[f"equity_{i:02d}.csv", 100 + i] for i in range(14)]
                a(txid, "delete", {"path": f"backtests/{strategy}", "files": files}, now=t1)
                a(txid, "delete", {"path": f"runs/{rid}", "files": [["snap.bin", 7]]}, now=t1)
            else:
                a(txid, "rename", {"src": f"backtests/{strategy}",
                                   "dst": f"backtests/{strategy}_FAILED_20260301T120500Z"}, now=t1)
                a(txid, "rename", {"src": f"runs/{rid}", "dst": f"runs/{rid}_FAILED_20260301T120500Z"}, now=t1)
            a(txid, "aborted", {}, now=t1)
        return txid

    def sweep(self, t: datetime, steps: list[dict[str, Any]], *, name: str) -> str:
        """A sweep transaction as journal.sweep writes it: plan, each step, done."""
        self.n += 1
        txid = f"tx-{t.strftime('%Y%m%dT%H%M%SZ')}-{self.n:06x}"
        self.tx[name] = txid
        self.w.append(txid, "plan", {"steps": steps, "owner": OWNER, "zombie_action": "delete", "sweep": 1}, now=t)
        for i, s in enumerate(steps):
            if s["op"] == "remove_row":
                self.w.append(txid, "remove_row", {"step": i, "row_number": s["row_number"], "strategy": s["strategy"],
                                                   "run_id": s["run_id"],
                                                   "values": {"Strategy": s["strategy"], "RunID": s["run_id"],
                                                              "Sharpe": 0.5}}, now=t)
            elif s["op"] == "delete":
                self.w.append(txid, "delete", {"step": i, "path": s["path"], "files": [["a.csv", 3]],
                                               "finding": s["finding"]}, now=t)
        self.w.append(txid, "done", {"steps": len(steps), "skipped": {}}, now=t)
        return txid

    # -------- bytes on disk

    def segments(self) -> list[Path]:
        return wal.segment_files(self.ws.journal_dir)

    def lines(self, seg: Path) -> list[bytes]:
        return seg.read_bytes().splitlines(keepends=True)

    def write_lines(self, seg: Path, lines: list[bytes]) -> None:
        seg.write_bytes(b"".join(lines))

    def checkpoint(self) -> dict[str, Any]:
        return json.loads((self.root / ".sop" / "checkpoint.json").read_bytes())


def standard(h: Hist) -> Hist:
    """Alpha's life (aborted run, committed run, then a sweep), Beta, an open Gamma and a deferred Delta."""
    h.run("Alpha", "abort", T0, name="alpha1")
    h.run("Beta", "commit", T0 + timedelta(hours=1), name="beta")
    h.run("Alpha", "commit", T0 + timedelta(days=1), name="alpha2")
    h.run("Gamma", "open", T0 + timedelta(days=1, hours=2), name="gamma")
    h.run("Delta", "defer", T0 + timedelta(days=2), name="delta")
    h.run("Zeta", "abort", T0 + timedelta(days=2, hours=1), name="zeta", delete=True)
    a2 = h.tx["alpha2"]
    h.sweep(T0 + timedelta(days=3), [
        {"op": "remove_row", "row_number": 4, "strategy": "alpha", "run_id": h.runs[a2]},
        {"op": "delete", "path": "backtests/Alpha", "finding": "zombie_folder"},
    ], name="sweep_alpha")
    h.sweep(T0 + timedelta(days=3, hours=1), [
        {"op": "delete", "path": f"runs/{h.runs[h.tx['alpha1']]}_FAILED_20260301T120500Z", "finding": "quarantined"},
    ], name="purge_alpha_run")
    h.sweep(T0 + timedelta(days=3, hours=2), [
        {"op": "delete", "path": "backtests/Beta_FAILED_20260301T120500Z", "finding": "quarantined"},
    ], name="purge_beta")
    h.run("Omega", "commit", T0 + timedelta(days=4), name="omega")      # fills the active segment
    return h


@pytest.fixture
def hist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Hist:
    monkeypatch.setattr(wal, "SEGMENT_BYTES", 2500)      # a seal every few transactions
    return standard(Hist(tmp_path / "ws"))


def fsck(root: Path, code: int) -> dict[str, Any]:
    doc = sop_json("fsck", "-C", str(root), code=code)
    assert set(doc) >= {"ok", "records", "segments", "torn", "damage"}
    assert doc["ok"] is (code == 0)
    return doc


def resum(line: bytes) -> bytes:
    """A line edited by someone who knows the format: its sum recomputed."""
    body = line.rstrip(b"\n")[:-wal.SUM_SUFFIX] + b"}"
    rec = msgspec_decode(body)
    return wal.encode_line(wal.Body(**rec))


def flip(line: bytes) -> bytes:
    """One byte of a record changed (its time), the length kept."""
    assert b'"time":"2026' in line
    return line.replace(b'"time":"2026', b'"time":"2027', 1)


def msgspec_decode(b: bytes) -> dict[str, Any]:
    import msgspec
    return msgspec.json.decode(b)


# ---------------------------------------------------------------- sop-fsck: sound, torn

def test_history_spans_sealed_segments(hist: Hist) -> None:
    segs = hist.segments()
    cp = hist.checkpoint()
    assert len(segs) >= 4 and len(cp["segments"]) == len(segs) - 1
    doc = fsck(hist.root, 0)
    assert doc["records"] == hist.w.j.seq and doc["damage"] is None and doc["torn"] is None
    assert [s["name"] for s in doc["segments"]] == [p.name for p in segs]
    assert [s["digest"] for s in doc["segments"]] == ["ok"] * (len(segs) - 1) + [""]


@pytest.mark.parametrize("tail,why", [
    (b'{"seq":999,"txid":"tx-x","type":"beg', "no newline"),       # a record cut short by a crash
    (b"garbage that is not json\n", "not JSON"),                    # a whole line that does not parse
    (b"\0" * 4096, "no newline"),                                   # a zero-filled tail after a crash
])
def test_torn_tail_is_recoverable_not_damage(hist: Hist, tail: bytes, why: str) -> None:
    seg = hist.segments()[-1]
    size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(tail)
    doc = fsck(hist.root, 0)
    assert doc["damage"] is None
    assert doc["torn"]["segment"] == seg.name and doc["torn"]["offset"] == size and why in doc["torn"]["why"]
    assert doc["torn"]["bytes"] == len(tail) and doc["records"] == hist.w.j.seq
    p = sop("fsck", "-C", str(hist.root))
    assert "torn tail" in p.stdout and "sop-recover" in p.stdout and "journal OK" in p.stdout
    sop("recover", "-C", str(hist.root), "--older-than", "100000d")   # cuts the tail; leaves the open one alone
    after = fsck(hist.root, 0)
    assert after["torn"] is None and after["records"] > hist.w.j.seq
    cut = [r for t in sop_json("log", "-C", str(hist.root))["transactions"] for r in t["records"]
           if r["type"] == "tail_cut"]
    assert len(cut) == 1 and cut[0]["seq"] == hist.w.j.seq + 1 and cut[0]["data"]["bytes"] == len(tail)
    kept = list((hist.root / ".sop" / "lost+found").iterdir())
    assert [k.read_bytes() for k in kept] == [tail]


def test_last_record_cut_short_is_torn(hist: Hist) -> None:
    seg = hist.segments()[-1]
    data = seg.read_bytes()
    seg.write_bytes(data[:-20])
    doc = fsck(hist.root, 0)
    assert doc["torn"]["line"] == len(data.splitlines()) and doc["records"] == hist.w.j.seq - 1


def test_fsck_and_log_change_nothing(hist: Hist) -> None:
    with open(hist.segments()[-1], "ab") as f:
        f.write(b"\0" * 100)                                       # a writer would cut this off

    def snap() -> dict[str, tuple[bytes, int]]:
        return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in hist.root.rglob("*") if p.is_file()}
    before = snap()
    fsck(hist.root, 0)
    sop("log", "-C", str(hist.root))
    assert snap() == before


def test_unreadable_checkpoint_is_a_warning(hist: Hist) -> None:
    cp = hist.root / ".sop" / "checkpoint.json"
    cp.write_bytes(b"\0" * 50)                                      # costs writers only time
    doc = fsck(hist.root, 0)
    assert any("checkpoint" in w for w in doc["warnings"])
    assert all(s["digest"] == "" for s in doc["segments"])


def test_empty_workspace_is_sound(tmp_path: Path) -> None:
    (tmp_path / ".sop" / "journal").mkdir(parents=True)
    doc = fsck(tmp_path, 0)
    assert doc["records"] == 0 and doc["segments"] == []


def test_no_workspace_is_exit_2(tmp_path: Path) -> None:
    sop("fsck", code=2, cwd=tmp_path)


# ---------------------------------------------------------------- sop-fsck: damage, each kind, with its place

def _where(doc: dict[str, Any]) -> tuple[str, int | None, int | None]:
    d = doc["damage"]
    return d["segment"], d["line"], d["seq"]


def _first_seq(seg: Path) -> int:
    return int(seg.name[:16])


def test_edited_record_in_the_active_segment(hist: Hist) -> None:
    seg = hist.segments()[-1]
    lines = hist.lines(seg)
    assert len(lines) >= 3
    lines[1] = flip(lines[1])
    hist.write_lines(seg, lines)
    doc = fsck(hist.root, 5)
    assert _where(doc) == (seg.name, 2, _first_seq(seg) + 1)
    assert "checksum" in doc["damage"]["message"]
    p = sop("fsck", "-C", str(hist.root), code=5)
    assert f"{seg.name} line 2, record {_first_seq(seg) + 1}" in p.stdout and "Action:" in p.stdout


def test_edited_record_in_a_sealed_segment(hist: Hist) -> None:
    seg = hist.segments()[0]
    lines = hist.lines(seg)
    lines[3] = flip(lines[3])
    hist.write_lines(seg, lines)
    assert _where(fsck(hist.root, 5)) == (seg.name, 4, 4)


def test_edited_record_with_a_new_sum_breaks_the_chain(hist: Hist) -> None:
    seg = hist.segments()[1]
    lines = hist.lines(seg)
    lines[0] = resum(flip(lines[0]))
    assert wal.verify_line(lines[0].rstrip(b"\n")) is not None              # the edited line verifies by itself
    hist.write_lines(seg, lines)
    doc = fsck(hist.root, 5)
    assert _where(doc) == (seg.name, 2, _first_seq(seg) + 1)
    assert "does not chain" in doc["damage"]["message"]


def test_deleted_record(hist: Hist) -> None:
    seg = hist.segments()[-1]
    lines = hist.lines(seg)
    del lines[1]
    hist.write_lines(seg, lines)
    doc = fsck(hist.root, 5)
    assert _where(doc) == (seg.name, 2, _first_seq(seg) + 2)
    assert "removed" in doc["damage"]["message"]


def test_reordered_records(hist: Hist) -> None:
    seg = hist.segments()[1]
    lines = hist.lines(seg)
    lines[2], lines[3] = lines[3], lines[2]
    hist.write_lines(seg, lines)
    assert _where(fsck(hist.root, 5)) == (seg.name, 3, _first_seq(seg) + 3)


def test_duplicated_record(hist: Hist) -> None:
    seg = hist.segments()[-1]
    lines = hist.lines(seg)
    lines.insert(2, lines[1])
    hist.write_lines(seg, lines)
    doc = fsck(hist.root, 5)
    assert _where(doc) == (seg.name, 3, _first_seq(seg) + 1)
    assert "duplicated" in doc["damage"]["message"]


def test_garbage_before_the_end_is_damage_not_torn(hist: Hist) -> None:
    seg = hist.segments()[-1]
    lines = hist.lines(seg)
    lines.insert(1, b"\0\0\0\0\n")
    hist.write_lines(seg, lines)
    doc = fsck(hist.root, 5)
    assert doc["torn"] is None and _where(doc) == (seg.name, 2, _first_seq(seg) + 1)


@pytest.mark.parametrize("which", [0, 1, -2])
def test_removed_segment(hist: Hist, which: int) -> None:
    seg = hist.segments()[which]
    seg.unlink()
    doc = fsck(hist.root, 5)
    assert _where(doc)[0] == seg.name and _where(doc)[2] == _first_seq(seg)
    assert "missing" in doc["damage"]["message"]
    sop("begin", "-C", str(hist.root), "--strategy", "New", code=5)             # writers refuse too


def test_removed_segment_unknown_to_the_checkpoint(hist: Hist) -> None:
    (hist.root / ".sop" / "checkpoint.json").unlink()
    seg = hist.segments()[1]
    seg.unlink()
    doc = fsck(hist.root, 5)
    nxt = hist.segments()[1]
    assert _where(doc) == (nxt.name, 1, _first_seq(seg))
    assert "missing" in doc["damage"]["message"]


def test_checkpoint_digest_mismatch(hist: Hist) -> None:
    cp = hist.checkpoint()
    cp["segments"][1]["sha256"] = "0" * 64
    (hist.root / ".sop" / "checkpoint.json").write_text(json.dumps(cp))
    doc = fsck(hist.root, 5)
    assert _where(doc) == (hist.segments()[1].name, None, cp["segments"][1]["first"])
    assert "digest" in doc["damage"]["message"]
    assert [s["digest"] for s in doc["segments"]][:2] == ["ok", "mismatch"]


def test_sealed_segment_rewritten_with_a_valid_chain(hist: Hist) -> None:
    """Someone rewrites history consistently (sums and chain): only the checkpoint's digest can tell."""
    segs = hist.segments()
    prev = wal.GENESIS
    for i, seg in enumerate(segs):
        out = []
        for line in hist.lines(seg):
            rec = msgspec_decode(line.rstrip(b"\n")[:-wal.SUM_SUFFIX] + b"}")
            if i == 0 and rec["seq"] == 2:
                rec["data"]["path"] = rec["data"]["path"].replace("Alpha", "Alphb")
            rec["prev"] = prev
            new = wal.encode_line(wal.Body(**rec))
            prev = wal.line_hash(new)
            out.append(new)
        hist.write_lines(seg, out)
    assert segs[0].stat().st_size == hist.checkpoint()["segments"][0]["bytes"]
    assert _where(fsck(hist.root, 5)) == (segs[0].name, None, 1)


def test_checkpoint_listing_wrong_open_transactions(hist: Hist) -> None:
    cp = hist.checkpoint()
    assert cp["open"], "the fixture should leave a transaction open across a seal"
    cp["open"] = {}
    (hist.root / ".sop" / "checkpoint.json").write_text(json.dumps(cp))
    doc = fsck(hist.root, 5)
    assert doc["damage"]["segment"] == "checkpoint.json" and "open transactions" in doc["damage"]["message"]


def test_record_against_the_state_machine(hist: Hist) -> None:
    gamma = hist.tx["gamma"]                       # begun, never decided
    j = hist.w.j
    body = wal.Body(seq=j.seq + 1, txid=gamma, type="committed", time=wal.fmt_time(T0), user="ana", host="ws1",
                     pid=1, prev=j.hash, data={"row_number": 9})
    seg = hist.segments()[-1]
    with open(seg, "ab") as f:
        f.write(wal.encode_line(body))
    doc = fsck(hist.root, 5)
    assert _where(doc) == (seg.name, len(hist.lines(seg)), j.seq + 1)
    assert "state machine" in doc["damage"]["message"] and "begun" in doc["damage"]["message"]


def test_fsck_api_returns_the_same(hist: Hist) -> None:
    seg = hist.segments()[-1]
    lines = hist.lines(seg)
    del lines[0]
    hist.write_lines(seg, lines)
    res = audit.fsck(root=hist.root)
    assert not res.ok and res.damage is not None and res.damage.segment == seg.name and res.damage.line == 1


# ---------------------------------------------------------------- sop-log

def test_log_json_shape_and_order(hist: Hist) -> None:
    doc = sop_json("log", "-C", str(hist.root))
    assert set(doc) == {"transactions"}
    txs = doc["transactions"]
    assert len(txs) == len(hist.tx)
    for t in txs:
        assert {"txid", "strategy", "run_id", "state", "records"} <= set(t)
        assert all({"seq", "type", "time", "data"} <= set(r) for r in t["records"])
        assert [r["seq"] for r in t["records"]] == sorted(r["seq"] for r in t["records"])
    firsts = [t["records"][0]["seq"] for t in txs]
    assert firsts == sorted(firsts, reverse=True)                               # newest first
    states = {t["txid"]: t["state"] for t in txs}
    assert states[hist.tx["alpha1"]] == "aborted" and states[hist.tx["alpha2"]] == "committed"
    assert states[hist.tx["gamma"]] == "begun" and states[hist.tx["delta"]] == "deferred"
    assert states[hist.tx["sweep_alpha"]] == "committed"
    beta = next(t for t in txs if t["txid"] == hist.tx["beta"])
    assert beta["owner"]["user"] == "ana" and beta["owner"]["pid"] == 4242 and beta["strategy"] == "Beta"
    assert [r["type"] for r in beta["records"]] == ["begin", "mkdir", "mkdir", "decide", "append", "committed"]


def test_log_strategy_is_its_whole_life(hist: Hist) -> None:
    doc = sop_json("log", "-C", str(hist.root), "--strategy", "ALPHA")
    got = [t["txid"] for t in doc["transactions"]]
    want = [hist.tx[k] for k in ("purge_alpha_run", "sweep_alpha", "alpha2", "alpha1")]
    assert got == want


def test_log_strategy_reads_only_the_segments_it_needs(hist: Hist) -> None:
    """An unrelated sealed segment turned to garbage: the full log refuses, --strategy never reads it."""
    def seqs(name: str) -> set[int]:
        doc = sop_json("log", "-C", str(hist.root), "--strategy", name)
        return {r["seq"] for t in doc["transactions"] for r in t["records"]}
    alpha = seqs("alpha")
    before = sop_json("log", "-C", str(hist.root), "--strategy", "alpha")
    sealed = hist.segments()[:-1]
    spans = {p.name: range(_first_seq(p), _first_seq(p) + len(hist.lines(p))) for p in sealed}
    other, name = next((p, n) for n in ("Delta", "Zeta", "Gamma", "Beta") for p in sealed
                       if not alpha.intersection(spans[p.name]) and seqs(n).intersection(spans[p.name]))
    other.write_bytes(b"x" * other.stat().st_size)            # same size: writers and the index cannot tell
    sop("log", "-C", str(hist.root), code=5)
    assert sop_json("log", "-C", str(hist.root), "--strategy", "alpha") == before
    doc = sop_json("log", "-C", str(hist.root), "--strategy", name, code=5)      # a life that needs it: verified
    assert "digest" in doc["error"]["message"]


def test_log_rebuilds_a_missing_index(hist: Hist) -> None:
    index = hist.root / ".sop" / "cache" / "index"
    names = sorted(p.name for p in index.iterdir())
    assert names == sorted(f"{p.name}.json" for p in hist.segments()[:-1])    # one per sealed segment
    want = sop_json("log", "-C", str(hist.root), "--strategy", "alpha")
    shutil.rmtree(hist.root / ".sop" / "cache")
    assert sop_json("log", "-C", str(hist.root), "--strategy", "alpha") == want
    assert sorted(p.name for p in index.iterdir()) == names
    stale = index / names[0]
    doc = json.loads(stale.read_bytes())
    doc["txids"] = {}                                       # a lying index, but not of these bytes:
    doc["sha256"] = "f" * 64
    stale.write_text(json.dumps(doc))
    assert sop_json("log", "-C", str(hist.root), "--strategy", "alpha") == want   # ignored, segment read


def test_log_txid_full_and_unknown(hist: Hist) -> None:
    zeta = hist.tx["zeta"]
    full = sop("log", "-C", str(hist.root), zeta).stdout
    listed = sop("log", "-C", str(hist.root), "--txid", zeta).stdout
    assert "equity_13.csv (113 bytes)" in full                                  # every file
    assert re.search(r"aborted  \[\S+@\S+ pid \d+\]", full)                     # and who wrote each record
    assert "equity_13.csv" not in listed and "4 more file(s)" in listed
    assert full.count("transaction ") == 1
    p = sop("log", "-C", str(hist.root), "tx-nope", code=4)
    assert "no such transaction" in p.stderr
    assert sop_json("log", "-C", str(hist.root), "tx-nope", code=4)["error"]["code"] == 4
    sop("log", "-C", str(hist.root), "--txid", "tx-nope", code=4)
    sop("log", "-C", str(hist.root), zeta, "--txid", hist.tx["beta"], code=2)


def test_log_state_filter(hist: Hist) -> None:
    def txids(*args: str) -> set[str]:
        return {t["txid"] for t in sop_json("log", "-C", str(hist.root), *args)["transactions"]}
    assert txids("--state", "open") == {hist.tx["gamma"], hist.tx["delta"]}
    assert txids("--state", "deferred", "--state", "aborted") == {hist.tx["delta"], hist.tx["alpha1"], hist.tx["zeta"]}
    assert txids("--state", "committed", "--strategy", "alpha") == {hist.tx["alpha2"], hist.tx["sweep_alpha"],
                                                                    hist.tx["purge_alpha_run"]}
    sop("log", "-C", str(hist.root), "--state", "bogus", code=2)


def test_log_since_until_absolute(hist: Hist) -> None:
    def txids(*args: str) -> set[str]:
        return {t["txid"] for t in sop_json("log", "-C", str(hist.root), *args)["transactions"]}
    day2 = txids("--since", "2026-03-02", "--until", "2026-03-02")
    assert day2 == {hist.tx["alpha2"], hist.tx["gamma"]}
    assert txids("--until", "2026-03-01T12:30Z") == {hist.tx["alpha1"]}
    assert txids("--since", "2026-03-04T13:30:00+01:00") == {hist.tx[k] for k in ("purge_alpha_run", "purge_beta",
                                                                                   "omega")}
    sop("log", "-C", str(hist.root), "--since", "last tuesday", code=2)


def test_log_since_relative_ages(tmp_path: Path) -> None:
    h = Hist(tmp_path / "ws")
    now = datetime.now(UTC)
    old = h.run("Old", "commit", now - timedelta(days=3))
    new = h.run("New", "commit", now - timedelta(hours=1))
    got = {t["txid"] for t in sop_json("log", "-C", str(h.root), "--since", "2d")["transactions"]}
    assert got == {new}
    got = {t["txid"] for t in sop_json("log", "-C", str(h.root), "--until", "2h")["transactions"]}
    assert got == {old}
    res = audit.log(root=h.root, since="4d", until="2d", now=now)
    assert [t.txid for t in res.transactions] == [old]


def test_parse_when() -> None:
    now = datetime(2026, 3, 5, 15, 30, tzinfo=UTC)
    assert audit.parse_when("90m", now) == now - timedelta(minutes=90)
    assert audit.parse_when("1w", now) == now - timedelta(days=7)
    assert audit.parse_when("2026-03-01", now) == datetime(2026, 3, 1, tzinfo=UTC)
    assert audit.parse_when("2026-03-01", now, end=True) == datetime(2026, 3, 2, tzinfo=UTC) - timedelta(microseconds=1)
    assert audit.parse_when("yesterday", now) == datetime(2026, 3, 4, tzinfo=UTC)
    with pytest.raises(UsageError):
        audit.parse_when("soon", now)


def test_log_human_output_tells_who_what_where(hist: Hist) -> None:
    out = sop("log", "-C", str(hist.root)).stdout
    assert out.index(hist.tx["purge_beta"]) < out.index(hist.tx["alpha1"])     # newest first
    assert f"transaction {hist.tx['alpha1']} (aborted)" in out
    assert "Owner:    ana@ws1 pid 4242" in out
    assert "rollback decision (quarantine): command exited 3" in out
    assert "rename backtests/Alpha -> backtests/Alpha_FAILED_20260301T120500Z" in out
    assert "deferred: sheet locked (sheet locked by bob)" in out
    assert "remove row 4: Strategy='alpha'" in out
    assert "delete backtests/Zeta (14 file(s)," in out and "equity_00.csv (100 bytes)" in out
    assert "commit decision" in out and "Sharpe=1.25" in out
    assert "\x1b[" not in out                                                  # not a terminal: no colour


def _on_tty(args: list[str], env: dict[str, str]) -> str:
    """Run a command with stdin and stdout on a pseudo-terminal; return what it wrote there."""
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, *args], stdin=slave, stdout=slave, stderr=subprocess.DEVNULL, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            b = os.read(master, 65536)
        except OSError:
            break
        if not b:
            break
        chunks.append(b)
    p.wait(timeout=60)
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


def test_log_on_a_terminal_is_paged_and_coloured_unless_no_color(hist: Hist, tmp_path: Path) -> None:
    marker = tmp_path / "paged"
    pager = tmp_path / "pager.sh"
    pager.write_text(f"#!/bin/sh\ntouch {marker}\nexec cat\n")
    pager.chmod(0o755)
    env = scrubbed_env(PAGER=str(pager), TERM="xterm")
    env.pop("NO_COLOR", None)
    out = _on_tty([str(BIN / "sop-log"), "-C", str(hist.root)], env)
    assert marker.exists() and hist.tx["alpha1"] in out and "\x1b[" in out
    marker.unlink()
    out = _on_tty([str(BIN / "sop-log"), "-C", str(hist.root)], {**env, "NO_COLOR": "1"})
    assert marker.exists() and hist.tx["alpha1"] in out and "\x1b[" not in out


def test_log_api(hist: Hist) -> None:
    res = audit.log(root=hist.root, strategy="Alpha", state="committed")
    assert [t.txid for t in res.transactions] == [hist.tx[k] for k in ("purge_alpha_run", "sweep_alpha", "alpha2")]
    assert res.transactions[1].kind == "sweep" and res.transactions[2].run_id == hist.runs[hist.tx["alpha2"]]
    with pytest.raises(NoSuchTransaction):
        audit.log(root=hist.root, txid="tx-none")
    seg = hist.segments()[0]
    seg.write_bytes(b"x" * seg.stat().st_size)
    with pytest.raises(JournalDamaged):
        audit.log(root=hist.root)


def test_log_shows_a_cut_tail(hist: Hist) -> None:
    with open(hist.segments()[-1], "ab") as f:
        f.write(b"{\"torn")
    p = sop("log", "-C", str(hist.root))
    assert "torn tail" in p.stderr
    sop("recover", "-C", str(hist.root), "--older-than", "100000d")
    doc = sop_json("log", "-C", str(hist.root))
    assert doc["transactions"][0]["kind"] == "journal"
    assert doc["transactions"][0]["records"][0]["type"] == "tail_cut"
    assert "cut a torn journal tail" in sop("log", "-C", str(hist.root)).stdout


# ---------------------------------------------------------------- a strategy's life through the real CLI

def test_strategy_life_through_the_cli(ws: WS) -> None:
    first = ws.begin_tx("Alpha")
    ws.sop("abort", first["txid"])                                         # quarantined
    second = ws.full_run("Alpha", sharpe=1.5)                              # committed
    ws.full_run("Beta", sharpe=0.7)
    third = ws.begin_tx("Gamma")                                           # open
    doc = ws.json("log", "--strategy", "alpha")
    got = [(t["txid"], t["state"]) for t in doc["transactions"]]
    assert got == [(second["txid"], "committed"), (first["txid"], "aborted")]
    types = [r["type"] for r in doc["transactions"][1]["records"]]
    assert types == ["begin", "mkdir", "mkdir", "mkdir", "rollback", "rename", "rename", "aborted"]  # + runs/
    owner = doc["transactions"][0]["owner"]
    assert owner["pid"] > 0 and owner["host"] and doc["transactions"][0]["run_id"] == second["run_id"]
    appended = next(r for r in doc["transactions"][0]["records"] if r["type"] == "append")
    assert appended["data"]["row"]["strategy"] == "Alpha" and appended["data"]["row"]["sharpe"] == 1.5
    assert [t["txid"] for t in ws.json("log", "--state", "open")["transactions"]] == [third["txid"]]
    assert ws.json("fsck")["ok"] is True
    shutil.rmtree(ws.root / "runs" / second["run_id"])                     # Alpha's row is orphaned now
    ws.sop("sweep", "--fix")
    life = ws.json("log", "--strategy", "ALPHA")["transactions"]
    assert [t["txid"] for t in life][1:] == [second["txid"], first["txid"]]
    sweep = life[0]
    assert sweep["state"] == "committed"
    kinds = [r["type"] for r in sweep["records"]]
    assert kinds[0] == "plan" and "remove_row" in kinds and kinds[-1] == "done"
    removed = next(r for r in sweep["records"] if r["type"] == "remove_row")
    assert removed["data"]["values"]["Strategy"] == "Alpha"
    assert ws.json("fsck")["ok"] is True
