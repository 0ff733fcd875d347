"""The command line: click commands only, and nothing imports this module.

Each command parses its options, calls one library function, and prints.
Errors become exit codes in one place (:func:`_call`), from the error tree
alone: every :class:`~journal.errors.SopError` carries its exit status, and a
result that still means failure after it is printed (``sop-fsck`` on damage,
``sop-recover`` with rows waiting, ``sop-sweep --exit-code`` with findings)
names its error class too.  With ``--json`` stdout holds exactly one JSON
document (:func:`journal.render.to_json`, written a piece at a time by
:func:`journal.render.json_text`): the result, or
``{"error": {"code": N, "message": "…"}}``.  Messages for people go to
stderr; stdout carries only what a script needs or the report asked for.

Task modules are imported inside the commands, so ``sop-begin`` starts
fast and a module that fails to import fails its own command loudly (a
traceback) without hiding any command from ``sop --help``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn

import click

from . import __version__, errors
from .states import STATE_CHOICES

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _safe(text: str) -> str:
    """Text that any stream can carry: a lone surrogate (from bytes that were not UTF-8) as its escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class Out:
    """What the common options asked for, and how to speak."""

    def __init__(self, root: str | None, as_json: bool, quiet: bool) -> None:
        self.root = root
        self.json = as_json
        self.quiet = quiet
        self.color = sys.stderr.isatty() and "NO_COLOR" not in os.environ

    def say(self, text: str, fg: str | None = None, bold: bool = False) -> None:
        """A message for people (stderr), unless quiet."""
        if not self.quiet:
            text = _safe(text)
            click.echo(click.style(text, fg=fg, bold=bold) if self.color and (fg or bold) else text, err=True)

    def data(self, doc: Any) -> None:
        # A lone surrogate (an argument or a path that was not UTF-8) goes out as its JSON escape.
        click.echo(_safe(json.dumps(doc, indent=2, ensure_ascii=not _utf8(sys.stdout), default=str)))

    def result(self, res: Any) -> None:
        """A result as the one JSON document on stdout, written a few thousand pieces at a time."""
        from .render import json_text
        _echo_chunks(json_text(res, ensure_ascii=not _utf8(sys.stdout)), sep="", safe=True)

    def error(self, e: errors.SopError) -> None:
        """An error: its JSON document, or its message (and what to do) on stderr."""
        if self.json:
            from .render import error_doc
            self.data({"error": error_doc(e.exit_code, e.message, e.detail)})
            return
        click.echo((click.style("error: ", fg="red", bold=True) if self.color else "error: ") + _safe(e.message),
                   err=True)
        if e.detail:
            click.echo(_safe(e.detail), err=True)


def _echo_chunks(pieces: Iterable[str], sep: str, safe: bool = False, per_chunk: int = 4096) -> None:
    """Echo ``sep.join(pieces)`` and a newline on stdout, a chunk at a time: a long text is never held whole."""
    chunk: list[str] = []
    lead = ""
    for piece in pieces:
        chunk.append(piece)
        if len(chunk) >= per_chunk:
            text = lead + sep.join(chunk)
            click.echo(_safe(text) if safe else text, nl=False)
            chunk.clear()
            lead = sep
    text = lead + sep.join(chunk) if chunk else ""
    click.echo(_safe(text) if safe else text)


def _utf8(stream: Any) -> bool:
    return (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "") == "utf8"


def _safe_streams() -> None:
    """Output never fails for a character the stream's code page lacks (Windows' ANSI page on a pipe).

    Text gets a backslash escape there; JSON is written as ASCII with
    ``\\u`` escapes, so a script still reads the exact name.
    """
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and not _utf8(stream) and hasattr(stream, "reconfigure"):
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors="backslashreplace")


