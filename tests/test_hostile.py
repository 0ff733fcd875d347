"""Hostile input and hostile surroundings: one clear refusal, nothing touched, never a hang.

Each class of the hostile-input issue, through the real commands: names the disk or the sweep
cannot live with, paths sop writes to, resources (aliases, zip bombs, FIFOs, huge files),
values (NaN and friends, one metadata reader for gate and sweep), and input that used to end
in a traceback.  ``test_fuzz.py`` drives the same classes with generated input.
"""

from __future__ import annotations

import json
import os
import struct
import time
import zipfile
from pathlib import Path

import pytest
from conftest import WS, sop

from journal import names, txn


def _state(ws: WS) -> tuple[set[str], int, bytes]:
    """What a refusal must leave as it was: the artifact trees, the journal, the sheet."""
    return ws.tree(), len(ws.records()), ws.sheet.read_bytes()


def _one_error(p: object, code: int) -> dict[str, object]:
    """A refusal under --json: exactly one JSON document holding the error and its exit status."""
    doc = json.loads(p.stdout)            # type: ignore[attr-defined]
    assert doc["error"]["code"] == code and p.returncode == code   # type: ignore[attr-defined]
    assert "Traceback" not in p.stderr    # type: ignore[attr-defined]
    return doc["error"]


# ---------------------------------------------------------------- names

