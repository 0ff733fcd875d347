"""The one error tree.  Each class carries the exit status of SPEC §6.

Errors are raised close to the code that knows why; ``cli.py`` turns them
into an exit status and a message in one place.  A message says what
happened first, on one line, and what to do next after it.
"""

from __future__ import annotations


class SopError(Exception):
    """Root of every error sop raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.message if not self.detail else f"{self.message}\n{self.detail}"


class Refused(SopError):
    """A gate refused: gatekeeper, validation or unsafe input.  Nothing changed."""

    exit_code = 1


class UsageError(SopError):
    """Bad usage, or no workspace found."""

    exit_code = 2


class NoWorkspace(UsageError):
    """No ``.sop/`` above the working directory and no ``--root``."""


class ConfigError(UsageError):
    """``.sop/config.toml`` is not valid."""


class UnsafeStore(UsageError):
    """The workspace's file system cannot hold the file store safely; nothing changed.

    ``.sop/`` on a network or FUSE file system (see :mod:`journal.fstype`),
    or a workspace lock the file system will not give.  Exit 2, like a bad
    config: every command that writes fails the same way until a person
    changes the setup (``[journal] store`` or ``allow_network_fs``, or the
    folder), so it is not a gate's verdict on one run (exit 1), and retrying
    or ``sop-recover`` cannot help.
    """


class StoreWarning(UserWarning):
    """A read-only command looked at a workspace whose file system the file store would refuse to write."""


class SheetLocked(SopError):
    """The Master Sheet stayed locked (open in Excel); the run was rolled back or deferred."""

    exit_code = 3

    def __init__(self, message: str, *, locked_by: str | None = None, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.locked_by = locked_by


class NoSuchTransaction(SopError):
    """No such transaction, or not in a state that allows this."""

    exit_code = 4


class WrongState(NoSuchTransaction):
    """The transaction exists but its state does not allow the call."""


class Damaged(SopError):
    """The journal or the sheet cannot be trusted; see ``sop-fsck``."""

    exit_code = 5


class JournalDamaged(Damaged):
    """A record before the tail fails verification."""


class SheetDamaged(Damaged):
    """The workbook cannot be read or written safely."""


class Busy(SopError):
    """The workspace lock was not acquired in time."""

    exit_code = 6


class FolderBusy(Busy, OSError):
    """A folder could not be renamed or deleted because a program holds a file in it (Windows).

    Also an ``OSError``, so code that rolls back on an OS error still does.
    """


class FindingsRemain(SopError):
    """``sop-sweep --exit-code``: findings that need fixing remain (a check for scripts, not a failure)."""

    exit_code = 1


class IOFailure(Damaged):
    """An operating-system error stopped a command half-way; the journal says what was done."""

    exit_code = 5


class Interrupted(SopError):
    """Ctrl-C: the command stopped where it was; recovery finishes or rolls back what it left open."""

    exit_code = 130
