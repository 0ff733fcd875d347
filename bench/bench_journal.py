"""Benchmark: the journal at 1,000,000 records — writers stay fast, and so does a strategy's history.

Builds a workspace in a temp folder (removed afterwards unless ``--keep``)
whose journal holds ``--records`` records: run transactions that commit
(6 records) or abort (7), and sweeps (4), each line made by the real record
encoder (:func:`journal.wal.encode_line`), chained, cut into segments at
:data:`journal.wal.SEGMENT_BYTES` the way :class:`journal.wal.Writer` cuts
them, with the checkpoint and the per-segment index a writer writes when it
seals a segment.  The newest segment is left nearly full, the worst case for
a writer, which reads it whole.  Nothing is open at the end.  The Master
Sheet holds the rows the journal committed (two columns, ~114,000 rows at 1M
records), as a real workspace's does, so that the lost-row check of
``sop-status`` and ``sop-recover`` compares the ledger with a sheet that
agrees; after the warm-up its index is cached, so ``sop-begin`` measures the
journal, not the workbook (bench_commit.py measures a large sheet).

One strategy, ``Target_Strategy``, has a life spread over the whole history:
an aborted run near the start, a committed run in the middle, a sweep that
removes its row and deletes its folder later, a committed run again near the
end, and a purge of its quarantined run folder.

Measured as a user sees it, each command a separate process (median of
``--repeat`` after one warm-up):

* ``sop-recover`` with nothing open (target <= 0.5 s);
* ``sop-begin`` (target <= 0.5 s), and the same on an empty journal;
* ``sop-commit`` (begun untimed), and the same on a copy of the sheet adopted by a workspace
  whose journal is empty (target: <= 1.1 x, whatever the segment's fullness and the history);
* ``sop-log --strategy Target_Strategy`` (target <= 2 s), ``sop-log TXID``, ``sop-status``;
* once: ``sop-log --strategy`` with the index deleted (what a linear scan costs), and
  ``sop-fsck`` over everything (no target: it reads all).

Usage: python bench/bench_journal.py [--records 1000000] [--repeat 5] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "bin"
sys.path.insert(0, str(ROOT))

from journal import ledger, wal  # noqa: E402

TARGET = "Target_Strategy"
OWNER = {"host": "bench-host", "pid": 4242, "start": "81234", "boot": "6f1c2d4e-0b1a-4c1e-9f0e-2a7d5b3c8e91",
         "user": "ana"}
METRICS = {"sharpe": 1.234, "sortino": 1.9, "max_drawdown": -0.183, "cagr": 0.117, "trades": 1432,
           "win_rate": 0.541, "profit_factor": 1.33, "exposure": 0.62}


def env() -> dict[str, str]:
    """The commands' environment: no SOP_* but $SOP_TAIL_CACHE_BYTES (set it huge to measure without the cache)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("SOP_") or k == "SOP_TAIL_CACHE_BYTES"}
    e.pop("NO_COLOR", None)
    return e


def sop(*args: str, root: Path, ok: tuple[int, ...] = (0,)) -> tuple[float, subprocess.CompletedProcess[str]]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, str(BIN / f"sop-{args[0]}"), "-C", str(root), *args[1:]],
                       capture_output=True, text=True, env=env())
    dt = time.perf_counter() - t
    if p.returncode not in ok:
        raise SystemExit(f"sop-{args[0]} failed ({p.returncode}): {p.stderr}")
    return dt, p


