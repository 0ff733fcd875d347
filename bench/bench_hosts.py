"""Commits per second: the file store on one host beside the PostgreSQL store on one and on three hosts.

Whole processes: each commit is a real ``sop-run`` (begin, a trivial
backtest that writes its run_metadata.json, commit), N of them started at
once against one workspace.  "Hosts" are Linux namespaces (separate pid and
uts; tests/cluster/hosts.py), sharing the workspace folder and the
database's Unix socket.  Also one run at a time (latency).  The server is
$SOP_TEST_PG_DSN, else a throwaway cluster (tools/pg_throwaway.py).

    python3 bench/bench_hosts.py [--runs 30] [--serial 5]

Needs root (namespaces), PostgreSQL's server binaries and psycopg.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from cluster.hosts import Host  # noqa: E402

PY = sys.executable
BODY = ("import json, os, pathlib; d = pathlib.Path(os.environ['SOP_STRATEGY_DIR']);"
        "(d / 'run_metadata.json').write_text(json.dumps({'run_id': os.environ['SOP_RUN_ID'],"
        " 'strategy': os.environ['SOP_STRATEGY']}))")


def env_for(ws: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("SOP_")}
    return {**keep, "PYTHONPATH": str(ROOT), "SOP_ROOT": str(ws)}


def run_argv(strategy: str) -> list[str]:
    return [PY, str(ROOT / "bin" / "sop-run"), "--strategy", strategy, "--", PY, "-c", BODY]


def workspace(base: Path, name: str, dsn: str | None) -> Path:
    ws = base / name
    ws.mkdir()
    extra = ["--store", "postgresql", "--dsn", dsn] if dsn else []
    subprocess.run([PY, str(ROOT / "bin" / "sop-init"), *extra], env=env_for(ws), check=True,
                   capture_output=True)
    return ws


def concurrent(ws: Path, n: int, hosts: list[Host] | None) -> float:
    t0 = time.perf_counter()
    if hosts:
        procs = [hosts[i % len(hosts)].spawn(run_argv(f"c{i}"), env=env_for(ws)) for i in range(n)]
        codes = [p.wait(600) for p in procs]
    else:
        ps = [subprocess.Popen(run_argv(f"c{i}"), env=env_for(ws), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL) for i in range(n)]
        codes = [p.wait(600) for p in ps]
    took = time.perf_counter() - t0
    bad = [c for c in codes if c != 0]
    if bad:
        raise SystemExit(f"{len(bad)} of {n} runs failed in {ws.name}")
    return took


def serial(ws: Path, n: int) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        subprocess.run(run_argv(f"s{i}"), env=env_for(ws), check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--serial", type=int, default=5)
    a = ap.parse_args()
    dsn = os.environ.get("SOP_TEST_PG_DSN")
    pg = None
    if not dsn:
        spec = importlib.util.spec_from_file_location("pg_throwaway", ROOT / "tools" / "pg_throwaway.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        pg = mod.Throwaway.start()
        dsn = pg.dsn
    import psycopg
    dbs: list[str] = []

    def newdb() -> str:
        name = f"bench_{secrets.token_hex(4)}"
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        dbs.append(name)
        return psycopg.conninfo.make_conninfo(dsn, dbname=name)

    print(f"load average before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores; {a.runs} concurrent sop-runs")
    hosts = [Host(f"bench{i}") for i in range(3)]
    try:
        with tempfile.TemporaryDirectory(prefix="sop-bench-hosts-") as tmp:
            base = Path(tmp)
            lat_f = serial(workspace(base, "fs", None), a.serial)
            lat_p = serial(workspace(base, "ps", newdb()), a.serial)
            t_file = concurrent(workspace(base, "f1", None), a.runs, None)
            t_pg1 = concurrent(workspace(base, "p1", newdb()), a.runs, None)
            t_pg3 = concurrent(workspace(base, "p3", newdb()), a.runs, hosts)
        rows = [("files, 1 host", t_file), ("postgresql, 1 host", t_pg1), ("postgresql, 3 hosts", t_pg3)]
        print(f"one sop-run at a time (median of {a.serial}): files {lat_f:.2f} s, postgresql {lat_p:.2f} s "
              f"({lat_p / lat_f:.2f}x)")
        for name, t in rows:
            print(f"{name:22s} {a.runs} runs in {t:6.2f} s = {a.runs / t:5.1f} commits/s "
                  f"({t / t_file:.2f}x the file store's time)")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        for h in hosts:
            h.close()
        with psycopg.connect(dsn, autocommit=True) as c:
            for name in dbs:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if pg is not None:
            pg.stop()


if __name__ == "__main__":
    main()
