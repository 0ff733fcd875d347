"""The bundled example works as the README says: the backtest, its harness, and the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BIN, ROOT, scrubbed_env, sop

EXAMPLES = ROOT / "examples"
TOOLS = EXAMPLES / "tools"
STAGE1 = TOOLS / "run_stage1.py"

sys.path.insert(0, str(TOOLS))
import ma_cross  # noqa: E402

sys.path.insert(0, str(EXAMPLES))
import dask_grid  # noqa: E402  (its grid only: dask itself is imported when the grid runs)


def py(*args: str | Path, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=scrubbed_env(), text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    sop("init", "-C", str(root))
    return root


# ---------------------------------------------------------------- the data and the engine

def test_prices_csv_is_what_the_generator_makes(tmp_path: Path) -> None:
    out = tmp_path / "prices.csv"
    assert py(TOOLS / "make_prices.py", "--out", out).returncode == 0
    assert out.read_bytes() == (EXAMPLES / "data" / "prices.csv").read_bytes()


def test_backtest_on_the_bundled_prices_is_deterministic() -> None:
    dates, closes = ma_cross.load_prices(EXAMPLES / "data" / "prices.csv")
    assert len(dates) == 500
    m = ma_cross.backtest(dates, closes, 10, 50).metrics
    assert m["trades"] == 7 and m["sharpe"] == pytest.approx(0.3714, abs=1e-4)
    assert m["max_drawdown"] == pytest.approx(-0.177819, abs=1e-6) and m["cagr"] == pytest.approx(0.043587, abs=1e-6)


def test_backtest_has_no_look_ahead() -> None:
    """A position taken on day t's close earns day t+1's return, not day t's."""
    closes = [10.0] * 5 + [20.0] + [40.0] * 5
    dates = [f"d{i}" for i in range(len(closes))]
    r = ma_cross.backtest(dates, closes, 1, 2)
    assert r.position[5] == 1 and r.equity[5] == r.equity[0]          # the jump into day 5 is not earned
    assert r.equity[6] == pytest.approx(2 * r.equity[0])               # day 6's doubling is
    assert r.metrics["trades"] == 1


def test_backtest_refuses_bad_windows() -> None:
    with pytest.raises(ValueError):
        ma_cross.backtest(["a", "b", "c"], [1.0, 2.0, 3.0], 5, 2)


# ---------------------------------------------------------------- the harness

def test_run_stage1_indexes_then_refuses_the_same_strategy(ws: Path) -> None:
    p = py(STAGE1, "-C", ws, "--fast", "10", "--slow", "50")
    assert p.returncode == 0, p.stderr
    meta = json.loads((ws / "backtests" / "MA_Cross_10_50" / "run_metadata.json").read_text())
    assert meta["strategy"] == "MA_Cross_10_50" and set(meta["metrics"]) >= {"sharpe", "cagr", "max_drawdown",
                                                                              "trades"}
    run_dir = ws / "runs" / meta["run_id"]
    assert (run_dir / "params.json").is_file() and (run_dir / "trades.csv").is_file()
    assert (ws / "backtests" / "MA_Cross_10_50" / "equity_curve.csv").is_file()
    again = py(STAGE1, "-C", ws, "--fast", "10", "--slow", "50")
    assert again.returncode == 1
    assert "already exists in Master Sheet (Row 2). Verification Failed: 1-Strategy-1-Row Invariant" in again.stderr


def test_run_stage1_failure_is_quarantined(ws: Path) -> None:
    p = py(STAGE1, "-C", ws, "--fast", "5", "--slow", "20", "--simulate-failure")
    assert p.returncode == 1 and "quarantined in backtests/MA_Cross_5_20_FAILED_" in p.stderr
    assert not (ws / "backtests" / "MA_Cross_5_20").exists()
    assert len(list((ws / "backtests").glob("MA_Cross_5_20_FAILED_*"))) == 1
    assert len(list((ws / "runs").glob("*_FAILED_*"))) == 1


def test_run_stage1_under_sop_run(ws: Path) -> None:
    p = py(BIN / "sop-run", "-C", ws, "--json", "--strategy", "MA_Cross_20_100", "--",
           sys.executable, STAGE1, "--fast", "20", "--slow", "100")
    doc = json.loads(p.stdout)
    assert p.returncode == 0 and doc["state"] == "committed" and doc["row"] == 2, p.stderr


# ---------------------------------------------------------------- the demo

def test_demo_shows_the_three_outcomes_and_can_run_again(tmp_path: Path) -> None:
    target = tmp_path / "demo-ws"
    first = py(EXAMPLES / "demo.py", target)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr
    out = first.stdout
    assert "indexed MA_Cross_10_50" in out
    assert "Verification Failed: 1-Strategy-1-Row Invariant" in out
    assert "quarantined backtests/MA_Cross_5_20 -> backtests/MA_Cross_5_20_FAILED_" in out
    assert "Zombie Artifact detected" in out
    assert "All three outcomes behaved as the SOP says" in out
    assert py(EXAMPLES / "demo.py", target).returncode == 0          # it starts its own workspace over


def test_demo_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "data.csv").write_text("keep me\n")
    p = py(EXAMPLES / "demo.py", target)
    assert p.returncode == 2 and "refusing to touch it" in p.stderr
    assert (target / "data.csv").read_text() == "keep me\n" and len(list(target.iterdir())) == 1


# ---------------------------------------------------------------- many machines: the Slurm array script

SLURM = EXAMPLES / "slurm_array.sh"


def slurm_task(ws: Path, task_id: str | None) -> subprocess.CompletedProcess[str]:
    """One array task of examples/slurm_array.sh under bash, as Slurm would start it (without Slurm)."""
    env = scrubbed_env(SOP_ROOT=str(ws), PYTHON=sys.executable, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("SLURM_JOB_ID", None)
    env.pop("SLURM_ARRAY_TASK_ID", None)
    if task_id is not None:
        env["SLURM_ARRAY_TASK_ID"] = task_id
    return subprocess.run(["bash", str(SLURM)], env=env, text=True, capture_output=True, timeout=120)


def test_slurm_array_script_runs_one_backtest_per_task_id(ws: Path) -> None:
    import openpyxl

    text = SLURM.read_text(encoding="utf-8")
    assert "#SBATCH --array=0-199\n" in text and "SOP_ROOT" in text
    ids = [0, 3, 199]
    for i in ids:
        p = slurm_task(ws, str(i))
        assert p.returncode == 0, p.stdout + p.stderr
        want = dask_grid.strategy_name(dask_grid.grid_of_count(200)[i])      # the same parameter sets
        assert f"Committed '{want}'" in p.stderr, p.stderr
    wb = openpyxl.load_workbook(ws / "backtests" / "Strategy_Master_Filter.xlsx")
    rows = [r for r in wb.worksheets[0].iter_rows(values_only=True)][1:]
    wb.close()
    assert sorted(r[0] for r in rows) == sorted(dask_grid.strategy_name(dask_grid.grid_of_count(200)[i]) for i in ids)
    assert len({r[1] for r in rows}) == 3                                        # distinct run ids

    again = slurm_task(ws, "3")                         # the same task again: refused, nothing created
    assert again.returncode == 1 and "1-Strategy-1-Row Invariant" in again.stderr
    assert slurm_task(ws, None).returncode == 2         # no task id: a usage error, not a backtest
    assert slurm_task(ws, "x1").returncode == 2
    assert sop("fsck", "-C", str(ws)).returncode == 0
