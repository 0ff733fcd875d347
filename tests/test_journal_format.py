"""The journal's bytes (wal module docstring, sop-journal(5)) and how it grows.

The line format is checked against fixed bytes; the recipes of
sop-journal(5) are run as printed; and a journal spanning many segments,
with transactions open across seals, is driven through the CLI (in-process,
``$SOP_SEGMENT_BYTES`` applied per call by ``conftest.sop()``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FAST_CONFIG, ROOT, scrubbed_env, sop
from freezegun import freeze_time

from journal import wal, workspace

TXID = "tx-20260301T120000Z-1a2b3c"
BEGIN_DATA = {"strategy": "MA_Cross_10_50", "run_id": "20260301T120000Z-c92155",
              "owner": {"host": "ws1", "pid": 4242, "start": "81234", "boot": "6f1c2d4e-0b1a-4c1e-9f0e-2a7d5b3c8e91",
                        "user": "ana", "machine": "3f9a6c2e8d1b4e7a9c0d5b2e6f1a8c4d", "pidns": "pid:[4026531836]"},
              "strategy_dir": "backtests/MA_Cross_10_50", "run_dir": "runs/20260301T120000Z-c92155"}
LINE1 = (b'{"seq":1,"txid":"tx-20260301T120000Z-1a2b3c","type":"begin","time":"2026-03-01T12:00:00.123456Z",'
         b'"user":"ana","host":"ws1","pid":5120,'
         b'"prev":"0000000000000000000000000000000000000000000000000000000000000000",'
         b'"data":{"strategy":"MA_Cross_10_50","run_id":"20260301T120000Z-c92155",'
         b'"owner":{"host":"ws1","pid":4242,"start":"81234","boot":"6f1c2d4e-0b1a-4c1e-9f0e-2a7d5b3c8e91",'
         b'"user":"ana","machine":"3f9a6c2e8d1b4e7a9c0d5b2e6f1a8c4d","pidns":"pid:[4026531836]"},'
         b'"strategy_dir":"backtests/MA_Cross_10_50","run_dir":"runs/20260301T120000Z-c92155"},'
         b'"sum":"c43f9de1a89cb9e0a685eda58e5b6ad7ba2251d2609419e9aef21b14b90c6912"}\n')
LINE2 = (b'{"seq":2,"txid":"tx-20260301T120000Z-1a2b3c","type":"mkdir","time":"2026-03-01T12:00:00.123456Z",'
         b'"user":"ana","host":"ws1","pid":5120,'
         b'"prev":"d1bb77ff4cdb78fb794bb6352a6134a61ed6c37c142f809d5892afca4c251b14",'
         b'"data":{"path":"backtests/MA_Cross_10_50"},'
         b'"sum":"ad2cbd7bafe52c43818deafaee4a32c49226f0ece61d789c21e7836bff0f9ee2"}\n')
MAN5 = ROOT / "man" / "sop-journal.5"


def bare_ws(root: Path) -> workspace.Workspace:
    (root / ".sop" / "journal").mkdir(parents=True)
    return workspace.open_workspace(root)


# ---------------------------------------------------------------- the line, against fixed bytes

def test_writer_writes_the_documented_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = bare_ws(tmp_path)
    monkeypatch.setattr(wal, "username", lambda: "ana")
    monkeypatch.setattr(wal, "hostname", lambda: "ws1")
    monkeypatch.setattr(os, "getpid", lambda: 5120)
    with freeze_time("2026-03-01 12:00:00.123456"):
        w = wal.Writer(ws)
        w.append(TXID, "begin", BEGIN_DATA)
        w.append(TXID, "mkdir", {"path": "backtests/MA_Cross_10_50"})
    assert (ws.journal_dir / "0000000000000001.jsonl").read_bytes() == LINE1 + LINE2
    assert os.listdir(ws.journal_dir) == ["0000000000000001.jsonl"]


def test_encode_line_is_the_documented_bytes() -> None:
    body = wal.Body(seq=1, txid=TXID, type="begin", time="2026-03-01T12:00:00.123456Z", user="ana", host="ws1",
                     pid=5120, prev=wal.GENESIS, data=BEGIN_DATA)
    assert wal.encode_line(body) == LINE1


def test_sum_and_prev_are_plain_byte_slices() -> None:
    line = LINE1.rstrip(b"\n")
    assert line[-wal.SUM_SUFFIX:].startswith(b',"sum":"') and len(line[-wal.SUM_SUFFIX:]) == 74
    assert hashlib.sha256(line[:-74] + b"}").hexdigest() == json.loads(line)["sum"]
    assert json.loads(LINE2)["prev"] == hashlib.sha256(line).hexdigest() == wal.line_hash(LINE1)
    assert list(json.loads(line)) == ["seq", "txid", "type", "time", "user", "host", "pid", "prev", "data", "sum"]


@pytest.mark.parametrize("pos", [2, 10, 60, 120, 200, 300, -80, -40, -3])
def test_any_changed_byte_fails_verification(pos: int) -> None:
    line = bytearray(LINE1.rstrip(b"\n"))
    assert wal.verify_line(bytes(line)) is not None
    line[pos] = ord("0") if line[pos] != ord("0") else ord("1")
    assert wal.verify_line(bytes(line)) is None


def test_time_is_utc_with_microseconds() -> None:
    from datetime import datetime, timedelta, timezone
    t = datetime(2026, 3, 1, 13, 0, 0, 5, tzinfo=timezone(timedelta(hours=1)))
    assert wal.fmt_time(t) == "2026-03-01T12:00:00.000005Z"
    assert wal.parse_time("2026-03-01T12:00:00.000005Z") == t


# ---------------------------------------------------------------- segments, checkpoint, index

def test_segments_checkpoint_and_index_formats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = bare_ws(tmp_path)
    monkeypatch.setattr(wal, "SEGMENT_BYTES", 1000)
    w = wal.Writer(ws)
    for i in range(12):
        tx = f"tx-20260301T120000Z-{i:06x}"
        w.append(tx, "begin", {"strategy": f"S{i}", "run_id": f"R{i}", "owner": BEGIN_DATA["owner"]})
        w.append(tx, "mkdir", {"path": f"backtests/S{i}"})
        if i % 3:
            w.append(tx, "rollback", {"reason": "test", "delete": False})
            w.append(tx, "rename", {"src": f"backtests/S{i}", "dst": f"backtests/S{i}_FAILED_20260301T120000Z"})
            w.append(tx, "aborted", {})
    segs = wal.segment_files(ws.journal_dir)
    assert len(segs) >= 5
    seq = 0
    for p in segs:
        lines = p.read_bytes().splitlines()
        assert p.name == f"{seq + 1:016d}.jsonl" and json.loads(lines[0])["seq"] == seq + 1
        seq += len(lines)
    for p in segs[:-1]:
        assert p.stat().st_size >= 1000                     # rotated only after passing SEGMENT_BYTES
    cp = json.loads(ws.checkpoint_path.read_bytes())
    assert list(cp) == ["version", "seq", "hash", "segments", "open", "sheet_fp"] and cp["version"] == 1
    fps = [r.data["sheet_fp"] for r in wal.iter_records(ws) if r.seq <= cp["seq"] and "sheet_fp" in r.data]
    assert cp["sheet_fp"] == (fps[-1] if fps else "")        # the newest a covered record carries
    assert [s["name"] for s in cp["segments"]] == [p.name for p in segs[:-1]]
    for s, p in zip(cp["segments"], segs, strict=False):
        data = p.read_bytes()
        assert list(s) == ["name", "first", "last", "bytes", "sha256"]
        assert (s["bytes"], s["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        assert s["last"] == json.loads(data.splitlines()[-1])["seq"]
    last = segs[-2].read_bytes().splitlines()[-1]
    assert cp["seq"] == json.loads(last)["seq"] and cp["hash"] == hashlib.sha256(last).hexdigest()
    replayed: dict[str, wal.TxState] = {}
    for rec in wal.iter_records(ws):
        if rec.seq <= cp["seq"]:
            wal.apply(replayed, rec)
    open_then = {t: v for t, v in replayed.items() if v.state in wal.OPEN_STATES}
    assert open_then and set(cp["open"]) == set(open_then)         # the open transactions at the seal
    for name, st in cp["open"].items():
        assert st == json.loads(wal.msgspec.json.encode(open_then[name]))
    for s in cp["segments"]:
        idx = json.loads((ws.cache_dir / "index" / f"{s['name']}.json").read_bytes())
        assert list(idx) == ["version", "segment", "bytes", "sha256", "txids", "runs"]
        assert (idx["segment"], idx["bytes"], idx["sha256"]) == (s["name"], s["bytes"], s["sha256"])
        recs = [json.loads(ln) for ln in (ws.journal_dir / s["name"]).read_bytes().splitlines()]
        assert set(idx["txids"]) == {r["txid"] for r in recs}
        for tx, keys in idx["txids"].items():
            naming = [r for r in recs if r["txid"] == tx and r["type"] in ("begin", "rename")]
            assert keys == ([f"s{int(tx[-6:], 16)}"] if naming else [])


def test_index_names_what_sweeps_touch() -> None:
    named = wal.named
    assert named("begin", {"strategy": "Alpha", "run_id": "R1"}) == ({"alpha"}, set())
    assert named("plan", {"steps": [{"op": "remove_row", "row_number": 3, "strategy": "Beta", "run_id": "R2"},
                                    {"op": "delete", "path": "backtests/Gamma_FAILED_20260301T120000Z-2"},
                                    {"op": "rename", "src": "runs/R9", "dst": "runs/R9_FAILED_20260301T120000Z"}],
                          "owner": {"host": "h"}}) == ({"beta", "gamma"}, {"r2", "r9"})
    assert named("remove_row", {"row_number": 3, "values": {"Strategy": "Ä", "Run ID": 123.0}}) == ({"ä"}, {"123"})
    assert named("delete", {"path": "backtests/Delta", "files": [["backtests/Nope", 1]]}) == ({"delta"}, set())
    assert named("mkdir", {"path": "backtests/Epsilon"}) == (set(), set())        # a run's own: its begin names it


# ---------------------------------------------------------------- sop-journal(5): the example and the recipes

def _block(name: str) -> list[str]:
    """The lines of sop-journal(5) between '.\\" NAME begins' and '.\\" NAME ends', roff escapes undone."""
    src = MAN5.read_text(encoding="utf-8").splitlines()
    start = src.index(f'.\\" {name} begins')
    end = src.index(f'.\\" {name} ends')
    return [ln.replace("\\-", "-").replace("\\e", "\\").replace("\\(aq", "'") for ln in src[start + 1:end]]


def test_man_page_example_record_is_the_real_bytes() -> None:
    assert "".join(_block("example record")).encode() + b"\n" == LINE1


@pytest.fixture
def journal_ws(tmp_path: Path) -> Iterator[Path]:
    """A workspace with a few commands' journal across sealed segments (through the CLI)."""
    root = tmp_path / "ws"
    root.mkdir()
    env = scrubbed_env(SOP_SEGMENT_BYTES="1500")
    sop("init", "-C", str(root), env=env)
    (root / ".sop" / "config.toml").write_text(FAST_CONFIG)
    for i in range(4):
        tx = json.loads(sop("begin", "-C", str(root), "--strategy", f"S{i}", "--json", env=env).stdout)
        sop("abort", "-C", str(root), tx["txid"], env=env)
    assert len(list((root / ".sop" / "journal").iterdir())) >= 3
    yield root


