#!/usr/bin/env python3
"""The five-minute tour: a fresh sop workspace and the SOP's three outcomes, with the real commands.

    python3 -m pip install . && python3 examples/demo.py [PATH]

It makes PATH (default ./example-workspace) a workspace with ``sop init``
and runs the bundled moving-average backtest (examples/tools/run_stage1.py):

1. a successful run: the row is added to the Master Sheet;
2. the same strategy again: refused by the gatekeeper (HARD_STOP, exit 1);
3. a run that fails half-way under ``sop-run``: rolled back, its folders
   quarantined as ``_FAILED_<ts>``;

then shows a zombie folder being refused, the janitor's dry run
(``sop-sweep``) with its integrity report, ``sop-status`` and ``sop-log``.
It checks each outcome and exits 1 if one is not what the SOP says.

It never clobbers a folder it did not make: a non-empty PATH is reused only
when it holds a workspace that this demo created (it starts that one over).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGE1 = REPO / "examples" / "tools" / "run_stage1.py"
MARKER = ".sop-demo"
HEADERS = ["Strategy", "RunID", "Sharpe", "CAGR", "Max Drawdown", "Trades", "Win Rate", "TxID", "CommittedAt"]
SHEET = Path("backtests") / "Strategy_Master_Filter.xlsx"

failures: list[str] = []


# ---------------------------------------------------------------- finding the commands

def child_env() -> dict[str, str]:
    """The environment for every command: no SOP_* of the caller's, and sop importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOP_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_COLOR"] = "1"
    if importlib.util.find_spec("journal") is None:          # not installed: use the checkout
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def tool(name: str) -> list[str]:
    """How to run ``sop``/``sop-*``: the installed script, else the checkout's bin/ shim."""
    for cand in (Path(sysconfig.get_path("scripts")) / name, shutil.which(name)):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return [str(cand)]
    return [sys.executable, str(REPO / "bin" / name)]


def works(name: str) -> bool:
    """Whether a command has landed in this install (``sop-sweep``, ``sop-log`` may not have)."""
    try:
        p = subprocess.run([*tool(name), "--help"], capture_output=True, text=True, env=child_env(), timeout=60)
    except OSError:
        return False
    return p.returncode == 0


# ---------------------------------------------------------------- output

def step(title: str) -> None:
    print(f"\n== {title} " + "=" * max(3, 74 - len(title)))


def say(text: str) -> None:
    print(text)


def show_cmd(argv: list[str], ws: Path) -> str:
    shown = []
    for a in argv:
        if a == sys.executable:
            shown.append("python3")
        elif a.startswith(str(REPO / "bin")):
            continue                                          # a shim: show the command's name only
        elif os.path.isabs(a) and os.path.exists(a):
            try:
                rel = os.path.relpath(a, ws)
            except ValueError:                                # another drive than the workspace's (Windows)
                rel = a
            if Path(a).parent == Path(sysconfig.get_path("scripts")) or shutil.which(Path(a).name) == a:
                shown.append(Path(a).name)
            else:
                shown.append(rel if rel.count("..") <= 1 else a)
        else:
            shown.append(a)
    if argv[0] == sys.executable and len(argv) > 1 and argv[1].startswith(str(REPO / "bin")):
        shown = [Path(argv[1]).name, *shown[1:]]
    return " ".join(shown)


def run(argv: list[str], ws: Path, *, expect: int | None = 0, must_say: str = "",
        what: str = "") -> subprocess.CompletedProcess[str]:
    """Run one command in the workspace, print it like a terminal would, check the outcome."""
    print(f"$ {show_cmd(argv, ws)}")
    p = subprocess.run(argv, cwd=ws, env=child_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=600)
    for line in p.stdout.rstrip("\n").splitlines():
        print(f"  {line}")
    print(f"  [exit {p.returncode}]")
    if expect is not None and p.returncode != expect:
        failures.append(f"{what or show_cmd(argv, ws)}: exit {p.returncode}, expected {expect}")
    if must_say and must_say not in p.stdout:
        failures.append(f"{what or show_cmd(argv, ws)}: did not say {must_say!r}")
    return p


