"""Plumbing: finding the workspace, its layout and ``.sop/config.toml``.

The root is ``-C/--root DIR``, else ``$SOP_ROOT``, else the nearest ancestor
of the working directory that holds ``.sop/`` (as git finds ``.git/``).

``.sop/`` holds::

    .sop/config.toml        settings (sop-config(5)); every key optional
    .sop/journal/           the write-ahead journal's segments, nothing else
    .sop/checkpoint.json    digest of sealed segments and open transactions
    .sop/store-id           the PostgreSQL store only: the id of this workspace's database
                            (sop_meta), so that two workspaces never share one journal
    .sop/journal.moved/     the file journal after 'sop init --store postgresql' moved it
    .sop/lock               the workspace lock (filelock)
    .sop/sheet.lock         held while the Master Sheet is being rewritten
    .sop/lost+found/        torn journal tails that were cut off
    .sop/cache/             derived data that may be deleted at any time
    .sop/pending/           hints: one empty file per commit between its start
                            and its decision (``<txid>.<pid>``), so that the
                            sheet's writer can wait a moment and write their
                            rows in the same rewrite (group commit)

:meth:`Workspace.check_store` says whether the file store may write here:
not when ``.sop/`` lies on a network or FUSE file system
(:mod:`journal.fstype`), unless ``[journal] allow_network_fs``.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, NoWorkspace

if TYPE_CHECKING:
    from .fstype import Mount

DEFAULTS: dict[str, dict[str, Any]] = {
    "sheet": {"path": "backtests/Strategy_Master_Filter.xlsx", "worksheet": ""},
    "lock": {"timeout_seconds": 30.0, "retries": 3, "backoff_seconds": 1.0, "on_locked": "rollback",
             "stale_owner_hours": 24.0},
    "sweep": {"zombie_action": "delete", "report": "outputs/logs/integrity_report.md"},
    "journal": {"store": "files", "dsn": "", "allow_network_fs": False},
}

CHOICES = {
    ("lock", "on_locked"): ("rollback", "defer"),
    ("sweep", "zombie_action"): ("delete", "quarantine"),
    ("journal", "store"): ("files", "postgresql"),
}

# The largest sane value of each number: beyond these a wait or retry count is a typo (and
# timedelta/sleep overflow), not a setting.
LIMITS: dict[tuple[str, str], float] = {
    ("lock", "timeout_seconds"): 86400.0,
    ("lock", "retries"): 100,
    ("lock", "backoff_seconds"): 3600.0,
    ("lock", "stale_owner_hours"): 24.0 * 365,
}

CONFIG_TEMPLATE = """\
# sop configuration — see sop-config(5).  Every key is optional; the values
# shown are the defaults.  An unknown key is an error.

[sheet]
# The Master Sheet, relative to the workspace root.
path = "backtests/Strategy_Master_Filter.xlsx"
# The master worksheet; "" means the first worksheet.
worksheet = ""

[lock]
# Seconds to wait for another sop process's workspace lock, then exit 6.
timeout_seconds = 30
# Attempts in all when the sheet is locked (open in Excel).
retries = 3
# Wait before the 2nd attempt, doubled each time; 0 = no wait.
backoff_seconds = 1.0
# When the sheet stays locked at commit: "rollback" (quarantine the run,
# exit 3) or "defer" (keep it; sop-recover adds the row later).
on_locked = "rollback"
# An Office/LibreOffice owner file older than this many hours is called
# possibly stale (left by a crash) in messages; it still locks the sheet.
stale_owner_hours = 24.0

[sweep]
# What the sweep does to zombie folders: "delete" or "quarantine".
zombie_action = "delete"
# Where the sweep writes its Markdown report, relative to the root.
report = "outputs/logs/integrity_report.md"