def _shell(root: Path, commands: list[str]) -> list[str]:
    """Run recipe lines ('$ ...') in the workspace root with bash; the output of each."""
    outs = []
    for c in commands:
        assert c.startswith("$ ")
        p = subprocess.run(["bash", "-c", f"set -o pipefail; {c[2:]}"], cwd=root, capture_output=True, text=True)
        assert p.returncode == 0, f"{c}: {p.stderr}"
        outs.append(p.stdout.strip())
    return outs


needs_tools = pytest.mark.skipif(any(subprocess.run(["which", t], capture_output=True).returncode
                                     for t in ("jq", "sha256sum", "bash")), reason="needs jq, sha256sum and bash")


@needs_tools
def test_man_page_sum_recipe(journal_ws: Path) -> None:
    _, mine, theirs = _shell(journal_ws, _block("recipe sum"))
    assert re.fullmatch(r"[0-9a-f]{64}", mine) and mine == theirs
    seg = journal_ws / ".sop" / "journal" / "0000000000000001.jsonl"
    lines = seg.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"seq":3', b'"seq":9')                     # the recipe sees an edit
    seg.write_bytes(b"".join(lines))
    _, mine, theirs = _shell(journal_ws, _block("recipe sum"))
    assert mine != theirs


@needs_tools
def test_man_page_prev_recipe(journal_ws: Path) -> None:
    mine, theirs = _shell(journal_ws, _block("recipe prev"))
    assert re.fullmatch(r"[0-9a-f]{64}", mine) and mine == theirs