def print_sheet(ws: Path) -> None:
    """The Master Sheet's rows, as a person would see them in Excel."""
    from openpyxl import load_workbook
    wb = load_workbook(ws / SHEET, read_only=True, data_only=True)
    try:
        rows = [["" if v is None else v for v in r] for r in wb.worksheets[0].iter_rows(values_only=True)]
    finally:
        wb.close()
    keep = [i for i, h in enumerate(rows[0]) if h in ("Strategy", "RunID", "Sharpe", "CAGR", "Max Drawdown", "Trades")]

    def cell(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    table = [[str(n + 1)] + [cell(r[i]) if i < len(r) else "" for i in keep] for n, r in enumerate(rows)]
    table[0][0] = "row"
    widths = [max(len(r[c]) for r in table) for c in range(len(table[0]))]
    print(f"Master Sheet ({SHEET}):")
    for r in table:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def tree(ws: Path, *folders: str) -> None:
    for folder in folders:
        base = ws / folder
        print(f"{folder}/")
        for p in sorted(base.iterdir()):
            if p.name == SHEET.name:
                continue
            print(f"  {p.name}{'/' if p.is_dir() else ''}")
            if p.is_dir():
                for q in sorted(p.iterdir()):
                    print(f"      {q.name}")


# ---------------------------------------------------------------- the workspace

def refuse(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr)
    raise SystemExit(2)


def prepare(ws: Path) -> None:
    """An empty folder for the demo; refuse one that holds anything the demo did not make."""
    if ws.exists() and not ws.is_dir():
        refuse(f"{ws} exists and is not a folder; pass another path.")
    if ws.is_dir() and any(ws.iterdir()):
        if not ((ws / ".sop").is_dir() and (ws / MARKER).is_file()):
            refuse(f"{ws} is not empty and is not a workspace this demo made; refusing to touch it.\n"
                   "Pass an empty or new folder: python3 examples/demo.py PATH")
        shutil.rmtree(ws)
    ws.mkdir(parents=True, exist_ok=True)
    (ws / MARKER).write_text("made by examples/demo.py; delete the folder when done\n", encoding="utf-8")


def make_sheet(ws: Path) -> None:
    """Bring our own Master Sheet, with metric columns: sop init accepts it as it is."""
    from openpyxl import Workbook
    wb = Workbook()
    sh = wb.active
    sh.title = "Master"
    sh.append(HEADERS)
    (ws / SHEET).parent.mkdir(parents=True, exist_ok=True)
    wb.save(ws / SHEET)


def main(argv: list[str]) -> int:
    if len(argv) > 1 or (argv and argv[0] in ("-h", "--help")):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    ws = Path(argv[0] if argv else "example-workspace").absolute()
    prepare(ws)
    py = sys.executable
    say(f"sop demo: a fresh workspace in {ws}")

    step("1. Set up the workspace")
    say("The Master Sheet is the source of truth: one strategy, one row.  The demo brings its own, with\n"
        "columns for the metrics (Sharpe, CAGR, Max Drawdown, ...); sop init accepts it as it is.")
    make_sheet(ws)
    run([*tool("sop"), "init"], ws, what="sop init")

    step("2. A successful run: the row is added")
    say("run_stage1.py wraps the backtest in journal.transaction(): begin (the gatekeeper), write the\n"
        "artifacts, commit (the validation gate, then the row).")
    run([py, str(STAGE1), "--fast", "10", "--slow", "50"], ws, must_say="indexed MA_Cross_10_50",
        what="first run of MA_Cross_10_50")
    tree(ws, "backtests", "runs")
    print_sheet(ws)

    step("3. The same strategy again: refused (HARD_STOP)")
    say("A re-run needs its row removed from the Master Sheet first: the SOP makes a person free the slot.")
    run([py, str(STAGE1), "--fast", "10", "--slow", "50"], ws, expect=1,
        must_say="Verification Failed: 1-Strategy-1-Row Invariant", what="re-run of MA_Cross_10_50")

    step("4. A run that fails half-way: rolled back")
    say("sop-run begins, runs the command, and commits on exit 0 or quarantines on failure.")
    run([*tool("sop-run"), "--strategy", "MA_Cross_5_20", "--", py, str(STAGE1), "--fast", "5", "--slow", "20",
         "--simulate-failure"], ws, expect=1, must_say="_FAILED_", what="failing run of MA_Cross_5_20")
    quarantined = sorted(p.name for p in (ws / "backtests").glob("MA_Cross_5_20_FAILED_*"))
    if not quarantined or (ws / "backtests" / "MA_Cross_5_20").exists():
        failures.append("the failed run was not quarantined to backtests/MA_Cross_5_20_FAILED_<ts>/")
    tree(ws, "backtests")

    step("5. A folder copied in by hand: a zombie")
    say("$ mkdir backtests/MA_Cross_20_100     (someone copied results in, without a row)")
    (ws / "backtests" / "MA_Cross_20_100").mkdir()
    (ws / "backtests" / "MA_Cross_20_100" / "notes.txt").write_text("copied by hand\n", encoding="utf-8")
    run([*tool("sop-begin"), "--strategy", "MA_Cross_20_100"], ws, expect=1, must_say="Zombie Artifact detected",
        what="sop-begin on a zombie")

    step("6. The janitor: sop-sweep (dry run)")
    if works("sop-sweep"):
        say("A dry run changes nothing but its report; 'sop-sweep --fix' would delete the zombie.")
        p = run([*tool("sop-sweep")], ws, what="sop-sweep")
        report = ws / "outputs" / "logs" / "integrity_report.md"
        if not report.is_file():
            failures.append(f"sop-sweep wrote no report at {report.relative_to(ws)}")
        elif report.read_text(encoding="utf-8").strip() in p.stdout:
            say(f"(the report above is also in {report.relative_to(ws)})")
        else:
            say(f"\n{report.relative_to(ws)}:")
            for line in report.read_text(encoding="utf-8").splitlines():
                print(f"  {line}")
    else:
        say("(skipped: sop-sweep is not in this install yet)")

    step("7. Status and the audit trail")
    run([*tool("sop-status")], ws, what="sop-status")
    if works("sop-log"):
        run([*tool("sop-log")], ws, what="sop-log")
    else:
        say("(skipped: sop-log is not in this install yet)")

    step("Done")
    if failures:
        say("Something did not behave as the SOP says:")
        for f in failures:
            say(f"  - {f}")
        return 1
    say(f"All three outcomes behaved as the SOP says.  The workspace is in {ws}:\n"
        f"  cd {os.path.relpath(ws)} && sop-status      # then try sop-sweep --fix, sop help, ...")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