class Gen:
    """Writes segments, checkpoint and index exactly as wal.Writer would, without a process per record."""

    def __init__(self, root: Path) -> None:
        self.jdir = root / ".sop" / "journal"
        self.index_dir = root / ".sop" / "cache" / "index"
        self.cp_path = root / ".sop" / "checkpoint.json"
        self.index_dir.mkdir(parents=True, exist_ok=True)
        self.seq = 0
        self.hash = wal.GENESIS
        self.buf = bytearray()
        self.first = 1
        self.segments: list[wal.Segment] = []
        self.states: dict[str, wal.TxState] = {}
        self.ledger: dict[str, ledger.Entry] = {}
        self.t = datetime(2024, 1, 1, tzinfo=UTC)
        self.n = 0

    def rec(self, txid: str, type_: str, data: dict[str, Any]) -> None:
        if len(self.buf) >= wal.SEGMENT_BYTES:
            self.seal()
        self.seq += 1
        self.t += timedelta(seconds=7)
        body = wal.Body(seq=self.seq, txid=txid, type=type_, time=wal.fmt_time(self.t), user="ana",
                         host="bench-host", pid=5120, prev=self.hash, data=data)
        line = wal.encode_line(body)
        self.buf += line
        self.hash = wal.line_hash(line)
        rec = wal.Record(seq=self.seq, txid=txid, type=type_, time="", user="", host="", pid=0, prev="", data=data)
        wal.apply(self.states, rec)
        st = self.states[txid]
        op = ledger.op_of(rec, st.kind, st.strategy, st.run_id)
        if op is not None:
            ledger.apply_op(self.ledger, op)
        if st.state not in wal.OPEN_STATES:
            del self.states[txid]                     # as after a seal: only open ones are kept

    def seal(self) -> None:
        name = f"{self.first:016d}{wal.SEGMENT_SUFFIX}"
        data = bytes(self.buf)
        (self.jdir / name).write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        self.segments.append(wal.Segment(name=name, first=self.first, last=self.seq, bytes=len(data), sha256=digest))
        cp = wal.Checkpoint(seq=self.seq, hash=self.hash, segments=list(self.segments), open=dict(self.states))
        ledger.write(self.cp_path.parent, self.ledger, self.seq, self.hash)     # as a seal writes it, first
        self.cp_path.write_bytes(wal.msgspec.json.encode(cp))
        (self.index_dir / f"{name}.json").write_bytes(wal.msgspec.json.encode(wal.build_index(name, data, digest)))
        self.buf = bytearray()
        self.first = self.seq + 1

    def finish(self) -> None:
        name = f"{self.first:016d}{wal.SEGMENT_SUFFIX}"
        (self.jdir / name).write_bytes(bytes(self.buf))

    def txid(self) -> str:
        self.n += 1
        return f"tx-{self.t.strftime('%Y%m%dT%H%M%SZ')}-{self.n:06x}"

    def run(self, strategy: str, commit: bool) -> str:
        tx = self.txid()
        rid = f"{self.t.strftime('%Y%m%dT%H%M%SZ')}-{self.n:06x}"
        self.rec(tx, "begin", {"strategy": strategy, "run_id": rid, "owner": OWNER,
                               "strategy_dir": f"backtests/{strategy}", "run_dir": f"runs/{rid}"})
        self.rec(tx, "mkdir", {"path": f"backtests/{strategy}"})
        self.rec(tx, "mkdir", {"path": f"runs/{rid}"})
        if commit:
            row = {**METRICS, "strategy": strategy, "runid": rid, "txid": tx, "committedat": wal.fmt_time(self.t)}
            self.rec(tx, "decide", {"row": row})
            self.rec(tx, "append", {"row": row, "sheet": "backtests/Strategy_Master_Filter.xlsx"})
            self.rec(tx, "committed", {"row_number": self.n + 1})
        else:
            stamp = self.t.strftime("%Y%m%dT%H%M%SZ")
            self.rec(tx, "rollback", {"reason": "command exited 1", "delete": False})
            self.rec(tx, "rename", {"src": f"backtests/{strategy}", "dst": f"backtests/{strategy}_FAILED_{stamp}"})
            self.rec(tx, "rename", {"src": f"runs/{rid}", "dst": f"runs/{rid}_FAILED_{stamp}"})
            self.rec(tx, "aborted", {})
        return rid

    def sweep(self, strategy: str, run_id: str, path: str | None = None) -> None:
        tx = self.txid()
        path = path or f"backtests/{strategy}"
        steps = [{"op": "remove_row", "row_number": 7, "strategy": strategy, "run_id": run_id},
                 {"op": "delete", "path": path, "finding": "zombie_folder"}]
        self.rec(tx, "plan", {"steps": steps, "owner": OWNER, "zombie_action": "delete", "sweep": 1})
        self.rec(tx, "remove_row", {"step": 0, "row_number": 7, "strategy": strategy, "run_id": run_id,
                                    "values": {"Strategy": strategy, "RunID": run_id, "Sharpe": 0.4}})
        self.rec(tx, "delete", {"step": 1, "path": path, "files": [["run_metadata.json", 412], ["equity.csv", 90210]],
                                "finding": "zombie_folder"})
        self.rec(tx, "done", {"steps": 2, "skipped": {}})