[journal]
# Where the journal lives: "files" (.sop/journal/, one host) or "postgresql"
# (many hosts; pip install 'sop-journal[postgresql]').
store = "files"
# The PostgreSQL connection string; $SOP_JOURNAL_DSN overrides it.
dsn = ""
# The file store refuses .sop/ on NFS, SMB/CIFS or FUSE, whose locks and
# caches can't be trusted; true accepts it when only one host ever writes.
allow_network_fs = false
"""


@dataclass(frozen=True)
class Config:
    sheet_path: str
    worksheet: str
    lock_timeout: float
    retries: int
    backoff: float
    on_locked: str
    zombie_action: str
    report: str
    stale_owner_hours: float = 24.0
    store: str = "files"
    dsn: str = ""
    allow_network_fs: bool = False


def parse_config(text: str, source: str = "config.toml") -> Config:
    """Validate a config file's text; unknown keys and wrong types are errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}",
                          detail="Fix the file, or delete it to use the defaults.") from None
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in DEFAULTS.items()}
    for section, values in data.items():
        if section not in DEFAULTS or not isinstance(values, dict):
            raise ConfigError(f"{source}: unknown section [{section}]",
                              detail=f"Known sections: {', '.join('[' + s + ']' for s in DEFAULTS)}.")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise ConfigError(f"{source}: unknown key '{key}' in [{section}]",
                                  detail=f"Known keys: {', '.join(DEFAULTS[section])}.")
            default = DEFAULTS[section][key]
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not type(default):
                raise ConfigError(f"{source}: [{section}] {key} must be a {type(default).__name__}, "
                                  f"not {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{source}: [{section}] {key} must be a finite number, not {value!r}")
            if isinstance(value, (int, float)) and value < 0:
                raise ConfigError(f"{source}: [{section}] {key} must not be negative")
            limit = LIMITS.get((section, key))
            if limit is not None and value > limit:
                raise ConfigError(f"{source}: [{section}] {key} must be at most {limit:g}, not {value!r}")
            if isinstance(value, str) and ("\x00" in value or any("\ud800" <= c <= "\udfff" for c in value)):
                raise ConfigError(f"{source}: [{section}] {key} holds a NUL or a lone surrogate")
            allowed = CHOICES.get((section, key))
            if allowed and value not in allowed:
                raise ConfigError(f"{source}: [{section}] {key} must be one of "
                                  f"{', '.join(repr(a) for a in allowed)}, not {value!r}")
            merged[section][key] = value
    if merged["lock"]["retries"] < 1:
        raise ConfigError(f"{source}: [lock] retries must be at least 1 (attempts in all)")
    if not merged["sheet"]["path"]:
        raise ConfigError(f"{source}: [sheet] path must not be empty")
    return Config(
        sheet_path=merged["sheet"]["path"], worksheet=merged["sheet"]["worksheet"],
        lock_timeout=merged["lock"]["timeout_seconds"], retries=merged["lock"]["retries"],
        backoff=merged["lock"]["backoff_seconds"], on_locked=merged["lock"]["on_locked"],
        zombie_action=merged["sweep"]["zombie_action"], report=merged["sweep"]["report"],
        stale_owner_hours=merged["lock"]["stale_owner_hours"],
        store=merged["journal"]["store"], dsn=merged["journal"]["dsn"],
        allow_network_fs=merged["journal"]["allow_network_fs"],
    )


STORE_FIX = ('Action: use the PostgreSQL store ([journal] store = "postgresql" in .sop/config.toml, see '
             'sop-config(5)), or, when only one host ever writes this workspace, set [journal] '
             'allow_network_fs = true.')


