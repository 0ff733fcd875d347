"""The PostgreSQL journal store across "hosts" (Linux namespaces sharing one workspace folder).

Every host sees only its own pids and has its own name; the workspace and the
server's Unix socket are shared, as a cluster shares a drive and a database.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from cluster.hosts import Host

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "bin"
PY = sys.executable


def env_for(ws: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("SOP_")}
    return {**keep, "PYTHONPATH": str(ROOT), "SOP_ROOT": str(ws), "SOP_KEEPER_POLL": "0.2"}


def cmd(name: str, *args: str) -> list[str]:
    return [PY, str(BIN / name), *args]


def sop_here(ws: Path, name: str, *args: str, code: int | None = 0) -> Any:
    """A command run on the test's own host."""
    import subprocess
    r = subprocess.run(cmd(name, *args), env=env_for(ws), capture_output=True, text=True, timeout=120)
    if code is not None:
        assert r.returncode == code, f"{name} {args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def make_ws(tmp_path: Path, dsn: str) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    sop_here(ws, "sop-init", "--store", "postgresql", "--dsn", dsn)
    return ws


def sheet_rows(ws: Path) -> list[tuple[str, str]]:
    wb = openpyxl.load_workbook(ws / "backtests" / "Strategy_Master_Filter.xlsx", read_only=True)
    ws0 = wb.worksheets[0]
    rows = [(str(r[0]), str(r[1])) for r in ws0.iter_rows(min_row=2, values_only=True) if r[0] is not None]
    wb.close()
    return rows


def open_txs(ws: Path) -> list[dict[str, Any]]:
    return json.loads(sop_here(ws, "sop-status", "--json").stdout)["transactions"]


# A backtest that writes what the commit gate wants, then waits for a file before it ends (so a test holds it live).
RUN_BODY = ("import json, os, sys, time, pathlib\n"
            "d = pathlib.Path(os.environ['SOP_STRATEGY_DIR'])\n"
            "(d / 'run_metadata.json').write_text(json.dumps({'run_id': os.environ['SOP_RUN_ID'],"
            " 'strategy': os.environ['SOP_STRATEGY']}))\n"
            "gate = sys.argv[1] if len(sys.argv) > 1 else ''\n"
            "while gate and not os.path.exists(gate): time.sleep(0.05)\n")


def run_cmd(strategy: str, gate: str = "") -> list[str]:
    return cmd("sop-run", "--strategy", strategy, "--", PY, "-c", RUN_BODY, *([gate] if gate else []))


# Each racer: for each round, wait until every racer is ready, then try to begin the round's strategy.
RACER = """
import json, os, sys, time, pathlib
import journal
from journal.errors import Refused
barrier, me, n, rounds = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
out = []
for r in range(rounds):
    (barrier / f"{r}.{me}").touch()
    while len([p for p in barrier.iterdir() if p.name.startswith(f"{r}.")]) < n:
        time.sleep(0.002)
    try:
        b = journal.begin(f"race{r}", root=os.environ["SOP_ROOT"])
        out.append([r, "won", b.txid])
    except Refused as e:
        out.append([r, "refused", str(e).splitlines()[0]])
print(json.dumps(out))
sys.stdout.flush()
(barrier / f"done.{me}").touch()
while not (barrier / "exit").exists():     # hold the leases of the won runs until the test has looked
    time.sleep(0.05)
"""