def build(root: Path, records: int) -> tuple[int, int]:
    g = Gen(root)
    marks = {int(records * f): what for f, what in ((0.02, "abort"), (0.5, "commit"), (0.7, "sweep"),
                                                     (0.93, "commit2"), (0.97, "purge"))}
    pending = sorted(marks)
    target_runs: dict[str, str] = {}
    i = 0
    # fill up to a nearly full newest segment: stop when the records are written and the active
    # segment is at least 90 % full (the worst case a writer reads)
    while g.seq < records or len(g.buf) < 0.9 * wal.SEGMENT_BYTES:
        if pending and g.seq >= pending[0]:
            what = marks[pending.pop(0)]
            if what == "abort":
                target_runs["aborted"] = g.run(TARGET, commit=False)
            elif what in ("commit", "commit2"):
                target_runs[what] = g.run(TARGET, commit=True)
            elif what == "sweep":
                g.sweep(TARGET, target_runs["commit"])
            else:
                g.sweep(TARGET, target_runs["aborted"], path=f"runs/{target_runs['aborted']}_FAILED_x")
            continue
        i += 1
        r = i % 20
        if r == 19:
            g.sweep(f"S{i - 7}", f"R{i - 7}")
        else:
            g.run(f"S{i}", commit=r < 14)
    g.finish()
    # the sheet holds every row the journal committed (as a real workspace's does), so that the lost-row
    # check of sop-status and sop-recover compares like with like instead of listing every row as lost
    from journal import xlsx
    rows = [{1: e.strategy, 2: e.run_id} for e in sorted(g.ledger.values(), key=lambda e: e.seq)]
    xlsx.append_rows(root / "backtests" / "Strategy_Master_Filter.xlsx", None, rows)
    return g.seq, len(g.segments) + 1


def timed(cmd: list[str], root: Path, repeat: int, *, vary: bool = False) -> list[float]:
    times = []
    for k in range(repeat + 1):
        args = [a.replace("{k}", str(k)) for a in cmd] if vary else cmd
        dt, _ = sop(*args, root=root)
        if k:
            times.append(dt)
    return times


def commits(root: Path, repeat: int, tag: str) -> list[float]:
    """``sop-commit`` of a run begun (untimed) with its metadata written, ``repeat`` times after a warm-up."""
    times = []
    for k in range(repeat + 1):
        _, p = sop("begin", "--strategy", f"{tag}{k}", "--json", "--owner-pid", str(os.getpid()), root=root)
        tx = json.loads(p.stdout)
        Path(tx["strategy_dir"], "run_metadata.json").write_text(json.dumps({"run_id": tx["run_id"]}))
        dt, _ = sop("commit", tx["txid"], root=root)
        if k:
            times.append(dt)
    return times


