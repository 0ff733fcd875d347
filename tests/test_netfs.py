"""Many hosts, one workspace: the file store refuses a network file system, and owners are told apart.

1. ``.sop/`` on NFS, SMB/CIFS or FUSE (sop-config(5) ``allow_network_fs``):
   commands that write exit 2 before anything changes, naming the file
   system type, the mount point and the fix; read-only ones warn once on
   stderr; ``allow_network_fs = true`` lets writes through.  The mount table
   parser on fixed text, then a real FUSE mount (bindfs).  The FUSE test
   skips where bindfs cannot be installed or mounted, with the reason, and
   fails instead when ``$CI`` is set (``.ci/run`` installs bindfs and sets it).
2. An owner's pid is looked up here only when the host name, machine id and
   PID namespace match ours (sop-journal(5) ``owner``): a fake probe, then a
   real PID namespace whose host name is ours.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from conftest import BIN, FAST_CONFIG, WS, scrubbed_env, sop

from journal import errors, fstype, owner
from journal.owner import Host, Owner
from journal.workspace import open_workspace

# ---------------------------------------------------------------- the mount table

MOUNTINFO = r"""22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
25 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
30 22 0:40 / /mnt/data rw,relatime shared:20 - nfs4 srv:/export rw,vers=4.2
31 30 8:2 / /mnt/data/local rw,relatime shared:21 - ext4 /dev/sdb1 rw
32 22 0:41 / /mnt/data2 rw,relatime - ext4 /dev/sdc1 rw
33 22 0:42 / /home/ana/My\040Share rw,nosuid,nodev master:3 - fuse.sshfs ana@box:/srv/my\040share rw
34 22 0:43 / /srv/x rw - ext4 /dev/sdd1 rw
35 34 0:44 / /srv/x rw - cifs //nas/x rw
36 22 0:45 / /media/usb rw - fuseblk /dev/sde1 rw
this line is not a mount
"""


def test_mountinfo_parses_fields_after_the_separator_and_decodes_octal_escapes() -> None:
    mounts = fstype.parse_mountinfo(MOUNTINFO)
    assert len(mounts) == 9                                     # the broken line is skipped
    share = mounts[5]
    assert share == fstype.Mount("/home/ana/My Share", "fuse.sshfs", "ana@box:/srv/my share")
    assert mounts[2] == fstype.Mount("/mnt/data", "nfs4", "srv:/export")     # optional fields before "-"
    assert fstype.unescape(r"a\011b\134c\012") == "a\tb\\c\n"


@pytest.mark.parametrize("path,point,fs", [
    ("/mnt/data/results/.sop", "/mnt/data", "nfs4"),
    ("/mnt/data", "/mnt/data", "nfs4"),
    ("/mnt/data/local/ws/.sop", "/mnt/data/local", "ext4"),     # a local disk mounted inside the share
    ("/mnt/data2/ws/.sop", "/mnt/data2", "ext4"),               # /mnt/data is a string prefix, not a parent
    ("/home/ana/My Share/ws/.sop", "/home/ana/My Share", "fuse.sshfs"),
    ("/srv/x/ws", "/srv/x", "cifs"),                            # mounted over: the later mount wins
    ("/tmp/ws/.sop", "/", "ext4"),
])
def test_the_longest_mount_point_that_is_a_prefix_holds_the_path(path: str, point: str, fs: str) -> None:
    m = fstype.mount_of(path, fstype.parse_mountinfo(MOUNTINFO))
    assert m is not None and (m.point, m.fstype) == (point, fs)


@pytest.mark.parametrize("fs,network", [
    ("nfs", True), ("nfs4", True), ("cifs", True), ("smb3", True), ("smbfs", True), ("fuse", True),
    ("fuse.sshfs", True), ("fuse.glusterfs", True), ("fuse.rclone", True), ("9p", True), ("afs", True),
    ("ceph", True), ("lustre", True), ("gpfs", True), ("davfs", True), ("fusefs.sshfs", True), ("macfuse", True),
    ("fuseblk", False), ("ext4", False), ("xfs", False), ("btrfs", False), ("apfs", False), ("NTFS", False),
    ("tmpfs", False), ("overlay", False),
])
def test_network_types(fs: str, network: bool) -> None:
    assert fstype.is_network_type(fs) is network


def test_unc_paths_are_shares() -> None:
    assert fstype.unc_share(r"\\server\share\ws\.sop") == r"\\server\share"
    assert fstype.unc_share(r"\\?\UNC\server\share\ws") == r"\\server\share"
    assert fstype.unc_share("//server/share/ws") == r"\\server\share"
    assert fstype.unc_share(r"\\?\C:\ws") is None and fstype.unc_share(r"C:\ws") is None
    assert fstype.unc_share(r"\\server") is None


def test_this_machine_finds_the_mount_of_a_local_folder(tmp_path: Path) -> None:
    m = fstype.find_mount(str(tmp_path))
    if sys.platform.startswith("linux"):
        assert m is not None and str(tmp_path).startswith(m.point)
        assert not m.network, f"the tests' temporary folder {tmp_path} is on {m.fstype}: sop refuses to write there"


# ---------------------------------------------------------------- the refusal, with a stand-in mount

SHARE = fstype.Mount("/mnt/share", "fuse.sshfs", "ana@box:/srv")


@pytest.fixture
def on_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every path is on an sshfs mount (the real mount is in test_a_real_fuse_mount...)."""
    monkeypatch.setattr(fstype, "network_mount", lambda path: SHARE)


