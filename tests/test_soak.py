"""A seeded kill -9 soak: concurrent sop-run processes killed at random moments, then recovered.

Iterations: ``$SOAK_ITERATIONS`` (200 by default, as in CI); the seed is
``$SOAK_SEED`` or random, and is printed in every failure message so a
failure can be replayed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import BIN, FAST_CONFIG, scrubbed_env, sop
from crashkit import check_invariants, run

WRITE_META = ("printf '{\"run_id\": \"%s\", \"metrics\": {\"sharpe\": 1.5}}' \"$SOP_RUN_ID\" "
              "> \"$SOP_STRATEGY_DIR/run_metadata.json\"")


def test_kill_9_soak(tmp_path: Path) -> None:
    iterations = int(os.environ.get("SOAK_ITERATIONS", "200"))
    seed = int(os.environ.get("SOAK_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    root = tmp_path / "ws"
    root.mkdir()
    sop("init", "-C", str(root))
    (root / ".sop" / "config.toml").write_text(FAST_CONFIG)
    stats = {"killed": 0, "finished": 0}
    for it in range(iterations):
        procs = []
        clash = rng.random() < 0.3          # both runs want one strategy: exactly one may hold it
        for j in range(2):
            name = f"S{it}" if clash else f"S{it}-{j}"
            script = f"sleep {rng.choice(['0', '0.05', '0.2'])}; " + (WRITE_META if rng.random() < 0.85 else "exit 4")
            procs.append(subprocess.Popen(
                [sys.executable, str(BIN / "sop-run"), "-C", str(root), "--strategy", name, "--",
                 "sh", "-c", script],
                env=scrubbed_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        time.sleep(rng.uniform(0, 0.6))
        for p in procs:
            if p.poll() is None and rng.random() < 0.8:
                os.killpg(p.pid, signal.SIGKILL)
                stats["killed"] += 1
            else:
                stats["finished"] += 1
        for p in procs:
            p.wait(timeout=120)
        rec = run(root, "recover")
        assert rec.returncode == 0, f"seed {seed}, iteration {it}: recover failed: {rec.stderr}"
        try:
            check_invariants(root)
        except AssertionError as e:
            raise AssertionError(f"seed {seed}, iteration {it} (workspace {root}): {e}") from None
    print(f"soak: seed {seed}, {iterations} iterations, {stats['killed']} runs killed, "
          f"{stats['finished']} finished")
    assert stats["killed"] > 0

