"""Review findings on the PostgreSQL store: each test failed before its fix (see the commit messages)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from cluster.test_pgstore import BIN, PY, cmd, env_for, make_ws, open_txs, run_cmd, sheet_rows, sop_here


def _sop_sessions(dsn: str) -> int:
    """End every session sop has open on the test's database, as a server restart or a cut network does."""
    import psycopg
    db = dsn.split("dbname=")[1].split()[0]
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                         "WHERE datname = %s AND application_name = 'sop'", (db,)).fetchone()[0]


def test_workspace_lock_timeout_is_busy_not_a_lost_session(tmp_path: Path, pg_db: str) -> None:
    """Another process holds the workspace lock past [lock] timeout_seconds: exit 6 (busy), not 5 (damage)."""
    import psycopg
    ws = make_ws(tmp_path, pg_db)
    cfg = ws / ".sop" / "config.toml"
    cfg.write_text(cfg.read_text().replace("timeout_seconds = 30", "timeout_seconds = 1"))
    with psycopg.connect(pg_db, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(7565168, 1)")
        r = sop_here(ws, "sop-begin", "--strategy", "x", "--owner-pid", str(os.getpid()), code=None)
    assert r.returncode == 6, r.stderr
    assert "busy" in r.stderr and "session was lost" not in r.stderr
    assert not (ws / "backtests" / "x").exists()
    sop_here(ws, "sop-begin", "--strategy", "x", "--owner-pid", str(os.getpid()))   # and it works once free


def test_cut_sessions_do_not_roll_back_live_runs(tmp_path: Path, pg_db: str) -> None:
    """Every sop session is cut (a server restart): recovery right after must not roll back the live runs."""
    ws = make_ws(tmp_path, pg_db)
    gate = tmp_path / "gate"
    env = env_for(ws)
    run = subprocess.Popen(run_cmd("viarun", str(gate)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    script = (f"tx=$({PY} {BIN / 'sop-begin'} --strategy viabegin --owner-pid $$) && echo $tx && "
              f"while [ ! -e {gate} ]; do sleep 0.1; done")
    shell = subprocess.Popen(["sh", "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(open_txs(ws)) < 2:
        assert time.monotonic() < deadline, open_txs(ws)
        time.sleep(0.1)
    assert _sop_sessions(pg_db) >= 2                       # the run's lease and the keeper's
    r = sop_here(ws, "sop-recover", code=None)
    assert r.returncode == 0, r.stdout + r.stderr
    txs = {t["strategy"]: t for t in open_txs(ws)}
    assert sorted(txs) == ["viabegin", "viarun"], r.stdout
    assert all(not t["abandoned"] for t in txs.values()), txs
    gate.touch()
    out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert shell.wait(30) == 0
    assert [s for s, _ in sheet_rows(ws)] == ["viarun"]
    # the shell that owned viabegin is gone now: its keeper lets the lease go, and recovery rolls it back
    deadline = time.monotonic() + 20
    while not all(t["abandoned"] for t in open_txs(ws)):
        assert time.monotonic() < deadline, open_txs(ws)
        time.sleep(0.1)
    sop_here(ws, "sop-recover")
    assert open_txs(ws) == []
    sop_here(ws, "sop-fsck")


def test_keeper_runs_this_package_without_pythonpath(tmp_path: Path, pg_db: str) -> None:
    """bin/sop-begin from a checkout, no $PYTHONPATH: its keeper imports the same journal package and starts."""
    ws = make_ws(tmp_path, pg_db)
    env = {k: v for k, v in env_for(ws).items() if k != "PYTHONPATH"}
    r = subprocess.run(cmd("sop-begin", "--strategy", "nopath", "--owner-pid", str(os.getpid()), "--json"),
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    tx = json.loads(r.stdout)["txid"]
    assert [(t["txid"], t["abandoned"]) for t in open_txs(ws)] == [(tx, False)]


def test_an_emptied_database_is_damage_never_a_new_history(tmp_path: Path, pg_db: str) -> None:
    """The database is re-created empty (or restored from an older backup): exit 5 everywhere, fsck names it."""
    import psycopg
    ws = make_ws(tmp_path, pg_db)
    r = sop_here(ws, "sop-run", "--strategy", "kept", "--", PY, "-c", "import json, os, pathlib; "
                 "pathlib.Path(os.environ['SOP_STRATEGY_DIR'], 'run_metadata.json').write_text(json.dumps("
                 "{'run_id': os.environ['SOP_RUN_ID']}))", code=None)
    assert r.returncode == 0, r.stderr
    with psycopg.connect(pg_db, autocommit=True) as c:       # as a restore of a backup older than the commit
        c.execute("TRUNCATE sop_journal, sop_open, sop_checkpoint")
    fsck = sop_here(ws, "sop-fsck", code=5)
    assert "anchor" in fsck.stdout, fsck.stdout
    sop_here(ws, "sop-begin", "--strategy", "new", "--owner-pid", str(os.getpid()), code=5)
    assert not (ws / "backtests" / "new").exists()
    db = pg_db.split("dbname=")[1].split()[0]                 # re-created empty, and 'sop init' run as told
    admin = pg_db.replace(f"dbname={db}", "dbname=postgres")
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{db}"')
    r = sop_here(ws, "sop-status", code=None)
    assert "anchor" in r.stdout + r.stderr and "DAMAGED" in r.stdout
    sop_here(ws, "sop-init", "--store", "postgresql", code=5)
    sop_here(ws, "sop-fsck", code=5)