def common(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command has: -C/--root, --json, -q/--quiet, --version, --help."""
    @click.option("-C", "--root", "root", metavar="DIR", default=None,
                  help="The workspace root (default: $SOP_ROOT, else the nearest folder above holding .sop/).")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
    @click.option("-q", "--quiet", is_flag=True, help="No messages for people on stderr.")
    @click.version_option(__version__, "--version", prog_name="sop")
    @functools.wraps(f)
    def wrapper(root: str | None, as_json: bool, quiet: bool, **kw: Any) -> Any:
        return f(Out(root, as_json, quiet), **kw)
    return wrapper


def _call(out: Out, fn: Callable[[], Any]) -> Any:
    """Run one library call; an error becomes its message and exit status."""
    try:
        with _store_warnings(out):
            return fn()
    except errors.SopError as e:
        _fail(out, e)
    except OSError as e:
        _fail(out, errors.IOFailure(f"I/O error: {e}", detail="Nothing was reported done that was not; run "
                                    "'sop-recover' to finish or roll back what this left open, then try again."))
    except KeyboardInterrupt:
        _fail(out, errors.Interrupted("interrupted",
                                      detail="Run 'sop-recover' to finish or roll back what this left open."))


@contextlib.contextmanager
def _store_warnings(out: Out) -> Iterator[None]:
    """Say each :class:`~journal.errors.StoreWarning` the call raised once on stderr; other warnings pass on."""
    held: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", errors.StoreWarning)
            try:
                yield
            finally:
                held = list(caught)
    finally:
        said: set[str] = set()
        for w in held:
            if not issubclass(w.category, errors.StoreWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            elif str(w.message) not in said:
                said.add(str(w.message))
                out.say(f"warning: {w.message}", fg="yellow")


def _fail(out: Out, e: errors.SopError) -> NoReturn:
    out.error(e)
    sys.exit(e.exit_code)


def _exit_for(e: errors.SopError | None) -> None:
    """After the result is printed: exit with the status of the error it still carries, if any."""
    if e is not None:
        sys.exit(e.exit_code)


def _need_strategy(out: Out, strategy: str | None, directive: str | None) -> None:
    if strategy is None and directive is None:
        _fail(out, errors.UsageError("no strategy given", detail="Pass --strategy NAME or --directive FILE."))


# ---------------------------------------------------------------- init, begin, commit, abort, run

@click.command("init", context_settings=CONTEXT)
@click.option("--from-journal", is_flag=True,
              help="Rebuild a missing Master Sheet from the journal: its committed rows, with their values.")
@click.option("--store", type=click.Choice(["files", "postgresql"]), default=None,
              help="Where the journal lives; postgresql creates its tables and moves a file journal there.")
@click.option("--dsn", default=None, metavar="DSN",
              help="The PostgreSQL connection string to record in [journal] dsn (with --store postgresql).")
@common
def init_cmd(out: Out, from_journal: bool, store: str | None, dsn: str | None) -> None:
    """Create .sop/ (and the Master Sheet when it is missing) in the workspace root.

    The root is -C DIR, else $SOP_ROOT, else the working directory.  An
    existing sheet is accepted as it is and never rewritten.  A missing sheet
    in a workspace whose journal holds committed rows is refused (exit 5):
    restore it from a backup, or rebuild it with --from-journal.
    --store postgresql creates the PostgreSQL journal store (many hosts),
    moves an existing file journal into it and sets [journal] in the config.
    """
    from . import porcelain
    root = out.root or os.environ.get("SOP_ROOT") or os.getcwd()
    res = _call(out, lambda: porcelain.init(root, from_journal=from_journal, store=store, dsn=dsn))
    if out.json:
        out.result(res)
    else:
        out.say(f"Initialised sop workspace in {res.root}")
        for c in res.created:
            out.say(f"  created {c}")


@click.command("begin", context_settings=CONTEXT)
@click.option("--strategy", metavar="NAME", help="The strategy to run (or give it in --directive).")
@click.option("--run-id", metavar="ID", help="The run id (default: a fresh, unique one).")
@click.option("--directive", metavar="FILE", type=click.Path(dir_okay=False),
              help="A directive file (JSON, TOML or YAML) with Strategy and optionally RunID.")
@click.option("--owner-pid", metavar="PID", type=int,
              help="The process that owns the transaction (scripts: --owner-pid $$). "
                   "Default: $SOP_OWNER_PID, else the calling process.")
@common
def begin_cmd(out: Out, strategy: str | None, run_id: str | None, directive: str | None,
              owner_pid: int | None) -> None:
    """The gatekeeper: refuse, or open a transaction and create the run's folders.

    Reads the Master Sheet first.  Refuses (exit 1, nothing created) an
    unsafe name, a strategy or run id held by an open transaction, a strategy
    already on a row, a run id on a row or with a runs/ folder, and a zombie
    strategy folder.  On success prints the txid alone on stdout.
    """
    from . import owner, porcelain
    _need_strategy(out, strategy, directive)

    def go() -> Any:
        pid = owner_pid if owner_pid is not None else owner.default_owner_pid()
        return porcelain.begin(strategy, run_id=run_id, directive=directive, owner_pid=pid, root=out.root)
    res = _call(out, go)
    if out.json:
        out.result(res)
    else:
        click.echo(res.txid)
        out.say(f"Began {res.txid}: strategy '{res.strategy}', run {res.run_id}")


@click.command("commit", context_settings=CONTEXT)
@click.argument("txid")
@click.option("--defer-on-lock", is_flag=True,
              help="If the sheet stays locked, keep the artifacts and defer (as on_locked = \"defer\").")
@common
def commit_cmd(out: Out, txid: str, defer_on_lock: bool) -> None:
    """The validation gate, then append the run's row to the Master Sheet.

    A failed gate exits 1 and leaves the transaction open to fix and commit
    again, or abort.  A sheet locked through every retry exits 3 after
    rolling back (or deferring).  Committing again exits 0 and writes nothing.
    """
    from . import porcelain
    res = _call(out, lambda: porcelain.commit(txid, defer_on_lock=defer_on_lock, root=out.root))
    if out.json:
        out.result(res)
    elif res.already:
        out.say(f"{txid} is already committed; nothing to do")
    else:
        out.say(f"Committed '{res.strategy}' (run {res.run_id}) as row {res.row} of the Master Sheet", fg="green")


@click.command("abort", context_settings=CONTEXT)
@click.argument("txid")
@click.option("--delete", is_flag=True, help="Delete the run's folders instead of quarantining them.")
@common
def abort_cmd(out: Out, txid: str, delete: bool) -> None:
    """Roll a transaction back: quarantine its folders to NAME_FAILED_<ts>, or --delete them."""
    from . import porcelain
    res = _call(out, lambda: porcelain.abort(txid, delete=delete, root=out.root))
    if out.json:
        out.result(res)
    elif res.already:
        out.say(f"{txid} is already aborted; nothing to do")
    else:
        _say_moved(out, res)
        out.say(f"Aborted {txid}", fg="yellow")


def _say_moved(out: Out, res: Any) -> None:
    for src, dst in res.moved.items():
        out.say(f"quarantined {src} -> {dst}")
    for d in res.deleted:
        out.say(f"deleted {d}")


@click.command("run", context_settings={**CONTEXT, "allow_interspersed_args": False})
@click.option("--strategy", metavar="NAME", help="The strategy to run (or give it in --directive).")
@click.option("--run-id", metavar="ID", help="The run id (default: a fresh, unique one).")
@click.option("--directive", metavar="FILE", type=click.Path(dir_okay=False), help="A directive file.")
@click.option("--defer-on-lock", is_flag=True, help="Defer instead of rolling back when the sheet stays locked.")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- CMD [ARG]...")
@common
def run_cmd(out: Out, strategy: str | None, run_id: str | None, directive: str | None, defer_on_lock: bool,
            cmd: tuple[str, ...]) -> None:
    """Begin, run CMD, commit on exit 0, abort otherwise.

    CMD runs with SOP_ROOT, SOP_TXID, SOP_STRATEGY, SOP_RUN_ID,
    SOP_STRATEGY_DIR and SOP_RUN_DIR set; SIGINT and SIGTERM are forwarded
    to it.  Exits with CMD's status when it fails, else with the commit's.
    """
    from . import porcelain
    _need_strategy(out, strategy, directive)
    res = _call(out, lambda: porcelain.run(list(cmd), strategy, run_id=run_id, directive=directive,
                                           root=out.root, defer_on_lock=defer_on_lock,
                                           stdout=_stderr_fd() if out.json else None))
    if out.json:
        out.result(res)
    else:
        if res.error is not None:
            click.echo("error: " + res.error.message, err=True)
            if res.error.detail:
                click.echo(res.error.detail, err=True)
        if res.state == "committed":
            out.say(f"Committed '{res.strategy}' (run {res.run_id}) as row {res.row}", fg="green")
        elif res.command_status != 0:
            out.say(f"Command exited {res.command_status}; {res.txid} rolled back", fg="yellow")
            if res.abort:
                for src, dst in res.abort.moved.items():
                    out.say(f"quarantined {src} -> {dst}")
    sys.exit(res.status)


def _stderr_fd() -> int:
    """Where CMD's stdout goes under --json (stdout holds one JSON document): our stderr, or nowhere."""
    for stream in (sys.stderr, sys.__stderr__):
        if stream is None:
            continue
        try:
            return stream.fileno()
        except (AttributeError, OSError, ValueError):       # a stream without a descriptor (embedded, captured)
            continue
    import subprocess

    return subprocess.DEVNULL


# ---------------------------------------------------------------- recover, status

@click.command("recover", context_settings=CONTEXT)
@click.option("--dry-run", is_flag=True, help="Say what would be done; change nothing.")
@click.option("--older-than", metavar="DUR", default="24h", show_default=True,
              help="A transaction whose owner ran on another host is abandoned after this long.")
@click.option("--force", is_flag=True, help="Also roll back transactions whose owner is alive.")
@common
def recover_cmd(out: Out, dry_run: bool, older_than: str, force: bool) -> None:
    """Finish or roll back abandoned transactions, after a crash.

    Cuts a torn journal tail, rolls forward every transaction whose commit
    decision is on record (when the sheet is free), finishes half-done
    rollbacks and sweeps, rolls back other abandoned transactions, and
    removes temporary files of interrupted writes.  Safe to run twice.
    """
    from . import recovery
    res = _call(out, lambda: recovery.recover(root=out.root, dry_run=dry_run, older_than=older_than, force=force))
    if out.json:
        out.result(res)
    else:
        verb = "would" if dry_run else "did"
        if not res.actions:
            out.say("Nothing to recover.")
        for a in res.actions:
            who = f" {a.txid} ({a.strategy}, run {a.run_id})" if a.txid and a.strategy else (f" {a.txid}" if a.txid
                                                                                            else "")
            state = "" if dry_run else (" — done" if a.done else " — not done")
            out.say(f"{verb}: {a.action}{who}{': ' + a.detail if a.detail else ''}{state}")
        for t in res.live:
            out.say(f"left alone (live): {t.txid} ({t.strategy}, {t.state}), {t.liveness}")
        if res.lost.rows:
            out.say(f"LOST ROWS: {res.lost.message}", fg="red", bold=True)
    if res.error is not None and not out.json:
        out.error(res.error)
    _exit_for(res.error)


@click.command("status", context_settings=CONTEXT)
@click.option("--older-than", metavar="DUR", default="24h", show_default=True,
              help="When an owner on another host counts as abandoned.")
@common
def status_cmd(out: Out, older_than: str) -> None:
    """Open transactions with owners and liveness, who holds the sheet, and the journal's health."""
    from . import porcelain
    res = _call(out, lambda: porcelain.status(root=out.root, older_than=older_than))
    if out.json:
        out.result(res)
        return
    lines = [f"workspace: {res.root}"]
    j = res.journal
    health = "ok" if j["ok"] else f"DAMAGED: {j['damage']}"
    lines.append(f"journal:   {health}, {j['records']} record(s)" + (f"; torn tail: {j['torn']}" if j["torn"] else ""))
    s = res.sheet
    lines.append(f"sheet:     {s['path']}" + ("" if s["exists"] else " (missing)") +
                 (f" — LOCKED by {s['locked_by']}" if s["locked_by"] else " — free"))
    if s["damage"]:
        lines.append(f"           cannot be read: {s['damage']}")
    if res.lost.rows:
        lines.append(f"LOST ROWS: {res.lost.message}")
        lines += [f"  {r['txid']}  {r['strategy']} (run {r['run_id']}), was row {r['row'] or '?'}"
                  for r in res.lost.rows]
    if not res.transactions:
        lines.append("no open transactions")
    else:
        lines.append(f"{len(res.transactions)} open transaction(s):")
        for t in res.transactions:
            owner = t.owner or {}
            flag = " ABANDONED" if t.abandoned else ""
            lines.append(f"  {t.txid}  {t.state:<10} {t.strategy} (run {t.run_id})  since {t.begun_at}  "
                         f"owner {owner.get('user', '?')}@{owner.get('host', '?')} pid {owner.get('pid', '?')}: "
                         f"{t.liveness}{flag}")
    click.echo("\n".join(lines))


# ---------------------------------------------------------------- sweep

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
@click.option("--accept-sheet", is_flag=True,
              help="Accept the sheet as it is when it looks like a stale save: quarantine the folders of the "
                   "committed rows it lost (restorable with sop-restore) instead of changing nothing.")
@click.option("--exit-code", is_flag=True,
              help="Exit 1 when a finding other than quarantined, in_flight or abandoned remains.")
@common
def sweep_cmd(out: Out, fix: bool, report: str | None, purge_failed: bool, older_than: str | None,
              accept_sheet: bool, exit_code: bool) -> None:
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
    from . import janitor
    bar = _Bar(float(os.environ.get("SOP_PROGRESS_DELAY", "0.5"))) if sys.stderr.isatty() and not out.quiet else None
    try:
        res = _call(out, lambda: janitor.sweep(root=out.root, fix=fix, report=report, purge_failed=purge_failed,
                                               older_than=older_than, accept_sheet=accept_sheet, progress=bar))
    finally:
        if bar is not None:
            bar.close()
    if out.json:
        out.result(res)
    else:
        _echo_chunks(janitor.report_lines(res), sep="\n")     # a report of a million findings is never held whole
        _sweep_summary(out, res)
    if exit_code and res.remaining_count:
        _exit_for(errors.FindingsRemain(f"{res.remaining_count} finding(s) remain"))


def _sweep_summary(out: Out, res: Any) -> None:
    """One screen on stderr: what was checked, counts by kind, what was done, where the report is."""
    mode = "dry run, nothing changed" if res.dry_run else (
        f"fixed in {res.txid}" if res.txid else
        ("fix, nothing changed" if res.remaining_count else "fix, nothing to do"))
    entries = f"{res.folders} entr{'y' if res.folders == 1 else 'ies'} under backtests/ and runs/"
    out.say(f"Swept {res.root} ({mode}): {res.rows} row(s), {entries}.", bold=True)
    for a in res.recovery:
        if a.action:
            out.say(f"  recovered first: {a.action} {a.txid}".rstrip())
    tally = res.tally
    if not any(t.found for t in tally.values()):
        out.say("  No findings: the sheet and the disk agree.", fg="green")
    for kind, t in tally.items():
        if not t.found:
            continue
        if res.dry_run:
            note = f"{t.planned} planned" if t.planned else ""
        else:
            note = f"{t.done} fixed" if t.planned else ""
        out.say(f"  {kind:<18} {t.found:>7}" + (f"   ({note})" if note else ""))
    if res.lost.rows:
        out.say(f"LOST ROWS: {res.lost.message}", fg="red", bold=True)
    person = res.needs_person
    if person:
        out.say(f"Needs a person: {len(person)} finding(s); see the report's 'Needs a person' section.", fg="yellow")
    out.say(f"Report: {res.report}")
    if res.dry_run and any(t.planned for t in tally.values()):
        out.say("Run 'sop-sweep --fix' to do what is planned.")


# ---------------------------------------------------------------- restore, release

@click.command("restore", context_settings=CONTEXT)
@click.argument("txids", nargs=-1, metavar="[TXID]...")
@click.option("--sweep", "sweep_txid", metavar="TXID", help="Put back the rows this sweep removed instead.")
@click.option("--dry-run", is_flag=True, help="Say what would be put back; change nothing.")
@common
def restore_cmd(out: Out, txids: tuple[str, ...], sweep_txid: str | None, dry_run: bool) -> None:
    """Put back rows the journal says are committed but the Master Sheet lost, and their folders.

    Without TXID, every lost row (sop-status lists them); a row that cannot
    come back (its strategy is on the sheet again, held by an open
    transaction, run again since, or its folders are gone) is listed with the
    reason.  A TXID that cannot come back is refused (exit 1, nothing
    changed).  The values come from the journal; folders a sweep quarantined
    come back from quarantine.  --sweep TXID puts back the rows that sweep
    removed.  One journaled transaction, finished by sop-recover after a crash.
    """
    from . import repair
    res = _call(out, lambda: repair.restore(list(txids) or None, sweep=sweep_txid, dry_run=dry_run, root=out.root))
    if out.json:
        out.result(res)
        _exit_for(res.error)
        return
    if not res.items:
        out.say("Nothing to restore: the sheet holds every committed row." if not sweep_txid
                else f"Sweep {sweep_txid} removed no rows.")
    for it in res.items:
        where = f" as row {it.row}" if it.row else ""
        state = "" if dry_run or it.refused else (" — done" if it.done else "")
        would = "would " if dry_run and not it.refused else ""
        out.say(f"{it.strategy} (run {it.run_id}, {it.txid or 'no txid'}): {would}{it.action}{where}{state}",
                fg="yellow" if it.refused else None)
    if res.txid:
        click.echo(res.txid)
    if res.error is not None:
        out.error(res.error)
    _exit_for(res.error)


@click.command("release", context_settings=CONTEXT)
@click.argument("strategy")
@click.option("--delete", is_flag=True, help="Delete the strategy's folders instead of quarantining them.")
@common
def release_cmd(out: Out, strategy: str, delete: bool) -> None:
    """Free a strategy's slot the journaled way: remove its row and quarantine (or delete) its folders.

    What the SOP's "Remove row from Master Sheet to proceed" asks for, as one
    journaled transaction: the row's values and the folders' file lists are
    kept in the journal, and a row removed this way is no loss (one removed
    by hand is a lost row).  Refused while a transaction holds the strategy.
    """
    from . import repair
    res = _call(out, lambda: repair.release(strategy, delete=delete, root=out.root))
    if out.json:
        out.result(res)
        return
    if res.row:
        out.say(f"removed row {res.row} ('{res.strategy}', run {res.run_id})")
    _say_moved(out, res)
    out.say(f"Released '{res.strategy}' in {res.txid}; 'sop-begin --strategy {res.strategy}' can run it again.",
            fg="green")
    click.echo(res.txid)


# ---------------------------------------------------------------- log, fsck

def _stdout_color() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


@click.command("log", context_settings=CONTEXT)
@click.argument("txid_arg", metavar="[TXID]", required=False)
@click.option("--txid", metavar="TXID", help="Only this transaction, listed like the others (TXID shows it in full).")
@click.option("--strategy", metavar="NAME",
              help="A strategy's whole life: its transactions, and the sweeps whose steps name it.")
@click.option("--since", metavar="WHEN", help="Transactions with a record at or after WHEN (2026-03-01, 3d, 2h).")
@click.option("--until", metavar="WHEN", help="Transactions with a record at or before WHEN (a date: that whole day).")
@click.option("--state", "states", metavar="STATE", multiple=True,
              type=click.Choice(STATE_CHOICES, case_sensitive=False),
              help="Only transactions in this state (repeatable; 'open' = not finished).")
@common
def log_cmd(out: Out, txid_arg: str | None, txid: str | None, strategy: str | None, since: str | None,
            until: str | None, states: tuple[str, ...]) -> None:
    """The audit history: every transaction and its records, newest first.

    Each transaction shows its state, owner (user, host, pid), when it began
    and last changed, and its records: folders created, renamed or deleted
    (with their file lists), rows appended or removed (with their values),
    and each decision with its reason.  TXID shows one transaction in full
    (exit 4 when there is none).  Filters combine.  WHEN is an ISO date or
    time (UTC unless it says otherwise) or an age: 90m, 2h, 3d, 1w.
    """
    from . import audit
    if txid_arg and txid and txid_arg != txid:
        _fail(out, errors.UsageError(f"two transactions given: {txid_arg} and --txid {txid}", detail="Give one."))
    want = txid_arg or txid
    res = _call(out, lambda: audit.log(root=out.root, txid=want, strategy=strategy, since=since, until=until,
                                       state=list(states) or None))
    if out.json:
        out.result(res)
        return
    if res.torn:
        out.say(f"note: the journal has a torn tail ({res.torn}); 'sop-recover' cuts it off")
    if not res.transactions:
        out.say("no transactions")
        return
    color = _stdout_color()
    style: Any = click.style if color else audit.plain
    text = audit.format_log(res, full=txid_arg is not None, style=style)
    if sys.stdout.isatty():
        click.echo_via_pager(text + "\n", color=color)
    else:
        click.echo(text)


@click.command("fsck", context_settings=CONTEXT)
@common
def fsck_cmd(out: Out) -> None:
    """Verify the whole journal, read-only: exit 0 when sound, 5 at the first damaged record.

    Checks each record's checksum, the hash chain, that sequence numbers run
    on across segments without a gap, duplicate or swap, that records follow
    the transaction state machine, and that sealed segments match their
    digests in the checkpoint.  A torn tail is reported but is not damage:
    'sop-recover' cuts it off.
    """
    from . import audit
    res = _call(out, lambda: audit.fsck(root=out.root))
    if out.json:
        out.result(res)
    else:
        click.echo(audit.format_fsck(res))
        if res.damage is not None:
            out.say("error: the journal is damaged; see the report above", fg="red", bold=True)
    _exit_for(res.error)


# ---------------------------------------------------------------- help

@click.command("help", context_settings=CONTEXT)
@click.argument("command", required=False)
def help_cmd(command: str | None) -> None:
    """Show the manual page of a command (sop help begin)."""
    from .manpages import show
    sys.exit(show(command))


# ---------------------------------------------------------------- entry points

COMMANDS: dict[str, click.Command] = {
    "init": init_cmd, "begin": begin_cmd, "commit": commit_cmd, "abort": abort_cmd, "run": run_cmd,
    "recover": recover_cmd, "status": status_cmd, "sweep": sweep_cmd, "restore": restore_cmd,
    "release": release_cmd, "log": log_cmd, "fsck": fsck_cmd,
}


@click.group("sop", context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="sop")
def sop() -> None:
    """sop keeps a backtest workspace honest: one strategy, one row, every change journaled.

    'sop CMD ...' is the same as 'sop-CMD ...'.  'sop help CMD' shows a manual page.
    """


for _name, _cmd in COMMANDS.items():
    sop.add_command(_cmd, _name)
sop.add_command(help_cmd, "help")


def _as_program(command: click.Command, prog_name: str) -> NoReturn:
    """Run a command as the program, then leave without tearing the interpreter down.

    Freeing every module's objects one by one costs a command ~20 ms at exit (click, msgspec,
    the workbook engine…) that the kernel does at once when the process ends.  Only when nothing
    else needs the orderly exit: the exit status is a number, the streams flush, one thread
    runs, no PostgreSQL connection waits to be closed (the locks are released already, and
    the kernel would drop them anyway), and no profiler, tracer or coverage tool waits to
    write its report (``python -m cProfile bin/sop-commit …``).  Anything else leaves the
    ordinary way, as click does.
    """
    _safe_streams()
    try:
        command(prog_name=prog_name)
        code: object = 0
    except SystemExit as e:
        code = 0 if e.code is None else e.code
    import threading

    if (isinstance(code, int) and threading.active_count() == 1 and "psycopg" not in sys.modules
            and sys.getprofile() is None and sys.gettrace() is None and not sys.flags.inspect):
        try:
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:
                    stream.flush()
        except (OSError, ValueError):
            raise SystemExit(code) from None       # a closed pipe: the interpreter says so, as it always did
        os._exit(code)
    raise SystemExit(code)


def main() -> None:
    _as_program(sop, "sop")


def _entry(name: str) -> Callable[[], None]:
    def run() -> None:
        _as_program(COMMANDS[name], f"sop-{name}")
    run.__name__ = f"{name}_main"
    return run


init_main = _entry("init")
begin_main = _entry("begin")
commit_main = _entry("commit")
abort_main = _entry("abort")
run_main = _entry("run")
recover_main = _entry("recover")
status_main = _entry("status")
sweep_main = _entry("sweep")
restore_main = _entry("restore")
release_main = _entry("release")
log_main = _entry("log")
fsck_main = _entry("fsck")
