"""The ``sop-sweep`` command: click only; the work is :func:`journal.janitor.sweep`.

Stdout carries the report a person asked for (the Markdown report, or with
``--json`` one JSON document); a one-screen summary goes to stderr, with a
progress bar on a terminal while a long scan runs.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import click

from .cli import CONTEXT, Out, _call, common


class _Bar:
    """A progress bar on stderr, shown only once the sweep has run for ``delay`` seconds (short ones stay quiet).

    ``$SOP_PROGRESS_DELAY`` sets the delay (tests set 0).
    """

    def __init__(self, delay: float = 0.5) -> None:
        self.start = time.monotonic()
        self.delay = delay
        self.bar: Any = None
        self.phase = ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        if total <= 0 or (self.bar is None and time.monotonic() - self.start < self.delay):
            return
        if self.bar is None or phase != self.phase:
            self.close()
            self.bar = click.progressbar(length=total, label=phase.ljust(18), file=sys.stderr, width=30)
            self.bar.__enter__()
            self.phase = phase
        self.bar.update(max(0, min(done, total) - self.bar.pos))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@click.command("sweep", context_settings=CONTEXT)
@click.option("--fix", is_flag=True,
              help="Recover first, then repair what the sweep finds, as one journaled transaction. "
                   "Default: a dry run that writes only the report.")
@click.option("--report", "report", metavar="PATH", type=click.Path(dir_okay=False),
              help="Write the Markdown report here (default: [sweep] report, outputs/logs/integrity_report.md).")
@click.option("--purge-failed", is_flag=True,
              help="Also delete quarantined NAME_FAILED_<ts> folders older than --older-than (with --fix).")
@click.option("--older-than", metavar="DUR",
              help="With --purge-failed: the age, read from <ts>, past which a quarantined folder goes "
                   "(90s, 15m, 24h, 7d, 2w).")
@click.option("--exit-code", is_flag=True,
              help="Exit 1 when a finding other than quarantined, in_flight or abandoned remains.")
@common
def sweep_cmd(out: Out, fix: bool, report: str | None, purge_failed: bool, older_than: str | None,
              exit_code: bool) -> None:
    """The janitor: compare the Master Sheet with backtests/*/ and runs/*/.

    Finds orphaned rows, zombie strategy folders and run snapshots, identity
    mismatches, duplicate rows, quarantined folders, in-flight and abandoned
    transactions, and unsafe entries (links, files, names sop refuses).
    A dry run (the default) writes only the report.  --fix recovers first,
    then removes orphaned rows and deletes (or quarantines, per [sweep]
    zombie_action) zombies in one journaled transaction that sop-recover
    finishes after a crash.  Duplicates, mismatches and unsafe entries are
    left for a person.  Links are never followed.
    """
    from . import janitor as sw
    bar = _Bar(float(os.environ.get("SOP_PROGRESS_DELAY", "0.5"))) if sys.stderr.isatty() and not out.quiet else None
    try:
        res = _call(out, lambda: sw.sweep(root=out.root, fix=fix, report=report, purge_failed=purge_failed,
                                          older_than=older_than, progress=bar))
    finally:
        if bar is not None:
            bar.close()
    if out.json:
        out.data(res.as_json())
    else:
        click.echo(sw.render_report(res), nl=False)
        _summary(out, res)
    if exit_code and res.remaining:
        sys.exit(1)


def _summary(out: Out, res: Any) -> None:
    """One screen on stderr: what was checked, counts by kind, what was done, where the report is."""
    mode = "dry run, nothing changed" if res.dry_run else (f"fixed in {res.txid}" if res.txid else "fix, nothing to do")
    entries = f"{res.folders} entr{'y' if res.folders == 1 else 'ies'} under backtests/ and runs/"
    out.say(f"Swept {res.root} ({mode}): {res.rows} row(s), {entries}.", bold=True)
    for a in res.recovery:
        if a.get("action"):
            out.say(f"  recovered first: {a['action']} {a.get('txid', '')}".rstrip())
    counts = res.counts
    if not any(counts.values()):
        out.say("  No findings: the sheet and the disk agree.", fg="green")
    for kind, n in counts.items():
        if not n:
            continue
        fs = [f for f in res.findings if f.kind == kind]
        if res.dry_run:
            acted = sum(1 for f in fs if f.steps)
            note = f"{acted} planned" if acted else ""
        else:
            acted = sum(1 for f in fs if f.done)
            note = f"{acted} fixed" if any(f.steps for f in fs) else ""
        out.say(f"  {kind:<18} {n:>7}" + (f"   ({note})" if note else ""))
    person = [f for f in res.remaining if f.kind in ("duplicate_row", "identity_mismatch", "unsafe_entry")]
    if person:
        out.say(f"Needs a person: {len(person)} finding(s); see the report's 'Needs a person' section.", fg="yellow")
    out.say(f"Report: {res.report}")
    if res.dry_run and any(f.steps for f in res.findings):
        out.say("Run 'sop-sweep --fix' to do what is planned.")