def machine() -> str:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model or platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the workspace and print where it is")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sop-bench-journal-"))
    try:
        root = tmp / "ws"
        root.mkdir()
        subprocess.run([sys.executable, str(BIN / "sop-init"), "-C", str(root)], check=True, capture_output=True,
                       env=env())
        empty = timed(["begin", "--strategy", "Empty{k}", "--owner-pid", str(os.getpid())], root, args.repeat,
                      vary=True)
        shutil.rmtree(root / ".sop" / "journal")
        for d in ("backtests", "runs"):
            for p in (root / d).iterdir():
                if p.is_dir():
                    shutil.rmtree(p)
        (root / ".sop" / "journal").mkdir()
        t = time.perf_counter()
        n, segs = build(root, args.records)
        size = sum(p.stat().st_size for p in (root / ".sop" / "journal").iterdir())
        active = max((root / ".sop" / "journal").iterdir()).stat().st_size
        print(f"built {n:,} records in {segs} segments ({size / 2**20:.0f} MiB; newest {active / 2**20:.1f} MiB) "
              f"in {time.perf_counter() - t:.1f} s")

        recover = timed(["recover"], root, args.repeat)
        _, p = sop("recover", "--json", root=root)
        assert not json.loads(p.stdout)["actions"], p.stdout
        begins = timed(["begin", "--strategy", "Bench{k}", "--owner-pid", str(os.getpid())], root, args.repeat,
                       vary=True)
        logs = timed(["log", "--strategy", TARGET, "--json"], root, args.repeat)
        _, p = sop("log", "--strategy", TARGET, "--json", root=root)
        life = json.loads(p.stdout)["transactions"]
        assert len(life) == 5, [t["txid"] for t in life]
        one = timed(["log", life[2]["txid"]], root, args.repeat)
        shutil.rmtree(root / ".sop" / "cache")
        cold, _ = sop("log", "--strategy", TARGET, "--json", root=root)      # reads and indexes every segment
        status = timed(["status"], root, args.repeat)
        # sop-commit against the fullness of the active segment and the history's length: the same
        # sheet (a copy of this one's, ~114,000 rows) adopted by a workspace whose journal is empty
        base = tmp / "base"
        (base / "backtests").mkdir(parents=True)
        shutil.copy2(root / "backtests" / "Strategy_Master_Filter.xlsx", base / "backtests")
        subprocess.run([sys.executable, str(BIN / "sop-init"), "-C", str(base)], check=True, capture_output=True,
                       env=env())
        commit_empty = commits(base, args.repeat, "Base")
        commit_full = commits(root, args.repeat, "Full")
        fsck_t, p = sop("fsck", "--json", root=root)
        doc = json.loads(p.stdout)
        assert doc["ok"] and doc["records"] >= n, doc["damage"]

        def m(xs: list[float]) -> str:
            return f"{statistics.median(xs):.3f} s (max {max(xs):.3f})"
        print()
        print(f"{datetime.now(UTC):%Y-%m-%d}, {machine()}")
        print(f"journal: {n:,} records, {segs} segments of {wal.SEGMENT_BYTES / 2**20:.0f} MiB, "
              f"{size / 2**20:.0f} MiB; newest segment {active / 2**20:.1f} MiB; sheet: the committed rows")
        print()
        print(f"| measure (whole process, median of {args.repeat}) | result | target |")
        print("|---|---|---|")
        print(f"| sop-recover, nothing open | {m(recover)} | <= 0.5 s |")
        print(f"| sop-begin | {m(begins)} | <= 0.5 s |")
        print(f"| sop-begin on an empty journal (baseline) | {m(empty)} | |")
        print(f"| sop-commit, nearly full segment, {n:,} records of history | {m(commit_full)} | |")
        print(f"| sop-commit, the same sheet, an empty journal (baseline) | {m(commit_empty)} | |")
        print(f"| ratio full / empty | {statistics.median(commit_full) / statistics.median(commit_empty):.2f} x "
              f"| <= 1.1 x |")
        print(f"| sop-log --strategy {TARGET} ({len(life)} transactions over the whole history) | {m(logs)} | <= 2 s |")
        print(f"| sop-log TXID | {m(one)} | |")
        print(f"| sop-log --strategy after deleting .sop/cache/ (reads and re-indexes every segment; once) "
              f"| {cold:.1f} s | |")
        print(f"| sop-status | {m(status)} | |")
        print(f"| sop-fsck, every record (once) | {fsck_t:.1f} s | |")
    finally:
        if args.keep:
            print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