def test_racing_begins_one_winner_each(tmp_path: Path, pg_db: str, hosts: Callable[..., Host]) -> None:
    """3 hosts x 4 processes race for 50 strategies: exactly one winner each, no stray open transaction."""
    ws = make_ws(tmp_path, pg_db)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    rounds, n = 50, 12
    hs = [hosts(f"h{i}") for i in range(3)]
    procs = [hs[i % 3].spawn([PY, "-c", RACER, str(barrier), str(i), str(n), str(rounds)], env=env_for(ws))
             for i in range(n)]
    deadline = time.monotonic() + 240
    while len(list(barrier.glob("done.*"))) < n:
        assert time.monotonic() < deadline, "the racers did not finish"
        assert all(p.poll() in (None, 0) for p in procs), [p.stderr for p in procs if p.poll()]
        time.sleep(0.1)
    results = [json.loads(p.stdout) for p in procs]
    winners: dict[int, list[str]] = {}
    for res in results:
        for r, what, detail in res:
            if what == "won":
                winners.setdefault(r, []).append(detail)
            else:
                assert "race" in detail and ("held by" in detail or "already" in detail), detail
    assert sorted(winners) == list(range(rounds))
    assert all(len(w) == 1 for w in winners.values()), {r: w for r, w in winners.items() if len(w) != 1}
    txs = open_txs(ws)
    assert sorted(t["txid"] for t in txs) == sorted(w[0] for w in winners.values())
    assert all(t["alive"] is True and not t["abandoned"] for t in txs), txs
    # while the racers live, no host may roll their runs back, however young the age limit
    out = hs[0].run(cmd("sop-recover", "--older-than", "0s"), env=env_for(ws))
    assert out.returncode == 0, out.stderr
    assert len(open_txs(ws)) == rounds
    (barrier / "exit").touch()
    for p in procs:
        assert p.wait(30) == 0
    # the racers are gone: their leases are free, so any host sees the runs abandoned at once
    txs = open_txs(ws)
    assert len(txs) == rounds and all(t["abandoned"] for t in txs), txs
    r = hs[1].run(cmd("sop-recover"), env=env_for(ws))
    assert r.returncode == 0, r.stderr
    assert open_txs(ws) == []
    sop_here(ws, "sop-fsck")


def test_sixty_runs_across_hosts(tmp_path: Path, pg_db: str, hosts: Callable[..., Host]) -> None:
    """60 concurrent sop-runs on 3 hosts: all exit 0, 60 rows, each once, and the journal verifies."""
    ws = make_ws(tmp_path, pg_db)
    hs = [hosts(f"node{i}") for i in range(3)]
    t0 = time.monotonic()
    procs = [(f"s{i:02d}", hs[i % 3].spawn(run_cmd(f"s{i:02d}"), env=env_for(ws))) for i in range(60)]
    for name, p in procs:
        assert p.wait(300) == 0, f"{name}: {p.stdout}\n{p.stderr}"
    took = time.monotonic() - t0
    rows = sheet_rows(ws)
    assert sorted(r[0] for r in rows) == [f"s{i:02d}" for i in range(60)]
    assert len({r[1] for r in rows}) == 60
    assert open_txs(ws) == []
    fsck = sop_here(ws, "sop-fsck", "--json")
    assert json.loads(fsck.stdout)["records"] > 60 * 5
    print(f"60 runs on 3 hosts: {took:.1f} s")


def test_host_killed_whole(tmp_path: Path, pg_db: str, hosts: Callable[..., Host]) -> None:
    """A host dies whole: the others see its runs abandoned at once; a live run elsewhere is never touched."""
    ws = make_ws(tmp_path, pg_db)
    a, b, c = hosts("a"), hosts("b"), hosts("c")
    gate = tmp_path / "gate"
    on_a = [a.spawn(run_cmd(f"a{i}", str(gate)), env=env_for(ws)) for i in range(3)]
    script = (f"tx=$({PY} {BIN / 'sop-begin'} --strategy abegun --owner-pid $$) && echo $tx && "
              f"while [ ! -e {gate} ]; do sleep 0.1; done")
    on_a.append(a.spawn(["sh", "-c", script], env=env_for(ws)))
    live = b.spawn(run_cmd("blive", str(gate)), env=env_for(ws))
    deadline = time.monotonic() + 60
    while len(open_txs(ws)) < 5:
        assert time.monotonic() < deadline, open_txs(ws)
        time.sleep(0.1)
    assert all(not t["abandoned"] for t in open_txs(ws))
    a.kill()
    assert all(p.poll() is not None for p in on_a)
    t0 = time.monotonic()
    while True:
        txs = {t["strategy"]: t for t in open_txs(ws)}
        if all(txs[s]["abandoned"] for s in ("a0", "a1", "a2", "abegun")):
            break
        assert time.monotonic() - t0 < 10, txs
        time.sleep(0.1)
    seen = time.monotonic() - t0
    assert not txs["blive"]["abandoned"] and txs["blive"]["alive"] is True
    r = c.run(cmd("sop-recover", "--older-than", "0s"), env=env_for(ws))
    assert r.returncode == 0, r.stdout + r.stderr
    left = open_txs(ws)
    assert [t["strategy"] for t in left] == ["blive"]
    gate.touch()
    assert live.wait(60) == 0, live.stderr
    assert [s for s, _ in sheet_rows(ws)] == ["blive"]
    backtests = sorted(p.name for p in (ws / "backtests").iterdir() if p.is_dir())
    assert "blive" in backtests and all(n.split("_FAILED_")[0] in ("a0", "a1", "a2", "abegun")
                                        for n in backtests if n != "blive")
    sop_here(ws, "sop-fsck")
    print(f"abandoned seen {seen:.2f} s after the power cut")