def test_a_name_too_long_in_bytes_is_refused_before_anything_is_journaled(ws: WS) -> None:
    before = _state(ws)
    most = names.max_name_bytes(names.name_max(ws.root))
    long = "é" * (most // 2 + 1)                       # under 120 characters, over the byte limit
    assert len(long) <= names.MAX_LEN
    p = ws.sop("begin", "--strategy", long, code=1)
    assert "bytes in UTF-8" in p.stderr
    assert _state(ws) == before
    ws.sop("begin", "--strategy", "ok", "--run-id", "é" * (most // 2 + 1), code=1)
    assert _state(ws) == before


def test_the_longest_name_allowed_can_still_be_quarantined(ws: WS) -> None:
    most = names.max_name_bytes(names.name_max(ws.root))
    name = "é" * (most // 2)                          # exactly at (or one under) the limit
    tx = ws.json("begin", "--strategy", name)
    res = ws.json("abort", tx["txid"])
    moved = [v for k, v in res["moved"].items() if k.startswith("backtests/")]
    assert moved and (ws.root / moved[0]).is_dir()
    ws.sop("recover")
    ws.sop("sweep", "--fix")


def test_a_name_begun_before_the_byte_check_is_shortened_when_quarantined(tmp_path: Path) -> None:
    from datetime import UTC, datetime
    limit = names.name_max(tmp_path)
    long = "x" * (limit - 5)
    (tmp_path / long).mkdir()
    q = txn.quarantine_name(tmp_path / long, datetime(2026, 1, 1, tzinfo=UTC))
    assert len(q.name.encode()) <= limit - 4 and q.name.endswith("_FAILED_20260101T000000Z")
    os.rename(tmp_path / long, q)
    assert names.FAILED_RE.match(q.name)


@pytest.mark.parametrize("name", ["~$Strategy_Master_Filter.xlsx", "~$rategy_Master_Filter.xlsx", "~$x",
                                  ".~lock.Strategy_Master_Filter.xlsx#"])
def test_names_like_owner_files_are_refused(ws: WS, name: str) -> None:
    before = _state(ws)
    ws.sop("begin", "--strategy", name, code=1)
    assert _state(ws) == before
    assert ws.json("status")["sheet"]["locked_by"] is None


@pytest.mark.parametrize("ch", ["\u200b", "\u200d", "\u202e", "\u2066", "\u00ad", "\ufeff", "\u00a0", "\u3000",
                                "\u2007", "\u2028", "\u2029", "\ue000"])
def test_invisible_and_look_alike_characters_are_refused(ws: WS, ch: str) -> None:
    before = _state(ws)
    err = _one_error(ws.sop("begin", "--strategy", f"Alpha{ch}Beta", "--json", code=1), 1)
    assert f"U+{ord(ch):04X}" in str(err["message"])
    ws.sop("begin", "--strategy", "Alpha", "--run-id", f"r{ch}1", code=1)
    assert _state(ws) == before


def test_a_leading_space_is_refused(ws: WS) -> None:
    ws.sop("begin", "--strategy", " Alpha", code=1)


@pytest.mark.parametrize("value", ['["Alpha"]', "42", "true", '{"a": 1}', "4.5"])
def test_a_directive_strategy_that_is_not_text_is_refused(ws: WS, tmp_path: Path, value: str) -> None:
    d = tmp_path / "d.json"
    d.write_text(f'{{"Strategy": {value}}}')
    before = _state(ws)
    p = ws.sop("begin", "--directive", str(d), code=1)
    assert "must be text" in p.stderr
    assert _state(ws) == before


def test_a_directive_run_id_may_be_an_integer(ws: WS, tmp_path: Path) -> None:
    d = tmp_path / "d.json"
    d.write_text('{"Strategy": "Alpha", "RunID": 123}')
    assert ws.json("begin", "--directive", str(d))["run_id"] == "123"


def test_the_api_refuses_a_name_that_is_not_text(ws: WS) -> None:
    import journal
    with pytest.raises(journal.errors.Refused):
        journal.begin(["Alpha"], root=ws.root)         # type: ignore[arg-type]


# ---------------------------------------------------------------- paths sop writes to

@pytest.mark.parametrize("target", ["backtests/Strategy_Master_Filter.xlsx", ".sop/config.toml",
                                    "JOURNAL", "META", "runs/RUN/x.md", "backtests/new.md",
                                    "backtests/~$Strategy_Master_Filter.xlsx"])
def test_a_report_path_that_is_not_a_report_is_refused(ws: WS, target: str) -> None:
    tx = ws.full_run("Alpha")
    seg = sorted((ws.root / ".sop" / "journal").iterdir())[0]
    target = {"JOURNAL": str(seg.relative_to(ws.root)),
              "META": "backtests/Alpha/run_metadata.json"}.get(target, target).replace("RUN", tx["run_id"])
    files = {p: p.read_bytes() for p in ws.root.rglob("*") if p.is_file() and "cache" not in p.parts}
    p = ws.sop("sweep", "--report", str(ws.root / target), "--json", code=1)
    assert "refusing to write the sweep report" in _one_error(p, 1)["message"]
    assert {p: p.read_bytes() for p in files} == files
    assert not (ws.root / target).exists() or (ws.root / target) in files


def test_a_configured_report_under_sop_is_refused(ws: WS) -> None:
    (ws.root / ".sop" / "config.toml").write_text('[sweep]\nreport = ".sop/checkpoint.json"\n')
    ws.sop("sweep", code=1)
    assert not (ws.root / ".sop" / "checkpoint.json").exists()


def test_a_report_path_that_is_a_link_is_refused(ws: WS, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (ws.root / "r.md").symlink_to(victim)
    ws.sop("sweep", "--report", str(ws.root / "r.md"), code=1)
    assert victim.read_text() == "keep"


@pytest.mark.parametrize("top", ["backtests", "runs"])
def test_begin_refuses_when_an_artifact_folder_is_a_link(ws: WS, tmp_path: Path, top: str) -> None:
    outside = tmp_path / "outside"
    (ws.root / "runs").mkdir(exist_ok=True)
    os.rename(ws.root / top, outside)
    (ws.root / top).symlink_to(outside)
    listing = sorted(p.name for p in outside.iterdir())
    n = len(ws.records())
    p = ws.sop("begin", "--strategy", "Alpha", code=1)
    assert "symbolic link" in p.stderr
    assert sorted(p.name for p in outside.iterdir()) == listing and len(ws.records()) == n


def test_abort_refuses_to_move_folders_through_a_link(ws: WS, tmp_path: Path) -> None:
    tx = ws.begin_tx("Alpha")
    outside = tmp_path / "outside"
    os.rename(ws.root / "runs", outside)
    (ws.root / "runs").symlink_to(outside)
    ws.sop("abort", tx["txid"], code=1)
    assert sorted(p.name for p in outside.iterdir()) == [tx["run_id"]]
    assert ws.json("status")["transactions"][0]["state"] == "begun"


def test_an_owner_file_that_is_a_link_is_not_followed(ws: WS, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"\x0bTOP-SECRET!" + b"\x00" * 40)
    (ws.sheet.parent / f"~${ws.sheet.name}").symlink_to(secret)
    who = ws.json("status")["sheet"]["locked_by"]
    assert who and "TOP-SECRET" not in who and "symbolic link" in who
    tx = ws.begin_tx("Alpha")
    ws.write_metadata("Alpha", tx["run_id"])
    p = ws.sop("commit", tx["txid"], code=3)
    assert "TOP-SECRET" not in p.stderr
    assert "TOP-SECRET" not in json.dumps(ws.records())


def test_an_owner_file_that_is_a_fifo_does_not_hang(ws: WS) -> None:
    os.mkfifo(ws.sheet.parent / f".~lock.{ws.sheet.name}#")
    p = sop("status", "-C", str(ws.root), "--json", proc=True, timeout=30)
    assert "FIFO" in json.loads(p.stdout)["sheet"]["locked_by"]


# ---------------------------------------------------------------- resources

BILLION_LAUGHS = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"] +
                           [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]"
                            for i in range(9)] + ["Strategy: Alpha"])


def test_a_yaml_directive_with_aliases_is_refused_at_once(ws: WS, tmp_path: Path) -> None:
    d = tmp_path / "d.yaml"
    d.write_text(BILLION_LAUGHS)
    assert len(d.read_bytes()) < 1024
    before = _state(ws)
    t = time.monotonic()
    p = ws.sop("begin", "--directive", str(d), code=1)
    assert time.monotonic() - t < 10 and "aliases" in p.stderr
    assert _state(ws) == before


def test_a_huge_directive_is_refused(ws: WS, tmp_path: Path) -> None:
    d = tmp_path / "d.json"
    d.write_text('{"Strategy": "Alpha", "pad": "' + "x" * (1 << 20) + '"}')
    assert "more than the limit" in ws.sop("begin", "--directive", str(d), code=1).stderr


def _bomb(path: Path, declared: int) -> None:
    """Make the master worksheet's zip entry claim to inflate to ``declared`` bytes (a zip bomb's shape)."""
    raw = bytearray(path.read_bytes())
    name = b"xl/worksheets/sheet1.xml"
    at = raw.find(b"PK\x01\x02" + b"")
    while at >= 0:
        n = struct.unpack_from("<H", raw, at + 28)[0]
        if raw[at + 46:at + 46 + n] == name:
            struct.pack_into("<I", raw, at + 24, declared)
            break
        at = raw.find(b"PK\x01\x02", at + 4)
    assert at >= 0
    path.write_bytes(bytes(raw))
    with zipfile.ZipFile(path) as z:
        assert z.getinfo(name.decode()).file_size == declared


def test_a_zip_bomb_sheet_is_damage_before_anything_is_inflated(ws: WS) -> None:
    _bomb(ws.sheet, 3 << 30)
    t = time.monotonic()
    p = ws.sop("begin", "--strategy", "Alpha", "--json", code=5)
    assert "would inflate" in str(_one_error(p, 5)["message"])
    assert time.monotonic() - t < 10
    assert ws.tree() == {"backtests/Strategy_Master_Filter.xlsx"}


def test_init_refuses_a_zip_bomb_sheet(tmp_path: Path) -> None:
    import shutil
    sop("init", "-C", str(tmp_path))
    shutil.rmtree(tmp_path / ".sop")
    _bomb(tmp_path / "backtests" / "Strategy_Master_Filter.xlsx", 2 << 30)
    t = time.monotonic()
    assert "would inflate" in sop("init", "-C", str(tmp_path), code=5).stderr
    assert time.monotonic() - t < 10


def test_a_fifo_in_the_sheets_place_never_hangs(ws: WS) -> None:
    ws.sheet.unlink()
    os.mkfifo(ws.sheet)
    p = sop("begin", "-C", str(ws.root), "--strategy", "Alpha", proc=True, timeout=60, code=5)
    assert "not a regular file" in p.stderr
    ws.sop("status", code=None)
    ws.sop("sweep", code=5)
    assert ws.tree() == {"backtests/Strategy_Master_Filter.xlsx"}


def test_a_huge_run_metadata_is_refused_at_commit_and_reported_by_the_sweep(ws: WS) -> None:
    tx = ws.begin_tx("Alpha")
    meta = ws.root / "backtests" / "Alpha" / "run_metadata.json"
    with open(meta, "wb") as f:                       # sparse: 20 MiB on paper, nothing on disk
        f.write(b'{"run_id": "' + tx["run_id"].encode() + b'", "pad": "')
        f.truncate(20 << 20)
    p = ws.sop("commit", tx["txid"], code=1)
    assert "more than the limit" in p.stderr
    assert ws.json("status")["transactions"][0]["state"] == "begun"


def test_a_fifo_as_run_metadata_does_not_hang_the_gate(ws: WS) -> None:
    tx = ws.begin_tx("Alpha")
    os.mkfifo(ws.root / "backtests" / "Alpha" / "run_metadata.json")
    p = sop("commit", "-C", str(ws.root), tx["txid"], proc=True, timeout=60, code=1)
    assert "FIFO" in p.stderr


# ---------------------------------------------------------------- values

def test_nan_infinities_and_overflowing_numbers_are_stored_as_text(ws: WS) -> None:
    import openpyxl
    wb = openpyxl.Workbook()
    wb.active.append(["Strategy", "RunID", "A", "B", "C", "D", "E"])
    wb.save(ws.sheet)
    tx = ws.begin_tx("Alpha")
    (ws.root / "backtests" / "Alpha" / "run_metadata.json").write_text(
        f'{{"run_id": "{tx["run_id"]}", "metrics": {{"A": NaN, "B": Infinity, "C": -Infinity, "D": 1e400, '
        '"E": 123456789012345678901}}')
    ws.sop("commit", tx["txid"])
    assert ws.rows()[1][2:] == ["NaN", "Infinity", "-Infinity", "1e400", "123456789012345678901"]
    assert "null" not in json.dumps([r for r in ws.records() if r["type"] == "append"])


def test_the_gate_and_the_sweep_read_run_metadata_alike(ws: WS) -> None:
    meta = {}
    for name, body in (("Nan", '"m": NaN'), ("Big", '"m": 1e999'), ("Plain", '"m": 1')):
        tx = ws.begin_tx(name)
        meta[name] = ws.root / "backtests" / name / "run_metadata.json"
        meta[name].write_text(f'{{"run_id": "{tx["run_id"]}", {body}}}')
        ws.sop("commit", tx["txid"])
    ws.sop("sweep", "--exit-code")                   # what the gate accepted, the sweep can read
    for bad, why in ((b"\xef\xbb\xbf", "byte-order mark"), (None, "UTF-16")):
        tx = ws.begin_tx("Bom" if bad else "Wide")
        text = f'{{"run_id": "{tx["run_id"]}"}}'
        p = ws.root / "backtests" / ("Bom" if bad else "Wide") / "run_metadata.json"
        p.write_bytes(bad + text.encode() if bad else text.encode("utf-16"))
        assert why in ws.sop("commit", tx["txid"], code=1).stderr     # refused by both, never accepted by one
        ws.sop("abort", tx["txid"], "--delete")
    ws.sop("sweep", "--exit-code")


def test_exit_code_after_a_fix_that_fixed_everything_is_zero(ws: WS) -> None:
    import shutil
    tx = ws.full_run("Gone")
    (ws.root / "backtests" / "Gone" / "run_metadata.json").write_bytes(b"{broken")
    shutil.rmtree(ws.root / "runs" / tx["run_id"])    # orphaned row, then a zombie folder with broken metadata
    ws.sop("sweep", "--exit-code", code=1)
    ws.sop("sweep", "--fix", "--exit-code")
    assert not (ws.root / "backtests" / "Gone").exists()
    ws.sop("sweep", "--exit-code")


def test_metadata_with_lone_surrogates_or_deep_nesting_is_refused(ws: WS) -> None:
    tx = ws.begin_tx("Alpha")
    meta = ws.root / "backtests" / "Alpha" / "run_metadata.json"
    for body, why in ((f'{{"run_id": "{tx["run_id"]}", "x": "\\ud800"}}', "surrogate"),
                      (f'{{"run_id": "{tx["run_id"]}", "x": ' + "[" * 5000 + "]" * 5000 + "}", "nested"),
                      (f'{{"run_id": "{tx["run_id"]}", "x": ' + '{"a":' * 5000 + "1" + "}" * 5001, "nested")):
        meta.write_text(body)
        p = ws.sop("commit", tx["txid"], "--json", code=1)
        assert why in str(_one_error(p, 1)["message"])


# ---------------------------------------------------------------- tracebacks become one error

@pytest.mark.parametrize("args", [("begin", "--strategy", "\udcff\udcfe"), ("commit", "\udcff"),
                                  ("release", "\udcff"), ("log", "--strategy", "\udcff"),
                                  ("abort", "\udcff"), ("status", "--older-than", "\udcff")])
def test_arguments_that_are_not_utf8_give_one_json_document(ws: WS, args: tuple[str, ...]) -> None:
    before = _state(ws)
    p = ws.sop(*args, "--json", code=None)
    doc = json.loads(p.stdout)
    assert p.returncode in (0, 1, 2, 4) and ("error" in doc) == (p.returncode != 0)
    assert _state(ws) == before


def test_arguments_that_are_not_utf8_through_a_real_process(ws: WS) -> None:
    import subprocess
    import sys

    from conftest import BIN, scrubbed_env
    p = subprocess.run([sys.executable, str(BIN / "sop-begin"), "-C", str(ws.root), "--json",
                        "--strategy", os.fsdecode(b"\xff\xfe")], env=scrubbed_env(), capture_output=True,
                       timeout=60)
    assert p.returncode == 1 and json.loads(p.stdout)["error"]["code"] == 1 and b"Traceback" not in p.stderr


@pytest.mark.parametrize("body", ['{"Strategy": "\\ud800"}', "[" * 5000 + "]" * 5000,
                                  '{"Strategy": "A", "x": ' + "[" * 5000 + "]" * 5000 + "}"],
                         ids=["surrogate", "deep-list", "deep-value"])
def test_hostile_directives_are_one_refusal(ws: WS, tmp_path: Path, body: str) -> None:
    d = tmp_path / "d.json"
    d.write_text(body)
    before = _state(ws)
    _one_error(ws.sop("begin", "--directive", str(d), "--json", code=1), 1)
    assert _state(ws) == before


@pytest.mark.parametrize("line", ["backoff_seconds = inf", "backoff_seconds = nan", "timeout_seconds = 1e308",
                                  "retries = 100000000000", "stale_owner_hours = -1"])
def test_config_numbers_out_of_range_are_a_usage_error(ws: WS, line: str) -> None:
    (ws.root / ".sop" / "config.toml").write_text(f"[lock]\n{line}\n")
    _one_error(ws.sop("status", "--json", code=2), 2)


@pytest.mark.parametrize("dur", ["-5d", "-1s", "1e300d", "inf", "nan", "99999999999w"])
def test_negative_or_overflowing_durations_are_refused(ws: WS, dur: str) -> None:
    _one_error(ws.sop("recover", "--older-than", dur, "--json", code=2), 2)
    _one_error(ws.sop("status", "--older-than", dur, "--json", code=2), 2)
    ws.sop("log", "--since", dur, code=2)


# ---------------------------------------------------------------- a stale owner file

def test_a_stale_owner_file_says_how_old_it_is_and_how_to_clear_it(ws: WS) -> None:
    owner = ws.sheet.parent / f"~${ws.sheet.name}"
    owner.write_bytes(b"\x03Ana" + b"\x00" * 50)
    three_days = time.time() - 3 * 86400
    os.utime(owner, (three_days, three_days))
    st = ws.json("status")["sheet"]
    assert st["owner_file"]["stale"] is True and "3 days old" in st["locked_by"]
    tx = ws.begin_tx("Alpha")
    ws.write_metadata("Alpha", tx["run_id"])
    p = ws.sop("commit", tx["txid"], code=3)
    assert "3 days old" in p.stderr and "left over" in p.stderr and f"delete {owner}" in p.stderr
    (ws.root / ".sop" / "config.toml").write_text("[lock]\nretries = 1\nstale_owner_hours = 100\n")
    st = ws.json("status")["sheet"]
    assert st["owner_file"]["stale"] is False and "possibly stale" not in st["locked_by"]
    owner.unlink()                                     # what the hint says to do, once nobody has it open
    assert ws.json("status")["sheet"]["locked_by"] is None


# ---------------------------------------------------------------- workbook shapes (fixed on main)

def test_workbook_shapes_from_the_issue_have_their_tests() -> None:
    """``<sheetData />`` and a cell past XFD are covered in test_xlsx_shapes.py; this keeps them there."""
    text = (Path(__file__).parent / "test_xlsx_shapes.py").read_text()
    assert "test_empty_sheet_data_with_a_space" in text and "past column XFD" in text
