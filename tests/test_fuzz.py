"""Generated hostile input through the CLI and the API: every path ends in the one error tree.

For names, directives, run_metadata.json, config files and durations made by hypothesis, each
command must exit with a SPEC §6 status, print exactly one JSON document under ``--json``
(``{"error": …}`` when it fails), say one ``error:`` line first on stderr otherwise, never a
traceback, and leave the workspace as it was when it refuses.  The runs are derandomized
(a fixed seed) and bounded in examples, so CI sees the same inputs every time in a few seconds.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FAST_CONFIG, WS, sop

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import journal  # noqa: E402
from journal import errors  # noqa: E402

SPEC_CODES = {0, 1, 2, 3, 4, 5, 6}
BOUNDED = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Text biased towards what broke sop: separators, invisible and look-alike characters, owner-file
# prefixes, _FAILED_ suffixes, reserved names, multi-byte letters, surrogates (bytes that were not UTF-8).
TRICKY = ["~$", ".~lock.", "_FAILED_20260101T000000Z", "CON", "nul.txt", "/", "\\", "..", " ", "\u00a0", "\u200b",
          "\u202e", "\u3000", "\u2028", "\ufeff", "é", "日本", "\U0001f600", "\udcff", "\x00", "\t", "-", ".", ":"]
names_st = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(TRICKY) | st.text(alphabet="abcXYZ019_", min_size=1, max_size=8),
             min_size=1, max_size=8).map("".join),
    st.integers(min_value=30, max_value=130).map(lambda n: "é" * n),
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                         st.text(max_size=20), st.sampled_from(["NaN", "Infinity", "\udcff"]))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c,
                                                                                                 max_size=3),
                           max_leaves=10)


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """One initialised workspace, copied for each example (sop init costs more than the example)."""
    d = Path(tempfile.mkdtemp(prefix="sop-fuzz-"))
    (d / "ws").mkdir()
    sop("init", "-C", str(d / "ws"))
    (d / "ws" / ".sop" / "config.toml").write_text(FAST_CONFIG)
    yield d / "ws"
    shutil.rmtree(d, ignore_errors=True)


def _fresh(base: Path) -> WS:
    d = Path(tempfile.mkdtemp(prefix="sop-fuzz-ex-"))
    shutil.copytree(base, d / "ws", symlinks=True)
    return WS(d / "ws")


def _snapshot(ws: WS) -> tuple[set[str], int, bytes]:
    return ws.tree(), len(ws.records()), ws.sheet.read_bytes()


def _check(ws: WS, args: list[str], before: tuple[set[str], int, bytes] | None) -> int:
    """Run one command twice (--json and not) on copies; check the contract; return the exit status."""
    p = ws.sop(*args, "--json", code=None)
    assert p.returncode in SPEC_CODES, (args, p.returncode, p.stderr)
    doc = json.loads(p.stdout)                                       # exactly one JSON document
    assert ("error" in doc) == (p.returncode != 0) or args[0] == "sweep", (args, doc)
    if p.returncode != 0:
        assert doc["error"]["code"] == p.returncode and "\n" not in doc["error"]["message"]
        if before is not None and p.returncode in (1, 2):
            assert _snapshot(ws) == before, args                     # a refusal touched nothing
    assert "Traceback" not in p.stderr
    return int(p.returncode)


def _plain(ws: WS, args: list[str]) -> None:
    p = ws.sop(*args, code=None)
    assert p.returncode in SPEC_CODES and "Traceback" not in p.stderr
    if p.returncode not in (0, 3):
        assert p.stderr.startswith("error: "), (args, p.stderr)


@BOUNDED
@given(name=names_st, run_id=st.none() | names_st)
def test_fuzz_begin_with_generated_names(base: Path, name: str, run_id: str | None) -> None:
    ws = _fresh(base)
    try:
        before = _snapshot(ws)
        args = ["begin", "--strategy", name] + (["--run-id", run_id] if run_id is not None else [])
        code = _check(ws, args, before)
        if code == 0:
            tx = ws.json("status")["transactions"][0]
            ws.sop("abort", tx["txid"])                                # the name can always be quarantined
            ws.sop("sweep", "--fix")
            ws.sop("recover")
        else:
            _plain(ws, args)
        try:                                                           # the API gives the same verdict
            journal.begin(name, run_id=run_id, root=ws.root, owner_pid=None)
            assert code == 0
        except errors.SopError as e:
            assert e.exit_code == code or code == 0
    finally:
        shutil.rmtree(ws.root.parent, ignore_errors=True)


@BOUNDED
@given(doc=json_values, fmt=st.sampled_from(["json", "yaml", "toml"]), raw=st.none() | st.binary(max_size=200))
def test_fuzz_begin_with_generated_directives(base: Path, doc: object, fmt: str, raw: bytes | None) -> None:
    ws = _fresh(base)
    try:
        d = ws.root.parent / f"d.{fmt}"
        if raw is not None:
            d.write_bytes(raw)
        else:
            text = json.dumps({"Strategy": doc, "RunID": doc} if not isinstance(doc, dict) else doc)
            d.write_text(text, encoding="utf-8", errors="surrogatepass")
        before = _snapshot(ws)
        _check(ws, ["begin", "--directive", str(d)], before)
        _plain(ws, ["begin", "--directive", str(d)])
    finally:
        shutil.rmtree(ws.root.parent, ignore_errors=True)


@BOUNDED
@given(meta=json_values, raw=st.none() | st.binary(max_size=200), keep_id=st.booleans())
def test_fuzz_commit_and_sweep_with_generated_metadata(base: Path, meta: object, raw: bytes | None,
                                                       keep_id: bool) -> None:
    ws = _fresh(base)
    try:
        tx = ws.begin_tx("Alpha")
        p = ws.root / "backtests" / "Alpha" / "run_metadata.json"
        if raw is not None:
            p.write_bytes(raw)
        else:
            body = {"run_id": tx["run_id"], "metrics": meta} if keep_id else meta
            p.write_bytes(json.dumps(body).encode("utf-8", "surrogatepass"))
        code = _check(ws, ["commit", tx["txid"]], None)
        assert code in (0, 1)
        if code == 1:
            assert ws.json("status")["transactions"][0]["state"] == "begun"
        else:                                                          # what the gate took, the sweep can read
            ws.sop("sweep", "--exit-code")
    finally:
        shutil.rmtree(ws.root.parent, ignore_errors=True)


CONFIG_KEYS = ["[lock]\ntimeout_seconds", "[lock]\nretries", "[lock]\nbackoff_seconds", "[lock]\nstale_owner_hours",
               "[lock]\non_locked", "[sweep]\nreport", "[sweep]\nzombie_action", "[sheet]\npath", "[sheet]\nworksheet"]
toml_values = st.one_of(st.integers(min_value=-10**20, max_value=10**20).map(str),
                        st.sampled_from(["inf", "-inf", "nan", "1e308", "0", "0.0", "true", '""', '"defer"',
                                         '".sop/journal"', '"backtests/x.md"', '"\\ud800"', '"../../etc/x"']),
                        st.floats(allow_nan=False, allow_infinity=False).map(repr),
                        st.text(max_size=10).map(json.dumps))


@BOUNDED
@given(key=st.sampled_from(CONFIG_KEYS), value=toml_values, dur=st.none() | st.text(max_size=12))
def test_fuzz_config_and_durations(base: Path, key: str, value: str, dur: str | None) -> None:
    ws = _fresh(base)
    try:
        (ws.root / ".sop" / "config.toml").write_text(f"{key} = {value}\n", encoding="utf-8", errors="surrogatepass")
        before = _snapshot(ws)
        for args in (["status"], ["sweep"], ["recover", "--dry-run"], ["log"]):
            if dur is not None and args[0] in ("status", "recover"):
                args = [*args, "--older-than", dur]
            _check(ws, args, before)
        if dur is not None:
            _check(ws, ["log", "--since", dur], before)
            _plain(ws, ["log", "--since", dur])
    finally:
        shutil.rmtree(ws.root.parent, ignore_errors=True)
