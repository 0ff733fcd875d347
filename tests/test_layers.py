"""The package's shape: imports go one way, nobody borrows another module's privates, commands can't vanish."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

PKG = Path(__file__).resolve().parent.parent / "journal"


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _resolve(module: str, is_pkg: bool, level: int, target: str | None) -> str:
    """The absolute name of a relative import inside journal/."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([target] if target else [])])


def _imports(mods: dict[str, Path]) -> tuple[dict[str, set[str]], list[str]]:
    """Each module's imports of other journal modules, and every use of another module's private name."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    borrowed: list[str] = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_pkg = path.name == "__init__.py"
        aliases: dict[str, str] = {}                     # local name -> journal module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                src = _resolve(mod, is_pkg, node.level, node.module)
                if not src.startswith("journal"):
                    continue
                for a in node.names:
                    sub = f"{src}.{a.name}"
                    if sub in mods:                      # from . import wal
                        graph[mod].add(sub)
                        aliases[a.asname or a.name] = sub
                    else:                                # from .wal import Writer
                        graph[mod].add(src)
                        if a.name.startswith("_") and not a.name.startswith("__"):
                            borrowed.append(f"{mod} imports {src}.{a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("journal.") and a.name in mods:
                        graph[mod].add(a.name)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                borrowed.append(f"{mod} uses {aliases[node.value.id]}.{node.attr}")
    for m in graph:                                      # a package's own modules are not a circle with it
        graph[m].discard(m)
    return graph, borrowed


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if m == "journal" or (n.startswith(m + ".")):   # the package's lazy API loader, a parent package
                continue
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None
    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_import_graph_has_no_circle_and_no_module_borrows_a_private_name() -> None:
    graph, borrowed = _imports(_modules())
    assert "journal.txn" in graph and "journal.porcelain" in graph
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph) or [])}"
    assert borrowed == []


def test_the_layers_point_down() -> None:
    graph, _ = _imports(_modules())
    users_of_cli = [m for m, deps in graph.items() if "journal.cli" in deps]
    assert users_of_cli == []                                          # nothing imports the command line
    task = {"journal.porcelain", "journal.recovery", "journal.janitor", "journal.audit", "journal.repair"}
    # the transaction layer and the plumbing never call up into a task module
    for m in graph:
        if m not in task and m not in ("journal", "journal.cli"):
            assert not graph[m] & task, f"{m} imports a task module: {sorted(graph[m] & task)}"
    # task modules do not lean on each other: the sweep runs recovery first and init --from-journal runs a
    # restore (their public functions), no more
    allowed = {"journal.janitor": {"journal.recovery"}, "journal.porcelain": {"journal.repair"}}
    for m in task:
        assert graph[m] & task <= allowed.get(m, set()), (m, graph[m] & task)
    assert "journal.txn" in graph["journal.porcelain"] and "journal.txn" in graph["journal.recovery"]


def test_only_cli_imports_click() -> None:
    for mod, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                 for a in (n.names if isinstance(n, ast.Import) else [ast.alias(n.module or "")])}
        if mod != "journal.cli":
            assert "click" not in names, mod


def test_a_self_check_the_walker_sees_a_circle_and_a_borrowed_name() -> None:
    """The checks above can fail: a made-up graph with a circle is caught."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_help_lists_every_command() -> None:
    from journal import cli
    out = CliRunner().invoke(cli.sop, ["--help"]).output
    every = ("init", "begin", "commit", "abort", "run", "recover", "status", "sweep", "restore", "release", "log",
             "fsck")
    for name in (*every, "help"):
        assert f"  {name} " in out, name
    assert set(cli.COMMANDS) == set(every)


@pytest.mark.parametrize("command,module", [("sweep", "journal.janitor"), ("log", "journal.audit"),
                                            ("begin", "journal.porcelain")])
def test_a_broken_command_module_fails_loudly_and_hides_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                command: str, module: str) -> None:
    """A task module that cannot be imported breaks its own command with the ImportError, never silently."""
    import journal
    from journal import cli
    journal.init(tmp_path)
    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, module, None)                     # "import journal.janitor" now fails
    monkeypatch.delattr(journal, module.rpartition(".")[2], raising=False)   # even if imported before
    runner = CliRunner()
    listing = runner.invoke(cli.sop, ["--help"])
    assert listing.exit_code == 0 and f"  {command} " in listing.output
    args = [command, "-C", str(tmp_path)] + (["--strategy", "S"] if command == "begin" else [])
    res = runner.invoke(cli.sop, args)
    assert res.exit_code != 0
    assert isinstance(res.exception, ImportError), res.output
    assert isinstance(cli.COMMANDS[command], click.Command)


# What a steady commit must not load: each is tens of milliseconds of a command that should cost a file
# copy (the workbook engine's XML check child and sop-run's command start subprocess; lxml, openpyxl and
# psycopg are other paths' engines; socket, asyncio, email and http come only with them).
NOT_ON_THE_COMMIT_PATH = ("subprocess", "socket", "lxml", "openpyxl", "psycopg", "asyncio", "email", "http")


def test_a_steady_commit_imports_nothing_it_does_not_need(ws: Any) -> None:
    """A commit after sop's own write, as a real process under ``-X importtime`` (every module it loads)."""
    import subprocess

    from conftest import BIN, scrubbed_env

    ws.full_run("Warm")
    tx = ws.begin_tx("Steady")
    ws.write_metadata("Steady", tx["run_id"])
    def loaded(*args: str) -> set[str]:
        p = subprocess.run([sys.executable, "-X", "importtime", *args], env=scrubbed_env(), capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return {line.split("|")[2].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
    # what the interpreter loads before any sop code (site, .pth files, a coverage hook) is not the commit's
    commit = loaded(str(BIN / "sop-commit"), "-C", str(ws.root), tx["txid"]) - loaded("-c", "pass")
    assert "journal.xlsx.append" in commit and "journal.porcelain" in commit      # the listing is whole
    assert sorted(m for m in commit if m.split(".")[0] in NOT_ON_THE_COMMIT_PATH) == []
