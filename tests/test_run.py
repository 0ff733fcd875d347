"""sop-run and the Python API's transaction() (SPEC §5 sop-run).

sop-run always runs as a real process (``proc=True``): it forwards signals to its command, owns the
transaction by its own pid, and with --json hands its stderr file descriptor to the command's stdout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BIN, WS, scrubbed_env

WRITE_META = ("import json,os; json.dump({'run_id': os.environ['SOP_RUN_ID'], 'metrics': {'sharpe': 2.5}}, "
              "open(os.path.join(os.environ['SOP_STRATEGY_DIR'],'run_metadata.json'),'w'))")


def test_run_commits_on_exit_0_and_sets_the_environment(ws: WS, tmp_path: Path) -> None:
    dump = tmp_path / "env.json"
    code = WRITE_META + (f"; json.dump({{k: v for k, v in os.environ.items() if k.startswith('SOP_')}}, "
                         f"open({str(dump)!r}, 'w'))")
    doc = json.loads(ws.sop("run", "--json", "--strategy", "Alpha", "--", sys.executable, "-c", code, proc=True).stdout)
    assert doc["state"] == "committed" and doc["status"] == 0 and doc["row"] == 2
    env = json.loads(dump.read_text())
    assert env["SOP_STRATEGY"] == "Alpha" and env["SOP_TXID"] == doc["txid"] and env["SOP_RUN_ID"] == doc["run_id"]
    assert env["SOP_ROOT"] == str(ws.root)
    assert Path(env["SOP_STRATEGY_DIR"]) == ws.root / "backtests" / "Alpha"
    assert Path(env["SOP_RUN_DIR"]) == ws.root / "runs" / doc["run_id"]
    assert ws.rows()[1][:2] == ["Alpha", doc["run_id"]]


def test_run_with_json_sends_the_commands_stdout_to_stderr(ws: WS) -> None:
    p = ws.sop("run", "--json", "--strategy", "Alpha", "--", sys.executable, "-c",
               WRITE_META + "; print('hello from the backtest')", proc=True)
    assert "hello from the backtest" in p.stderr
    assert json.loads(p.stdout)["state"] == "committed"


def test_run_failing_command_aborts_and_exits_with_its_status(ws: WS) -> None:
    p = ws.sop("run", "--strategy", "Alpha", "--", sys.executable, "-c", "import sys; sys.exit(7)", code=7, proc=True)
    assert "rolled back" in p.stderr
    assert not (ws.root / "backtests" / "Alpha").exists()
    assert any(d.name.startswith("Alpha_FAILED_") for d in (ws.root / "backtests").iterdir())
    assert len(ws.rows()) == 1


def test_run_failed_gate_rolls_back_with_exit_1(ws: WS) -> None:
    p = ws.sop("run", "--strategy", "Alpha", "--", sys.executable, "-c", "pass", code=1, proc=True)
    assert "Validation failed" in p.stderr
    assert not (ws.root / "backtests" / "Alpha").exists()
    assert ws.json("status")["transactions"] == []


def test_run_refused_by_the_gatekeeper_runs_nothing(ws: WS, tmp_path: Path) -> None:
    (ws.root / "backtests" / "Zed").mkdir()
    marker = tmp_path / "ran"
    p = ws.sop("run", "--strategy", "Zed", "--", sys.executable, "-c", f"open({str(marker)!r},'w')", code=1, proc=True)
    assert "Zombie Artifact detected" in p.stderr and not marker.exists()


def test_run_missing_program_rolls_back(ws: WS) -> None:
    p = ws.sop("run", "--strategy", "Alpha", "--", "/no/such/program", code=127, proc=True)
    assert "cannot run" in p.stderr
    assert not (ws.root / "backtests" / "Alpha").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_forwards_signals_to_the_command(ws: WS, tmp_path: Path, sig: signal.Signals) -> None:
    ready, got = tmp_path / "ready", tmp_path / "got"
    child = (f"import signal,sys,time,pathlib\n"
             f"def h(s,f): pathlib.Path({str(got)!r}).write_text(str(s)); sys.exit(3)\n"
             f"signal.signal(signal.SIGTERM,h); signal.signal(signal.SIGINT,h)\n"
             f"pathlib.Path({str(ready)!r}).write_text('1')\n"
             f"time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, str(BIN / "sop-run"), "-C", str(ws.root), "--strategy", "Sig", "--",
                          sys.executable, "-c", child], env=scrubbed_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(sig)
    assert p.wait(timeout=60) == 3
    assert got.read_text() == str(int(sig))
    assert not (ws.root / "backtests" / "Sig").exists()


# ---------------------------------------------------------------- the Python API

def test_api_transaction_commits_on_success(ws: WS) -> None:
    import journal
    with journal.transaction("Api1", root=ws.root) as tx:
        Path(tx.strategy_dir, "run_metadata.json").write_text(json.dumps({"run_id": tx.run_id, "pnl": 10}))
    assert ws.rows()[1][:2] == ["Api1", tx.run_id]
    st = journal.status(root=ws.root)
    assert st.transactions == []


def test_api_transaction_aborts_on_exception(ws: WS) -> None:
    import journal
    with pytest.raises(RuntimeError):
        with journal.transaction("Api2", root=ws.root):
            raise RuntimeError("backtest blew up")
    assert not (ws.root / "backtests" / "Api2").exists()
    assert any(d.name.startswith("Api2_FAILED_") for d in (ws.root / "backtests").iterdir())


def test_api_errors_carry_exit_codes(ws: WS) -> None:
    import journal
    from journal.errors import NoSuchTransaction, Refused
    with pytest.raises(NoSuchTransaction) as e:
        journal.commit("tx-nope", root=ws.root)
    assert e.value.exit_code == 4
    (ws.root / "backtests" / "Zomb").mkdir()
    with pytest.raises(Refused) as r:
        journal.begin("Zomb", root=ws.root)
    assert r.value.exit_code == 1 and "Zombie" in str(r.value)


def test_api_owner_defaults_to_the_calling_process(ws: WS) -> None:
    import journal
    journal.begin("Mine", root=ws.root)
    assert ws.records()[0]["data"]["owner"]["pid"] == os.getpid()


def test_run_gate_failure_says_the_run_was_rolled_back_and_journals_why(ws: WS) -> None:
    p = ws.sop("run", "--strategy", "Alpha", "--", sys.executable, "-c", "pass", code=1, proc=True)
    assert "rolled back" in p.stderr and "sop-commit" not in p.stderr
    reasons = [r["data"]["reason"] for r in ws.records() if r["type"] == "rollback"]
    assert reasons == ["the commit gate refused the run"]
    ws.sop("run", "--strategy", "Beta", "--", sys.executable, "-c", "raise SystemExit(2)", code=2, proc=True)
    assert [r["data"]["reason"] for r in ws.records() if r["type"] == "rollback"][-1] == \
        "the command exited with status 2"