@dataclass(frozen=True)
class Workspace:
    """A workspace root, its settings and its paths."""

    root: Path
    config: Config

    @property
    def sop_dir(self) -> Path:
        return self.root / ".sop"

    @property
    def journal_dir(self) -> Path:
        return self.sop_dir / "journal"

    @property
    def checkpoint_path(self) -> Path:
        return self.sop_dir / "checkpoint.json"

    @property
    def anchor_path(self) -> Path:
        return self.sop_dir / "anchor.json"

    @property
    def lock_path(self) -> Path:
        return self.sop_dir / "lock"

    @property
    def sheet_lock_path(self) -> Path:
        return self.sop_dir / "sheet.lock"

    @property
    def lost_found(self) -> Path:
        return self.sop_dir / "lost+found"

    @property
    def pending_dir(self) -> Path:
        return self.sop_dir / "pending"

    @property
    def cache_dir(self) -> Path:
        return self.sop_dir / "cache"

    @property
    def sheet(self) -> Path:
        return self.root / self.config.sheet_path

    @property
    def backtests(self) -> Path:
        return self.root / "backtests"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def report(self) -> Path:
        return self.root / self.config.report

    def strategy_dir(self, name: str) -> Path:
        return self.backtests / name

    def run_dir(self, run_id: str) -> Path:
        return self.runs / run_id

    def check_report_path(self, path: Path) -> None:
        """Refuse (exit 1) a sweep report path that would replace something that is not a report.

        Not the Master Sheet or a file beside it that Office or sop owns,
        nothing under ``.sop/`` (the journal, its checkpoint, the locks),
        nothing under ``backtests/`` or ``runs/`` (the artifacts and their
        metadata), and not a link, a folder or a special file.
        """
        from .errors import Refused
        name = path.name
        why = None
        try:
            real = Path(os.path.realpath(path.parent)) / name
        except (OSError, ValueError):
            real = path
        if name in ("", ".", ".."):
            why = "it names no file"
        elif os.path.islink(path):
            why = "it is a symbolic link (sop never writes through one)"
        elif os.path.lexists(path) and not os.path.isfile(path):
            why = "it is not a regular file"
        elif name.startswith("~$") or name.startswith(".~lock.") or ".sop-tmp-" in name:
            why = "it is named like an Office owner file or a sop temporary file"
        else:
            sheet = Path(os.path.realpath(self.sheet))
            for label, top in (("the Master Sheet", sheet), (".sop/ (the journal and sop's state)", self.sop_dir),
                               ("backtests/ (the artifacts)", self.backtests),
                               ("runs/ (the run snapshots)", self.runs)):
                tops = {Path(os.path.normcase(top)), Path(os.path.normcase(os.path.realpath(top)))}
                for cand in (Path(os.path.normcase(path)), Path(os.path.normcase(real))):
                    if any(cand == t or t in cand.parents for t in tops):
                        why = f"it is {label}" if top == sheet else f"it is inside {label}"
                        break
                if why:
                    break
        if why:
            raise Refused(f"refusing to write the sweep report to {path}: {why}.",
                          detail="Action: pass --report with a path outside backtests/, runs/ and .sop/ "
                                 "(the default is outputs/logs/integrity_report.md), or fix [sweep] report.")

    def check_store(self, *, write: bool = True) -> Mount | None:
        """Refuse (UnsafeStore, exit 2) to write the file store on a network or FUSE file system.

        There ``flock`` may be granted to every host at once and client
        caches hide records other hosts appended (:mod:`journal.fstype`), so
        two hosts would fork the journal.  Every command that writes passes
        here before it changes anything: when it takes the workspace lock
        or the sheet writer's lock (:class:`journal.txn.Session`), and in
        ``sop init``.  ``write=False`` (a read-only command) warns instead
        (:class:`~journal.errors.StoreWarning`).  Nothing is refused with
        ``[journal] store = "postgresql"`` (the journal is not in ``.sop/``)
        or ``allow_network_fs = true``.  Returns the network mount, if any;
        after the first call for a workspace it costs a dictionary look-up.
        """
        from . import fstype
        from .errors import StoreWarning, UnsafeStore
        if self.config.store != "files":
            return None
        m = fstype.network_mount(self.sop_dir)
        if m is None or self.config.allow_network_fs:
            return m
        what = f"{m.fstype} at {m.point}"
        if write:
            raise UnsafeStore(f"refusing to write: the workspace's .sop/ is on a network file system ({what}), "
                              "where the file store's lock and journal cannot be trusted between hosts; nothing "
                              "was changed", detail=STORE_FIX)
        warnings.warn(StoreWarning(f".sop/ is on a network file system ({what}): commands that write are "
                                   f"refused there. {STORE_FIX}"), stacklevel=2)
        return m

    def rel(self, path: Path) -> str:
        """A path as shown in messages and the journal: relative to the root, ``/``-separated."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


RootArg = str | os.PathLike[str] | Workspace | None      # a workspace folder, or an open workspace


def with_store(text: str, store: str, dsn: str | None) -> str:
    """Config text with ``[journal] store`` (and ``dsn`` when given) set; every other line kept as it was."""
    want = {"store": json.dumps(store)}
    if dsn is not None:
        want["dsn"] = json.dumps(dsn, ensure_ascii=False)
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip() == "[journal]"), None)
    if start is None:
        lines += ["", "[journal]", *(f"{k} = {v}" for k, v in want.items())]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        for k, v in want.items():
            at = next((i for i in range(start + 1, end) if lines[i].split("=")[0].strip() == k), None)
            if at is None:
                lines.insert(start + 1, f"{k} = {v}")
                end += 1
            else:
                lines[at] = f"{k} = {v}"
    out = "\n".join(lines) + "\n"
    parse_config(out)                                  # never write a config that would not load
    return out


def find_root(root: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
              cwd: str | os.PathLike[str] | None = None) -> Path:
    """The workspace root, as SPEC §1 says; :class:`NoWorkspace` when there is none."""
    env = os.environ if env is None else env
    hint = "Run 'sop init' in the workspace folder, or pass -C/--root DIR."
    if root is None and env.get("SOP_ROOT"):
        root = env["SOP_ROOT"]
    if root is not None:
        p = Path(root).absolute()
        if not (p / ".sop").is_dir():
            raise NoWorkspace(f"not a sop workspace: {p} (no .sop/ folder)", detail=hint)
        return p
    here = Path(cwd or os.getcwd()).absolute()
    for candidate in (here, *here.parents):
        if (candidate / ".sop").is_dir():
            return candidate
    raise NoWorkspace(f"not a sop workspace: no .sop/ in {here} or any folder above it", detail=hint)


def load_config(root: Path) -> Config:
    path = root / ".sop" / "config.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    return parse_config(text, ".sop/config.toml")


def open_workspace(root: RootArg = None, env: Mapping[str, str] | None = None) -> Workspace:
    """Find the root and load its config; an open workspace is returned as it is.

    Every API function takes ``root`` as a folder or an open workspace (as
    dulwich's functions take a path or a repo), so one command opens its
    workspace once and passes it down.
    """
    if isinstance(root, Workspace):
        return root
    r = find_root(root, env)
    return Workspace(r, load_config(r))