@needs_tools
def test_man_page_checkpoint_recipe(journal_ws: Path) -> None:
    (out,) = _shell(journal_ws, _block("recipe checkpoint"))
    cp = json.loads((journal_ws / ".sop" / "checkpoint.json").read_bytes())
    assert out.count(": OK") == len(cp["segments"]) >= 2
    seg = journal_ws / ".sop" / "journal" / cp["segments"][0]["name"]
    seg.write_bytes(seg.read_bytes().replace(b'"seq":1,', b'"seq":7,', 1))
    p = subprocess.run(["bash", "-c", _block("recipe checkpoint")[0][2:]], cwd=journal_ws, capture_output=True,
                       text=True)
    assert p.returncode != 0 and "FAILED" in p.stdout


def test_man_page_python_verifier(journal_ws: Path, tmp_path: Path) -> None:
    script = _block("verify.py")
    assert len(script) == 10
    path = tmp_path / "verify.py"
    path.write_text("\n".join(script) + "\n")
    last = sop("fsck", "-C", str(journal_ws), "--json").stdout
    n = json.loads(last)["records"]
    p = subprocess.run([sys.executable, str(path), str(journal_ws)], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == f"{n} records verify", p.stderr
    segs = sorted((journal_ws / ".sop" / "journal").iterdir())
    lines = segs[1].read_bytes().splitlines(keepends=True)
    del lines[1]                                                           # a record removed
    segs[1].write_bytes(b"".join(lines))
    p = subprocess.run([sys.executable, str(path), str(journal_ws)], capture_output=True, text=True)
    assert p.returncode != 0 and f"{segs[1].name}: damaged at record" in p.stderr


# ---------------------------------------------------------------- growth: many segments, open across seals

@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def test_growth_across_many_segments(tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    env = scrubbed_env(SOP_SEGMENT_BYTES="1200")
    sop("init", "-C", str(root), env=env)
    (root / ".sop" / "config.toml").write_text(FAST_CONFIG)

    def cli(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        return sop(args[0], "-C", str(root), *args[1:], code=code, env=env)

    def begin(name: str, owner: int) -> dict[str, str]:
        return json.loads(cli("begin", "--strategy", name, "--owner-pid", str(owner), "--json").stdout)

    live = subprocess.Popen(["sleep", "600"])
    doomed = subprocess.Popen(["sleep", "600"])
    sleepers += [live, doomed]
    held = begin("Held", live.pid)                         # open across every seal below
    gone = begin("Gone", doomed.pid)
    committed = []
    for i in range(6):                                     # history: begin, commit and abort, many seals
        tx = begin(f"S{i}", live.pid)
        if i % 2:
            cli("abort", tx["txid"])
        else:
            (root / "backtests" / f"S{i}" / "run_metadata.json").write_text(json.dumps({"run_id": tx["run_id"]}))
            cli("commit", tx["txid"])
            committed.append(tx["txid"])
    segs = sorted((root / ".sop" / "journal").iterdir())
    cp = json.loads((root / ".sop" / "checkpoint.json").read_bytes())
    assert len(segs) >= 8 and len(cp["segments"]) == len(segs) - 1
    assert {held["txid"], gone["txid"]} <= set(cp["open"])                  # carried across the seals
    assert json.loads(segs[0].read_bytes().splitlines()[0])["txid"] == held["txid"]

    # writers read the checkpoint and the active segment only: the oldest sealed segment, garbled to the same
    # size, does not stop them (sop-fsck catches it below); they still see the transactions opened in it
    oldest = segs[0]
    good = oldest.read_bytes()
    oldest.write_bytes(b"#" * len(good))
    status = json.loads(cli("status", "--json").stdout)
    assert {t["txid"] for t in status["transactions"]} >= {held["txid"], gone["txid"]}
    cli("begin", "--strategy", "held", code=1)                            # the open one still holds its name
    assert "already committed" in cli("commit", committed[-1]).stderr    # found through the index, not a replay
    cli("log", "--strategy", "S4")
    cli("log", code=5)
    doc = json.loads(cli("fsck", "--json", code=5).stdout)
    assert doc["damage"]["segment"] == oldest.name and doc["damage"]["line"] == 1
    oldest.write_bytes(good)

    (root / "backtests" / "Held" / "run_metadata.json").write_text(json.dumps({"run_id": held["run_id"]}))
    cli("commit", held["txid"])                                           # begun in segment 1, committed now
    doomed.kill()
    doomed.wait()
    rec = json.loads(cli("recover", "--json").stdout)
    assert [(a["action"], a["txid"], a["done"]) for a in rec["actions"]] == [("roll back", gone["txid"], True)]
    assert (root / "backtests").is_dir() and not (root / "backtests" / "Gone").exists()
    assert "already committed" in cli("commit", committed[0]).stderr
    life = json.loads(cli("log", "--strategy", "gone", "--json").stdout)["transactions"]
    assert [t["state"] for t in life] == ["aborted"]
    seqs = [r["seq"] for r in life[0]["records"]]
    assert seqs[0] <= 6 < seqs[-1]                                        # its records span many segments
    fsck = json.loads(cli("fsck", "--json").stdout)
    segs = sorted((root / ".sop" / "journal").iterdir())
    assert fsck["ok"] and fsck["damage"] is None and fsck["torn"] is None
    assert [s["name"] for s in fsck["segments"]] == [p.name for p in segs]
    assert all(s["digest"] == "ok" for s in fsck["segments"][:-1]) and len(segs) >= 9
    assert fsck["records"] == sum(len(p.read_bytes().splitlines()) for p in segs)