def test_writes_are_refused_with_the_type_the_mount_point_and_the_fix(ws: WS, on_share: None) -> None:
    journal_before, tree_before = ws.records(), ws.tree()
    p = ws.sop("begin", "--strategy", "S", code=2)
    assert "fuse.sshfs at /mnt/share" in p.stderr and 'store = "postgresql"' in p.stderr
    assert "allow_network_fs = true" in p.stderr and "nothing was changed" in p.stderr
    doc = ws.json("release", "S", code=2)
    assert doc["error"]["code"] == 2 and "fuse.sshfs" in doc["error"]["message"]
    assert ws.records() == journal_before and ws.tree() == tree_before


def test_read_only_commands_warn_once_and_work(ws: WS, on_share: None) -> None:
    for cmd, args in (("status", ()), ("log", ()), ("fsck", ()), ("sweep", ()), ("recover", ("--dry-run",)),
                      ("restore", ("--dry-run",))):
        p = ws.sop(cmd, *args)
        assert p.stderr.count("warning: .sop/ is on a network file system (fuse.sshfs at /mnt/share)") == 1, cmd
        assert "-q" not in args and ws.sop(cmd, *args, "-q").stderr == "", cmd


def test_allow_network_fs_lets_writes_through_and_names_the_share_when_busy(ws: WS, on_share: None) -> None:
    (ws.root / ".sop" / "config.toml").write_text(FAST_CONFIG + "[journal]\nallow_network_fs = true\n")
    tx = ws.full_run("S", sharpe=1.0)
    assert ws.rows()[1][:2] == ["S", tx["run_id"]]
    assert "warning" not in ws.sop("status").stderr
    (ws.root / ".sop" / "config.toml").write_text(
        FAST_CONFIG.replace("timeout_seconds = 20", "timeout_seconds = 0.1") + "[journal]\nallow_network_fs = true\n")
    p = busy(ws)
    assert "fuse.sshfs at /mnt/share" in p.stderr and "another host" in p.stderr, p.stderr


def busy(ws: WS) -> subprocess.CompletedProcess[str]:
    """sop-begin while another holder has the workspace lock: exit 6, never a hint to run sop-recover."""
    import filelock
    with filelock.FileLock(str(ws.root / ".sop" / "lock")):
        p = ws.sop("begin", "--strategy", "T", code=6)
    assert "sop-recover" not in p.stderr and "wait for it to finish" in p.stderr, p.stderr
    return p


def test_a_local_workspace_s_busy_hint_names_no_other_host(ws: WS) -> None:
    (ws.root / ".sop" / "config.toml").write_text(FAST_CONFIG.replace("timeout_seconds = 20", "timeout_seconds = 0.1"))
    assert "another host" not in busy(ws).stderr


def test_the_postgresql_store_is_not_the_file_store_s_business(tmp_path: Path, on_share: None) -> None:
    import journal
    root = tmp_path / "ws"
    root.mkdir()
    with pytest.raises(errors.UnsafeStore):
        journal.init(root)
    assert not (root / ".sop").exists()                         # sop init refuses before .sop/ is made
    (root / ".sop").mkdir()
    (root / ".sop" / "config.toml").write_text('[journal]\nstore = "postgresql"\n')
    assert open_workspace(root).check_store() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_workspace(root).check_store(write=False) is None


