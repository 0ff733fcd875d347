"""The command line: click commands only.

Each command parses its options, calls one library function, prints, and
maps errors to exit codes in one place (:func:`_call`).  With ``--json``
stdout holds exactly one JSON document: the result, or
``{"error": {"code": N, "message": "…"}}``.  Messages for people go to
stderr; stdout carries only what a script needs or the report asked for.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from . import __version__

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


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
            click.echo(click.style(text, fg=fg, bold=bold) if self.color and (fg or bold) else text, err=True)

    def data(self, doc: Any) -> None:
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False, default=str))


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
    from .errors import SopError
    try:
        return fn()
    except SopError as e:
        _fail(out, e.exit_code, e.message, e.detail)
    except OSError as e:
        _fail(out, 5, f"I/O error: {e}", "Nothing was reported done that was not; run 'sop-recover' to finish "
                                          "or roll back what this left open, then try again.")
    except KeyboardInterrupt:
        _fail(out, 130, "interrupted", "Run 'sop-recover' to finish or roll back what this left open.")


def _fail(out: Out, code: int, message: str, detail: str | None = None) -> None:
    if out.json:
        err: dict[str, Any] = {"code": code, "message": message}
        if detail:
            err["detail"] = detail
        out.data({"error": err})
    else:
        click.echo((click.style("error: ", fg="red", bold=True) if out.color else "error: ") + message, err=True)
        if detail:
            click.echo(detail, err=True)
    sys.exit(code)


# ---------------------------------------------------------------- commands

@click.command("init", context_settings=CONTEXT)
@common
def init_cmd(out: Out) -> None:
    """Create .sop/ (and the Master Sheet when it is missing) in the workspace root.

    The root is -C DIR, else $SOP_ROOT, else the working directory.  An
    existing sheet is accepted as it is and never rewritten.
    """
    from . import porcelain
    root = out.root or os.environ.get("SOP_ROOT") or os.getcwd()
    res = _call(out, lambda: porcelain.init(root))
    if out.json:
        out.data(porcelain.as_dict(res))
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
    if strategy is None and directive is None:
        _fail(out, 2, "no strategy given", "Pass --strategy NAME or --directive FILE.")

    def go() -> Any:
        pid = owner_pid if owner_pid is not None else owner.default_owner_pid()
        return porcelain.begin(strategy, run_id=run_id, directive=directive, owner_pid=pid, root=out.root)
    res = _call(out, go)
    if out.json:
        out.data(porcelain.as_dict(res))
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
        out.data(porcelain.as_dict(res))
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
        out.data(porcelain.as_dict(res))
    elif res.already:
        out.say(f"{txid} is already aborted; nothing to do")
    else:
        for src, dst in res.moved.items():
            out.say(f"quarantined {src} -> {dst}")
        for d in res.deleted:
            out.say(f"deleted {d}")
        out.say(f"Aborted {txid}", fg="yellow")


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
    if strategy is None and directive is None:
        _fail(out, 2, "no strategy given", "Pass --strategy NAME or --directive FILE.")
    res = _call(out, lambda: porcelain.run(list(cmd), strategy, run_id=run_id, directive=directive,
                                           root=out.root, defer_on_lock=defer_on_lock,
                                           stdout=sys.stderr.fileno() if out.json else None))
    doc = {"txid": res.txid, "strategy": res.strategy, "run_id": res.run_id, "command_status": res.command_status,
           "state": res.state, "status": res.status}
    if res.commit is not None:
        doc["row"] = res.commit.row
    if res.error is not None:
        doc["error"] = {"code": res.error.exit_code, "message": res.error.message}
    if out.json:
        out.data(doc)
    else:
        if res.error is not None:
            click.echo(("error: ") + res.error.message, err=True)
            if res.error.detail:
                click.echo(res.error.detail, err=True)
        if res.state == "committed":
            out.say(f"Committed '{res.strategy}' (run {res.run_id}) as row {doc.get('row')}", fg="green")
        elif res.command_status != 0:
            out.say(f"Command exited {res.command_status}; {res.txid} rolled back", fg="yellow")
            if res.abort:
                for src, dst in res.abort.moved.items():
                    out.say(f"quarantined {src} -> {dst}")
    sys.exit(res.status)


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
    from . import porcelain, recovery
    res = _call(out, lambda: recovery.recover(root=out.root, dry_run=dry_run, older_than=older_than, force=force))
    if out.json:
        out.data(porcelain.as_dict(res))
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
    if res.waiting_for_sheet and not dry_run:
        sys.exit(3)


@click.command("status", context_settings=CONTEXT)
@click.option("--older-than", metavar="DUR", default="24h", show_default=True,
              help="When an owner on another host counts as abandoned.")
@common
def status_cmd(out: Out, older_than: str) -> None:
    """Open transactions with owners and liveness, who holds the sheet, and the journal's health."""
    from . import porcelain
    res = _call(out, lambda: porcelain.status(root=out.root, older_than=older_than))
    if out.json:
        d = porcelain.as_dict(res)
        out.data({"transactions": [{k: t[k] for k in ("txid", "strategy", "run_id", "state", "owner", "abandoned",
                                                      "alive", "liveness", "begun_at")}
                                   for t in d["transactions"]],
                  "sheet": d["sheet"], "journal": d["journal"], "root": d["root"]})
        return
    lines = [f"workspace: {res.root}"]
    j = res.journal
    health = "ok" if j["ok"] else f"DAMAGED: {j['damage']}"
    lines.append(f"journal:   {health}, {j['records']} record(s)" + (f"; torn tail: {j['torn']}" if j["torn"] else ""))
    s = res.sheet
    lines.append(f"sheet:     {s['path']}" + ("" if s["exists"] else " (missing)") +
                 (f" — LOCKED by {s['locked_by']}" if s["locked_by"] else " — free"))
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


@click.command("help", context_settings=CONTEXT)
@click.argument("command", required=False)
def help_cmd(command: str | None) -> None:
    """Show the manual page of a command (sop help begin)."""
    from .manpages import show
    sys.exit(show(command))


# ---------------------------------------------------------------- entry points

COMMANDS: dict[str, click.Command] = {
    "init": init_cmd, "begin": begin_cmd, "commit": commit_cmd, "abort": abort_cmd, "run": run_cmd,
    "recover": recover_cmd, "status": status_cmd,
}


def _lazy(name: str, module: str, attr: str) -> None:
    try:
        mod = __import__(f"journal.{module}", fromlist=[attr])
        COMMANDS[name] = getattr(mod, attr)
    except (ImportError, AttributeError):
        pass


_lazy("sweep", "sweep_cli", "sweep_cmd")
_lazy("log", "audit_cli", "log_cmd")
_lazy("fsck", "audit_cli", "fsck_cmd")


@click.group("sop", context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="sop")
def sop() -> None:
    """sop keeps a backtest workspace honest: one strategy, one row, every change journaled.

    'sop CMD ...' is the same as 'sop-CMD ...'.  'sop help CMD' shows a manual page.
    """


for _name, _cmd in COMMANDS.items():
    sop.add_command(_cmd, _name)
sop.add_command(help_cmd, "help")


def main() -> None:
    sop(prog_name="sop")


def _entry(name: str) -> Callable[[], None]:
    def run() -> None:
        COMMANDS[name](prog_name=f"sop-{name}")
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
log_main = _entry("log")
fsck_main = _entry("fsck")
