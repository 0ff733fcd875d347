"""The Windows lane (``.ci/windows-lane``): these tests run only on Windows, through the real launchers.

They drive the ``sop-*.exe`` console-script launchers that pip installed
from the project's wheel, found on PATH, as a user's shell would.  Elsewhere
they are not collected (the Linux suite tests the same code through the
portable layer: ``tests/test_platform.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if sys.platform != "win32":
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture
def wws(tmp_path: Path) -> object:
    from winlane import FAST_CONFIG, WinWS
    root = tmp_path / "ws"
    root.mkdir()
    w = WinWS(root)
    w.run("init")
    (root / ".sop" / "config.toml").write_text(FAST_CONFIG)
    return w