def test_same_host_name_does_not_roll_back_a_live_run(tmp_path: Path, pg_db: str,
                                                      hosts: Callable[..., Host]) -> None:
    """Two hosts with one name: a pid is never looked up in the wrong process table; the lease decides."""
    ws = make_ws(tmp_path, pg_db)
    one, two = hosts("twin"), hosts("twin")
    gate = tmp_path / "gate"
    p = one.spawn(run_cmd("twinrun", str(gate)), env=env_for(ws))
    deadline = time.monotonic() + 30
    while not open_txs(ws):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = two.run(cmd("sop-recover", "--older-than", "0s"), env=env_for(ws))
    assert r.returncode == 0, r.stderr
    assert [t["strategy"] for t in open_txs(ws)] == ["twinrun"]
    gate.touch()
    assert p.wait(60) == 0, p.stderr
    assert [s for s, _ in sheet_rows(ws)] == ["twinrun"]


@pytest.mark.parametrize("cut_at", [1, 2, 3])
def test_connection_cut_mid_commit_fails_closed(tmp_path: Path, pg_db: str, cut_at: int) -> None:
    """The server ends the session at the commit's k-th append: exit 5, nothing lost, sop-recover finishes."""
    ws = make_ws(tmp_path, pg_db)
    b = json.loads(sop_here(ws, "sop-begin", "--strategy", "cut", "--owner-pid", str(os.getpid()),
                            "--json").stdout)
    (ws / "backtests" / "cut" / "run_metadata.json").write_text(
        json.dumps({"run_id": b["run_id"], "strategy": "cut"}))
    import subprocess
    r = subprocess.run(cmd("sop-commit", b["txid"]), env={**env_for(ws), "SOP_PG_CUT_AT": str(cut_at)},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 5, r.stdout + r.stderr
    assert "session was lost" in r.stderr
    before = sheet_rows(ws)
    assert before in ([], [("cut", b["run_id"])])
    rec = sop_here(ws, "sop-recover", code=None)
    assert rec.returncode == 0, rec.stdout + rec.stderr
    st = open_txs(ws)
    state = json.loads(sop_here(ws, "sop-log", "--json", b["txid"]).stdout)
    last = state["transactions"][0]["state"] if "transactions" in state else None
    if sheet_rows(ws):
        assert sheet_rows(ws) == [("cut", b["run_id"])]
        assert (ws / "backtests" / "cut").is_dir()
    assert st == [] or st[0]["txid"] == b["txid"], st
    assert last in (None, "committed", "begun", "aborted"), state
    sop_here(ws, "sop-fsck")


def test_file_journal_moves_into_postgresql_chain_intact(tmp_path: Path, pg_db: str) -> None:
    """sop init --store postgresql on a used file workspace: every record moves, the chain verifies, runs go on."""
    ws = tmp_path / "ws"
    ws.mkdir()
    sop_here(ws, "sop-init")
    for s in ("m1", "m2"):
        r = sop_here(ws, "sop-run", "--strategy", s, "--", PY, "-c", RUN_BODY, code=None)
        assert r.returncode == 0, r.stderr
    before = json.loads(sop_here(ws, "sop-log", "--json").stdout)
    sop_here(ws, "sop-init", "--store", "postgresql", "--dsn", pg_db)
    assert not (ws / ".sop" / "journal").exists() and (ws / ".sop" / "journal.moved").is_dir()
    after = json.loads(sop_here(ws, "sop-log", "--json").stdout)
    assert after == before
    again = sop_here(ws, "sop-init", "--store", "postgresql")          # idempotent
    assert "record(s) of .sop/journal/" not in again.stdout
    r = sop_here(ws, "sop-run", "--strategy", "m3", "--", PY, "-c", RUN_BODY, code=None)
    assert r.returncode == 0, r.stderr
    assert [s for s, _ in sheet_rows(ws)] == ["m1", "m2", "m3"]
    fsck = json.loads(sop_here(ws, "sop-fsck", "--json").stdout)
    assert fsck["ok"] and fsck["records"] > before_records(before)


def before_records(log: dict[str, Any]) -> int:
    return max((r["seq"] for t in log.get("transactions", []) for r in t.get("records", [])), default=0)


@pytest.mark.parametrize("command", ["commit", "abort"])
def test_crash_at_every_point_with_the_postgresql_store(tmp_path: Path, pg_db: str, command: str) -> None:
    """Killed before each mutation (folder, sheet or database append), sop-recover leaves SPEC §7 true."""
    import subprocess

    def fresh(k: int) -> tuple[Path, dict[str, Any] | None]:
        base = tmp_path / f"k{k}"
        base.mkdir()
        import psycopg
        name = f"{pg_db.split('dbname=')[1].split()[0]}_{k}"
        with psycopg.connect(pg_db, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        dsn = psycopg.conninfo.make_conninfo(pg_db, dbname=name)
        ws = make_ws(base, dsn)
        if command == "begin":
            return ws, None
        b = json.loads(sop_here(ws, "sop-begin", "--strategy", "crash", "--owner-pid", str(os.getpid()),
                                "--json").stdout)
        (ws / "backtests" / "crash" / "run_metadata.json").write_text(
            json.dumps({"run_id": b["run_id"], "strategy": "crash"}))
        return ws, b

    def argv(b: dict[str, Any] | None) -> list[str]:
        if command == "begin":
            return cmd("sop-begin", "--strategy", "crash", "--owner-pid", str(os.getpid()))
        assert b is not None
        return cmd(f"sop-{command}", b["txid"])

    ws, b = fresh(0)
    trace = tmp_path / "trace"
    r = subprocess.run(argv(b), env={**env_for(ws), "SOP_TRACE_MUTATIONS": str(trace)}, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    points = trace.read_text().splitlines()
    assert any("postgresql:sop_journal" in p for p in points), points
    for k in range(1, len(points) + 1):
        ws, b = fresh(k)
        r = subprocess.run(argv(b), env={**env_for(ws), "SOP_CRASH_AT": str(k)}, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 137, (k, r.stderr)
        rec = sop_here(ws, "sop-recover", "--older-than", "0s", code=None)
        assert rec.returncode == 0, (k, rec.stdout, rec.stderr)
        fsck = sop_here(ws, "sop-fsck", code=None)
        assert fsck.returncode == 0, (k, fsck.stdout)
        rows = sheet_rows(ws)
        txs = open_txs(ws)
        if command == "begin":                     # the crashed begin's owner (this test) lives on
            assert not rows and len(txs) <= 1, (k, rows, txs)
            continue
        assert b is not None
        if rows:                                   # committed: its row once, both folders
            assert rows == [("crash", b["run_id"])], (k, rows)
            assert (ws / "backtests" / "crash").is_dir() and (ws / "runs" / b["run_id"]).is_dir()
        if command == "abort":                     # rolled back, or (killed before its decision) still live
            assert not rows, (k, rows)
            if txs:
                assert [(t["state"], t["alive"]) for t in txs] == [("begun", True)], (k, txs)
                assert (ws / "backtests" / "crash").is_dir()
            else:
                assert not (ws / "backtests" / "crash").exists()
        sweep = sop_here(ws, "sop-sweep", "--json", code=None)
        assert sweep.returncode == 0, (k, sweep.stdout)


def test_one_database_one_workspace(tmp_path: Path, pg_db: str) -> None:
    """A second workspace pointed at a used database is refused; a workspace whose dsn moves to it is damage."""
    a = make_ws(tmp_path, pg_db)
    r = sop_here(a, "sop-run", "--strategy", "only", "--", PY, "-c", RUN_BODY, code=None)
    assert r.returncode == 0, r.stderr
    b = tmp_path / "b"
    b.mkdir()
    sop_here(b, "sop-init")
    before = sorted(p.name for p in (b / ".sop").iterdir())
    r = sop_here(b, "sop-init", "--store", "postgresql", "--dsn", pg_db, code=1)
    assert "another workspace's journal" in r.stderr
    assert sorted(p.name for p in (b / ".sop").iterdir()) == before
    assert 'store = "files"' in (b / ".sop" / "config.toml").read_text()
    (a / ".sop" / "store-id").write_text("0123456789abcdef\n")       # as if dsn now named another's database
    r = sop_here(a, "sop-status", code=None)
    assert "is not this workspace's" in r.stdout + r.stderr
    r = sop_here(a, "sop-begin", "--strategy", "x", "--owner-pid", str(os.getpid()), code=5)
    assert not (a / "backtests" / "x").exists()


def test_checkpoints_keep_loading_short_and_the_ledger_exact(tmp_path: Path, pg_db: str) -> None:
    """Every few records a checkpoint row: a writer starts there, old ledgers are pruned, fsck checks them all."""
    ws = make_ws(tmp_path, pg_db)
    import subprocess
    env = {**env_for(ws), "SOP_PG_CHECKPOINT_RECORDS": "7"}
    for i in range(6):
        r = subprocess.run(run_cmd(f"cp{i}"), env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    import psycopg
    with psycopg.connect(pg_db) as c:
        cps = c.execute("SELECT seq, length(ledger) FROM sop_checkpoint ORDER BY seq").fetchall()
    assert len(cps) >= 4, cps
    assert all(n == 0 for _, n in cps[:-2]) and all(n > 0 for _, n in cps[-2:]), cps
    assert [s for s, _ in sheet_rows(ws)] == [f"cp{i}" for i in range(6)]
    fsck = json.loads(sop_here(ws, "sop-fsck", "--json").stdout)
    assert fsck["ok"] and fsck["checkpoint"]["checkpoints"] == len(cps)
    # the ledger as a writer sees it (newest checkpoint + records after it) holds every committed row
    st = json.loads(sop_here(ws, "sop-status", "--json").stdout)
    assert st["sheet"]["lost_rows"] == 0
    path = ws / "backtests" / "Strategy_Master_Filter.xlsx"      # a row lost by hand is found through the ledger
    wb = openpyxl.load_workbook(path)
    wb.worksheets[0].delete_rows(2)
    wb.save(path)
    st = json.loads(sop_here(ws, "sop-status", "--json").stdout)
    assert st["sheet"]["lost_rows"] == 1, st["sheet"]


def test_bad_store_settings_are_one_clear_error_and_change_nothing(tmp_path: Path, pg_db: str) -> None:
    """No dsn, a server that is not there, an empty database: exit 2, 6 and 5, each naming the fix."""
    ws = make_ws(tmp_path, pg_db)
    before = sorted(str(p.relative_to(ws)) for p in ws.rglob("*"))
    cfg = ws / ".sop" / "config.toml"
    good = cfg.read_text()
    cases = [
        ('dsn = ""', 2, "needs a connection string"),
        (f'dsn = "host={tmp_path}/nowhere dbname=x connect_timeout=2"', 6, "cannot be reached"),
        (f'dsn = "{pg_db.replace(pg_db.split("dbname=")[1].split()[0], "postgres")}"', 5, "holds no sop journal"),
    ]
    for line, code, words in cases:
        cfg.write_text("\n".join(line if ln.startswith("dsn =") else ln for ln in good.splitlines()) + "\n")
        r = sop_here(ws, "sop-begin", "--strategy", "x", "--owner-pid", str(os.getpid()), code=code)
        assert words in r.stderr, (line, r.stderr)
        assert "password" not in r.stderr
        assert sorted(str(p.relative_to(ws)) for p in ws.rglob("*")) == before
    cfg.write_text(good)
    r = sop_here(ws, "sop-init", "--dsn", pg_db, code=2)
    assert "--dsn goes with --store postgresql" in r.stderr
    r = sop_here(ws, "sop-init", "--store", "files", code=2)
    assert "does not move it back" in r.stderr


def test_the_move_waits_for_file_store_writers(tmp_path: Path, pg_db: str) -> None:
    """The move holds the file store's lock: with a writer holding it, it waits, then exits 6 and moves nothing."""
    import filelock
    ws = tmp_path / "ws"
    ws.mkdir()
    sop_here(ws, "sop-init")
    r = sop_here(ws, "sop-run", "--strategy", "w1", "--", PY, "-c", RUN_BODY, code=None)
    assert r.returncode == 0, r.stderr
    cfg = ws / ".sop" / "config.toml"
    cfg.write_text(cfg.read_text().replace("timeout_seconds = 30", "timeout_seconds = 1"))
    with filelock.FileLock(str(ws / ".sop" / "lock")):
        r = sop_here(ws, "sop-init", "--store", "postgresql", "--dsn", pg_db, code=6)
    assert 'store = "files"' in cfg.read_text() and (ws / ".sop" / "journal").is_dir()
    sop_here(ws, "sop-init", "--store", "postgresql", "--dsn", pg_db)
    assert [s for s, _ in sheet_rows(ws)] == ["w1"] and (ws / ".sop" / "journal.moved").is_dir()
    assert json.loads(sop_here(ws, "sop-fsck", "--json").stdout)["ok"]


def test_a_drifted_open_names_table_is_reported_and_rebuilt_by_recovery(tmp_path: Path, pg_db: str) -> None:
    """sop_open is derived from the journal: a stray or missing row is a fsck warning, and sop-recover rebuilds it."""
    import psycopg
    ws = make_ws(tmp_path, pg_db)
    b = json.loads(sop_here(ws, "sop-begin", "--strategy", "held", "--owner-pid", str(os.getpid()),
                            "--json").stdout)
    with psycopg.connect(pg_db, autocommit=True) as c:
        c.execute("INSERT INTO sop_open VALUES ('s:stray', 'tx-nobody')")
        c.execute("DELETE FROM sop_open WHERE txid = %s", (b["txid"],))
    fsck = json.loads(sop_here(ws, "sop-fsck", "--json").stdout)
    assert fsck["ok"] and any("sop_open" in w for w in fsck["warnings"]), fsck
    r = sop_here(ws, "sop-begin", "--strategy", "stray", "--owner-pid", str(os.getpid()), code=1)
    assert "held by an open transaction" in r.stderr and not (ws / "backtests" / "stray").exists()
    rec = sop_here(ws, "sop-recover", "--json")
    assert any(a["action"] == "rebuild sop_open" for a in json.loads(rec.stdout)["actions"])
    assert not json.loads(sop_here(ws, "sop-fsck", "--json").stdout)["warnings"]
    sop_here(ws, "sop-begin", "--strategy", "stray", "--owner-pid", str(os.getpid()))
    r = sop_here(ws, "sop-begin", "--strategy", "held", "--owner-pid", str(os.getpid()), code=1)
    assert "held by" in r.stderr