def test_a_lock_the_file_system_refuses_does_not_send_anyone_to_sop_recover(ws: WS,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import filelock

    def refuse(self: object, *a: object, **k: object) -> None:
        raise OSError(37, "No locks available")
    monkeypatch.setattr(filelock.FileLock, "acquire", refuse)
    p = ws.sop("begin", "--strategy", "S", code=2)
    assert "No locks available" in p.stderr and "retrying cannot help" in p.stderr
    assert "run 'sop-recover'" not in p.stderr and "'sop-recover' too" in p.stderr


# ---------------------------------------------------------------- a real FUSE mount

def skip_or_fail(reason: str) -> None:
    """Skip here; fail under CI ($CI set, as .ci/run and the usual CI services do), where the check must run."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{reason}; CI (CI={os.environ['CI']}) must run this test: .ci/run installs bindfs")
    pytest.skip(reason)


@pytest.fixture
def fuse_view(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(real, view): a folder, and the same folder seen through a bindfs (FUSE) mount, unmounted after."""
    if not sys.platform.startswith("linux"):
        pytest.skip("bindfs mounts are tested on Linux")
    exe = shutil.which("bindfs")
    if exe is None:
        skip_or_fail("bindfs is not installed (Debian: apt-get install -y bindfs), so no FUSE mount to test on")
    real, view = tmp_path / "real", tmp_path / "view"
    real.mkdir()
    view.mkdir()
    p = subprocess.run([str(exe), str(real), str(view)], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        skip_or_fail(f"bindfs could not mount (needs /dev/fuse and the right to mount): {p.stderr.strip()}")
    try:
        fstype.forget()
        yield real, view
    finally:
        for cmd in (["fusermount", "-u", str(view)], ["umount", str(view)], ["umount", "-l", str(view)]):
            if shutil.which(cmd[0]) and subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0:
                break
        fstype.forget()


def test_a_real_fuse_mount_refuses_writes_and_allows_reads(fuse_view: tuple[Path, Path]) -> None:
    real, view = fuse_view
    m = fstype.network_mount(view / ".sop")
    assert m is not None and m.fstype.startswith("fuse") and m.point == str(view)
    fresh = view / "fresh"
    fresh.mkdir()
    p = sop("init", "-C", str(fresh), code=2)                    # sop init refuses on the mount, makes nothing
    assert f"at {view})" in p.stderr and list(fresh.iterdir()) == []
    sop("init", "-C", str(real))                                # the workspace, made on the real folder
    (real / ".sop" / "config.toml").write_text(FAST_CONFIG)
    ws, through = WS(real), WS(view)
    tx = ws.begin_tx("Alpha")
    ws.write_metadata("Alpha", tx["run_id"], metrics={"sharpe": 1.5})

    def state() -> tuple[dict[str, bytes], set[str], set[str]]:
        journal = {p.name: p.read_bytes() for p in (real / ".sop" / "journal").iterdir()}
        return journal, ws.tree(), {p.relative_to(real).as_posix() for p in (real / ".sop").rglob("*")}
    before = state()
    for cmd, *args in (("begin", "--strategy", "Beta"), ("commit", tx["txid"]), ("abort", tx["txid"]),
                       ("recover",), ("sweep", "--fix"), ("release", "Alpha")):
        p = through.sop(cmd, *args, code=2)
        assert f"network file system ({m.fstype} at {view})" in p.stderr, (cmd, p.stderr)
        assert "allow_network_fs = true" in p.stderr and 'store = "postgresql"' in p.stderr
    p = through.sop("commit", tx["txid"], code=2, proc=True)     # a real process: the same exit and message
    assert f"({m.fstype} at {view})" in p.stderr
    assert state() == before and len(ws.rows()) == 1
    for cmd, *args in (("status",), ("log",), ("fsck",), ("recover", "--dry-run")):
        p = through.sop(cmd, *args)
        assert p.stderr.count(f"warning: .sop/ is on a network file system ({m.fstype} at {view})") == 1, cmd
    assert json.loads(through.sop("status", "--json").stdout)["transactions"][0]["txid"] == tx["txid"]
    assert state()[0] == before[0]
    (real / ".sop" / "config.toml").write_text(FAST_CONFIG + "[journal]\nallow_network_fs = true\n")
    through.sop("commit", tx["txid"])                           # one host writes: allowed
    assert ws.rows()[1][:2] == ["Alpha", tx["run_id"]]
    assert "warning" not in through.sop("status").stderr


# ---------------------------------------------------------------- owners: host, machine id, PID namespace

HERE = Host("box", "m-1", "pid:[4026531836]")


class Probe:
    """A process table: pid -> (state, start); records every pid looked up."""

    def __init__(self, table: dict[int, tuple[str, str]]) -> None:
        self.table = table
        self.asked: list[int] = []

    def __call__(self, pid: int) -> tuple[str, str] | None:
        self.asked.append(pid)
        return self.table.get(pid)


def test_an_owner_in_another_pid_namespace_is_never_looked_up_here() -> None:
    probe = Probe({1: ("S", "9")})                              # our pid 1: init, started at boot
    theirs = Owner(host="box", pid=1, start="51234", machine="m-1", pidns="pid:[4026532179]")
    live = owner.liveness(theirs, probe, HERE)
    assert live.alive is None and "another PID namespace" in live.why and probe.asked == []
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    assert not owner.is_abandoned(theirs, t0, t0 + timedelta(hours=1), timedelta(hours=24), probe=probe, here=HERE)
    assert owner.is_abandoned(theirs, t0, t0 + timedelta(hours=25), timedelta(hours=24), probe=probe, here=HERE)
    # The same record without the namespace (as written before it was kept) is looked up here: pid 1 is
    # another process now, so it would be abandoned at once.
    old = msgspec.structs.replace(theirs, pidns="", machine="")
    assert owner.liveness(old, probe, HERE).alive is False and probe.asked == [1]


def test_an_owner_on_another_machine_with_our_host_name_is_elsewhere() -> None:
    probe = Probe({})
    o = Owner(host="box", pid=4242, start="1", machine="m-2", pidns=HERE.pidns)
    live = owner.liveness(o, probe, HERE)
    assert live.alive is None and "another machine" in live.why and probe.asked == []
    assert owner.liveness(Owner(host="other", pid=4242), probe, HERE).why.startswith("runs on another host (other)")


@pytest.mark.parametrize("machine,pidns", [("m-1", HERE.pidns), ("", HERE.pidns), ("m-1", ""), ("", "")])
def test_an_owner_here_is_looked_up_when_what_both_sides_know_matches(machine: str, pidns: str) -> None:
    probe = Probe({4242: ("S", "77")})
    o = Owner(host="box", pid=4242, start="77", machine=machine, pidns=pidns)
    assert owner.liveness(o, probe, HERE).alive is True and probe.asked == [4242]
    here_unknown = Host("box")                                   # this side knows neither (macOS, no /proc)
    assert owner.liveness(o, probe, here_unknown).alive is True


def test_old_owner_records_decode_and_new_ones_carry_machine_and_namespace(ws: WS) -> None:
    old = msgspec.convert({"host": "ws1", "pid": 1, "start": "5", "boot": "b", "user": "ana"}, Owner)
    assert (old.machine, old.pidns) == ("", "")
    ws.begin("S")
    rec = next(r for r in ws.records() if r["type"] == "begin")
    o = rec["data"]["owner"]
    assert o["machine"] == owner.machine_id() and o["pidns"] == owner.pid_namespace()
    if sys.platform.startswith("linux"):
        assert o["pidns"].startswith("pid:[") and o["machine"]


def test_a_live_run_in_a_pid_namespace_with_our_host_name_is_left_alone(ws: WS) -> None:
    """A run begun inside ``unshare --pid --uts`` with this host's name is "on another host" here.

    Inside, ``sh`` is pid 1 and owns the transaction (``--owner-pid $$``), then
    becomes ``sleep`` (same process, same start time): alive all along.  The
    recorded host name is ours.  The old rule looked pid 1 up in *our*
    process table, found our init with another start time, called the run
    "another process now", so abandoned, and sop-recover rolled a live run
    back.  Now the PID namespace differs, so its liveness cannot be checked
    here and it is abandoned only after --older-than.
    """
    if not sys.platform.startswith("linux") or not shutil.which("unshare") or os.geteuid() != 0:
        pytest.skip("needs Linux, unshare(1) and root to make a PID and UTS namespace")
    name = socket.gethostname()
    script = (f"hostname {name} && {sys.executable} {BIN / 'sop-begin'} -C {ws.root} --strategy Boxed "
              f"--owner-pid $$ && exec sleep 600")
    proc = subprocess.Popen(["unshare", "--pid", "--uts", "--mount", "--fork", "--kill-child", "--mount-proc",
                             "sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=scrubbed_env(), start_new_session=True)
    try:
        assert proc.stdout is not None
        txid = proc.stdout.readline().strip()
        if not txid:
            err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
            pytest.skip(f"could not begin inside a new PID namespace: {err.strip()}")
        begin = next(r for r in ws.records() if r["txid"] == txid and r["type"] == "begin")
        theirs = begin["data"]["owner"]
        assert theirs["host"] == name and theirs["pid"] == 1 and theirs["pidns"] != owner.pid_namespace()
        status = ws.json("status")["transactions"]
        assert [(t["txid"], t["abandoned"]) for t in status] == [(txid, False)]
        assert "another PID namespace" in status[0]["liveness"] and status[0]["alive"] is None
        rec = ws.json("recover")
        assert [t["txid"] for t in rec["live"]] == [txid], rec
        assert ws.json("status")["transactions"][0]["state"] == "begun"
        assert (ws.root / "backtests" / "Boxed").is_dir()
        # what the old rule would have said: pid 1 here is our init, another process
        blind = msgspec.convert({k: v for k, v in theirs.items() if k not in ("pidns", "machine")}, Owner)
        assert owner.liveness(blind).alive is False
        assert "another PID namespace" in owner.liveness(msgspec.convert(theirs, Owner)).why
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
