"""Plumbing: the transaction state machine (SPEC §4), in one place.

A run goes ``begun`` → ``committing`` → ``committed``, or ``begun`` →
``deferred`` (the decision is on record, the sheet was locked) →
``committed``; a rollback passes through ``aborting`` (its decision on
record) to ``aborted``.  A sweep starts ``planned`` and ends ``committed``.
:data:`TRANSITIONS` says which record types each state allows; replay
(:func:`journal.wal.apply`) and ``sop-fsck`` enforce it.  No imports: the
command line reads these names at start-up.
"""

from __future__ import annotations

STATES = ("begun", "committing", "deferred", "committed", "aborting", "aborted", "planned")
OPEN_STATES = ("begun", "committing", "deferred", "aborting", "planned")
DECIDED_STATES = ("committing", "deferred")          # the commit decision is on record; only the row is missing
COMMITTABLE_STATES = ("begun", *DECIDED_STATES)
OPEN = "open"                                         # a filter that means every state in OPEN_STATES
STATE_CHOICES = (*STATES, OPEN)

# record type -> (states it may follow, state it leads to or None to keep)
TRANSITIONS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "begin": (("",), "begun"),
    "mkdir": (("begun",), None),
    "decide": (("begun",), "committing"),
    "defer": (("committing",), "deferred"),
    "append": (("committing", "deferred", "planned"), None),
    "committed": (("committing", "deferred", "committed"), "committed"),
    "rollback": (("begun", "committing", "deferred", "aborting"), "aborting"),
    "rename": (("aborting", "planned"), None),
    "delete": (("aborting", "planned"), None),
    "remove_row": (("planned",), None),
    "aborted": (("aborting", "aborted"), "aborted"),
    "plan": (("",), "planned"),
    "done": (("planned",), "committed"),
    "adopt": (("begun",), "committed"),         # recovery found the begun run's row on the sheet
    "restored": (("planned",), None),            # sop-restore put a committed run's lost row back
    "lost_accepted": (("planned",), None),       # a sweep quarantined a lost row's folders: the sheet is accepted
    "released": (("planned",), None),            # sop-release freed a strategy's slot
    "abandon": (("planned",), "aborted"),        # a sweep whose plan could not go on, given up by a person
}
