"""The command line of the audit trail: ``sop-log`` and ``sop-fsck`` (click commands only).

Like :mod:`journal.cli`: parse, call one function of :mod:`journal.audit`,
print, and let :func:`journal.cli._call` map errors to exit codes.  The
report goes to stdout; ``sop-log`` pages it and colours it only when stdout
is a terminal, and never colours with ``NO_COLOR`` set.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from .cli import CONTEXT, Out, _call, _fail, common

STATE_CHOICES = ("begun", "committing", "deferred", "committed", "aborting", "aborted", "planned", "open")


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
        _fail(out, 2, f"two transactions given: {txid_arg} and --txid {txid}", "Give one.")
    want = txid_arg or txid
    res = _call(out, lambda: audit.log(root=out.root, txid=want, strategy=strategy, since=since, until=until,
                                       state=list(states) or None))
    if out.json:
        out.data(audit.as_json(res))
        return
    if res.torn:
        out.say(f"note: the journal has a torn tail ({res.torn}); 'sop-recover' cuts it off")
    if not res.transactions:
        out.say("no transactions")
        return
    color = _stdout_color()
    style: Any = click.style if color else audit._plain
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
        out.data(audit.fsck_json(res))
    else:
        click.echo(audit.format_fsck(res))
        if res.damage is not None:
            out.say("error: the journal is damaged; see the report above", fg="red", bold=True)
    if not res.ok:
        sys.exit(5)
