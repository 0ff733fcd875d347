"""Many workers, one workspace: examples/dask_grid.py on a real Dask cluster of separate processes.

A ``dask scheduler`` on a free loopback port and two ``dask worker``
processes, each a real subprocess (and its own process group, killed in a
finally); the example script connects to the scheduler's address as it would
on a cluster.  200 backtests make exactly 200 rows, each strategy once, and
leave a sound journal and nothing open; the same grid again is refused 200
times and the sheet keeps its 200 rows.

It runs in the cluster lane (``SOP_CLUSTER=1``), once with the file store
and once, unchanged, with the PostgreSQL store (``pg_db`` of
tests/cluster/conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(os.environ.get("SOP_CLUSTER") != "1", reason="the cluster lane: SOP_CLUSTER=1")
pytest.importorskip("distributed")
openpyxl = pytest.importorskip("openpyxl")

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "bin"
GRID = ROOT / "examples" / "dask_grid.py"
N = 200
WORKERS = 2


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("SOP_")}
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH")]))
    return e


def sop(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BIN / args[0]), *args[1:]], env=env(), text=True,
                          capture_output=True, timeout=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def dask_cluster(tmp: Path) -> Iterator[str]:
    """``dask scheduler`` and WORKERS ``dask worker`` processes; every one of them killed afterwards."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []
    logs = tmp / "dask-logs"
    logs.mkdir()

    def start(name: str, *args: str) -> None:
        with (logs / f"{name}.log").open("wb") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "dask", *args], env=env(), cwd=tmp,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    try:
        start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard")
        for i in range(WORKERS):
            start(f"worker{i}", "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                  "--name", f"w{i}", "--local-directory", str(tmp / f"dask-w{i}"))
        yield address
    finally:
        for p in reversed(procs):                       # workers first, then the scheduler
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)        # the process group each was started in (nanny + worker)
        for p in reversed(procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)        # a worker the nanny left behind


def run_grid(ws: Path, address: str) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, str(GRID), "--root", str(ws), "--scheduler", address, "--count", str(N),
                        "--workers", str(WORKERS), "--wait", "60", "--json"],
                       env=env(), text=True, capture_output=True, timeout=300)
    took = time.perf_counter() - t0
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(p.stdout), took


def sheet_rows(ws: Path) -> list[tuple[Any, ...]]:
    wb = openpyxl.load_workbook(ws / "backtests" / "Strategy_Master_Filter.xlsx", read_only=True)
    try:
        return [tuple(r) for r in wb.worksheets[0].iter_rows(values_only=True)]
    finally:
        wb.close()


@pytest.mark.parametrize("store", ["files", "postgresql"])
def test_200_backtests_on_a_dask_cluster_make_200_rows_and_again_200_refusals(
        tmp_path: Path, store: str, request: pytest.FixtureRequest) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    extra = ["--store", "postgresql", "--dsn", request.getfixturevalue("pg_db")] if store == "postgresql" else []
    init = sop("sop-init", "-C", str(ws), *extra)
    assert init.returncode == 0, init.stderr
    sys.path.insert(0, str(GRID.parent))
    try:
        import dask_grid
    finally:
        sys.path.remove(str(GRID.parent))
    expected = {dask_grid.strategy_name(p) for p in dask_grid.grid_of_count(N)}
    assert len(expected) == N

    with dask_cluster(tmp_path) as address:
        first, took = run_grid(ws, address)
        s = first["summary"]
        print(f"\n{N} backtests: {s['wall_seconds']:.2f} s on the cluster ({took:.2f} s with the script's start), "
              f"{s['mean_task_seconds'] * 1000:.0f} ms per transaction inside a task, on {len(s['hosts'])} workers")
        assert (s["committed"], s["refused"], s["aborted"], s["failed"]) == (N, 0, 0, 0), s
        assert len(s["hosts"]) == WORKERS                # both worker processes ran backtests

        header, *rows = sheet_rows(ws)
        col = {h: i for i, h in enumerate(header)}
        strategies = [r[col["Strategy"]] for r in rows]
        run_ids = [r[col["RunID"]] for r in rows]
        assert len(rows) == N and set(strategies) == expected and len(set(strategies)) == N
        assert len(set(run_ids)) == N
        by_strategy = {r["strategy"]: r for r in first["results"]}
        for i, r in enumerate(rows, start=2):          # what each task reported is what the sheet holds
            assert by_strategy[r[col["Strategy"]]]["row"] == i
            assert by_strategy[r[col["Strategy"]]]["run_id"] == r[col["RunID"]]

        fsck = sop("sop-fsck", "-C", str(ws))
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        status = sop("sop-status", "-C", str(ws), "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        assert json.loads(status.stdout)["transactions"] == []

        again, _ = run_grid(ws, address)               # the same grid: every strategy has its row
        s2 = again["summary"]
        assert (s2["committed"], s2["refused"], s2["aborted"], s2["failed"]) == (0, N, 0, 0), s2
        assert all("1-Strategy-1-Row Invariant" in r["message"] for r in again["results"])
        assert len(sheet_rows(ws)) == N + 1
        assert sorted(p.name for p in (ws / "runs").iterdir()) == sorted(run_ids)   # nothing created by refusals
