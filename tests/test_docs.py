"""The manual tells the truth about the code (STYLE §10, after sqlite-utils' tests/test_docs.py).

Every command has a page in git's shape whose OPTIONS section names every
option its ``--help`` shows and no option it lacks; sop-config(5) names every
key with its default; every page listed for installation exists; the plain-text
pages in journal/help/ are groff's rendering of man/ as it is now; ``sop help``
prints a page, through man(1) or without it; the README's two commands are the
ones CI runs.

The checks read a page as text from journal/help/ (which
test_help_text_is_the_groff_rendering_of_the_page keeps equal to groff's
output), so they see what a reader sees.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import click
import pytest
from conftest import BIN, ROOT, scrubbed_env

from journal import cli
from journal.workspace import CONFIG_TEMPLATE, DEFAULTS, parse_config

MAN = ROOT / "man"
HELP = ROOT / "journal" / "help"
ALL_COMMANDS = ["init", "begin", "commit", "abort", "run", "recover", "sweep", "restore", "release", "status", "log",
                "fsck"]
SHAPE = ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "OUTPUT", "EXIT STATUS", "FILES", "EXAMPLES", "SEE ALSO"]
README_MAIN = "python3 -m pip install . && python3 examples/demo.py"
README_TESTS = "python3 -m pip install -e '.[test]' && python3 -m pytest -q -n auto"


def pages() -> list[Path]:
    return sorted(p for p in MAN.iterdir() if p.suffix in (".1", ".5"))


def _render_man() -> ModuleType:
    """tools/render_man.py, which makes journal/help/ from man/ (a build tool, not part of the package)."""
    spec = importlib.util.spec_from_file_location("render_man", ROOT / "tools" / "render_man.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


render_man = _render_man()
needs_groff = pytest.mark.skipif(shutil.which("groff") is None,
                                 reason="groff is not installed: cannot render man/ to compare with journal/help/")


def rendered(page: Path) -> str:
    """A page as plain text: its build-time rendering in journal/help/."""
    text = HELP / f"{page.stem}.txt"
    if not text.is_file():
        pytest.fail(f"{text.relative_to(ROOT)} is missing: run python3 tools/render_man.py")
    return text.read_text(encoding="utf-8")


def sections(text: str) -> dict[str, str]:
    """A rendered page's top-level sections, by heading."""
    out: dict[str, str] = {}
    current = None
    for line in text.splitlines()[1:]:
        if line and not line[0].isspace() and line.upper() == line and not line.startswith("sop "):
            current = line.strip()
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return out


def names_option(text: str, opt: str) -> bool:
    return re.search(r"(?<![\w-])" + re.escape(opt) + r"(?![\w-])", text) is not None


OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def named_options(text: str) -> set[str]:
    """Every option string (-q, --root) a piece of page text names."""
    return {o for o in OPTION.findall(text) if len(o) == 2 or o.startswith("--")}


def help_context(name: str, cmd: click.Command) -> click.Context:
    """The context click makes for the command, with its settings (help_option_names: -h, --help)."""
    return click.Context(cmd, info_name=f"sop-{name}", **(cmd.context_settings or {}))


def options_of(name: str, cmd: click.Command) -> list[str]:
    """Every option string ``sop-<name> --help`` shows, help (-h and --help) and version included."""
    ctx = help_context(name, cmd)
    opts: list[str] = []
    for p in cmd.get_params(ctx):
        if isinstance(p, click.Option):
            opts += [*p.opts, *p.secondary_opts]
    return opts


def command(name: str) -> click.Command:
    if name not in cli.COMMANDS:
        pytest.skip(f"sop-{name} has not landed yet (not in journal.cli.COMMANDS)")
    return cli.COMMANDS[name]


# ---------------------------------------------------------------- pages of commands

@pytest.mark.parametrize("name", ALL_COMMANDS)
def test_every_command_has_a_page(name: str) -> None:
    command(name)
    assert (MAN / f"sop-{name}.1").is_file(), f"man/sop-{name}.1 is missing"


@pytest.mark.parametrize("name", ALL_COMMANDS)
def test_page_names_every_option_in_its_options_section(name: str) -> None:
    cmd = command(name)
    page = MAN / f"sop-{name}.1"
    if not page.is_file():
        pytest.fail(f"man/sop-{name}.1 is missing")
    options = sections(rendered(page)).get("OPTIONS", "")
    opts = options_of(name, cmd)
    assert {"-h", "--help", "--root"} <= set(opts)     # the helper sees what --help shows
    missing = [o for o in opts if not names_option(options, o)]
    assert not missing, f"man/sop-{name}.1 OPTIONS does not name {missing}"


@pytest.mark.parametrize("name", ALL_COMMANDS)
def test_page_options_section_names_no_option_the_command_lacks(name: str) -> None:
    """The other way round: a stale page that still lists a removed or renamed option fails."""
    cmd = command(name)
    options = sections(rendered(MAN / f"sop-{name}.1")).get("OPTIONS", "")
    stale = sorted(named_options(options) - set(options_of(name, cmd)))
    assert not stale, f"man/sop-{name}.1 OPTIONS names {stale}, which sop-{name} does not take"


def common_options() -> set[str]:
    """The options every command takes (-C/--root, --json, -q/--quiet, --version, -h/--help)."""
    return set.intersection(*(set(options_of(n, c)) for n, c in cli.COMMANDS.items()))


@pytest.mark.parametrize("page", ["sop.1", "sop-journal.5"])
def test_pages_name_only_real_common_options(page: str) -> None:
    """sop(1) lists the group's options and those every command takes; sop-journal(5) the latter."""
    options = sections(rendered(MAN / page))["OPTIONS"]
    real = common_options() | (set(options_of("", cli.sop)) if page == "sop.1" else set())
    assert common_options() >= {"-C", "--root", "--json", "-q", "--quiet", "--version", "-h", "--help"}
    stale = sorted(named_options(options) - real)
    assert not stale, f"man/{page} OPTIONS names {stale}, which not every command takes"


USE = re.compile(r"\bsop[- ](" + "|".join(ALL_COMMANDS) + r")((?:\s+--?[A-Za-z][\w-]*(?:\s+[A-Z_]+\b)?)+)")


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_every_command_line_in_a_page_uses_real_options(page: Path) -> None:
    """'sop-sweep --fix', 'sop recover --dry-run' anywhere in any page: the option exists."""
    wrong = []
    for m in USE.finditer(rendered(page)):
        if m.group(1) in cli.COMMANDS:
            wrong += [f"sop-{m.group(1)} {o}" for o in sorted(named_options(m.group(2)))
                      if o not in options_of(m.group(1), cli.COMMANDS[m.group(1)])]
    assert not wrong, f"{page.name} uses options that do not exist: {wrong}"


@pytest.mark.parametrize("name", ALL_COMMANDS)
def test_help_output_options_are_the_params(name: str) -> None:
    """The params we check are exactly the options --help prints (none hidden, none extra)."""
    cmd = command(name)
    text = cmd.get_help(help_context(name, cmd))
    shown = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text.split("Options:", 1)[1]))
    assert set(options_of(name, cmd)) <= shown


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_page_has_gits_shape(page: Path) -> None:
    found = list(sections(rendered(page)))
    order = [s for s in found if s in SHAPE]
    assert order == SHAPE, f"{page.name}: sections {found}, want {SHAPE} in this order"


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_page_name_line(page: Path) -> None:
    name = sections(rendered(page))["NAME"].strip()
    assert name.startswith(f"{page.stem} - "), name


@needs_groff
@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_page_renders_with_groff_without_warnings(page: Path) -> None:
    p = subprocess.run(["groff", "-t", "-man", "-ww", "-z", str(page)], capture_output=True, text=True)
    assert p.returncode == 0 and p.stderr == "", p.stderr


def test_overview_names_every_command_and_the_group_options() -> None:
    text = rendered(MAN / "sop.1")
    for name in ALL_COMMANDS:
        assert f"sop-{name}(1)" in text or name == "init", name
        assert names_option(text, f"sop-{name}") or names_option(text, f"sop {name}"), name
    for opt in options_of("", cli.sop):
        assert names_option(sections(text)["OPTIONS"], opt), opt
    for var in ("SOP_ROOT", "SOP_OWNER_PID", "NO_COLOR"):
        assert var in sections(text)["ENVIRONMENT"], var
    assert 'eval "$(_SOP_COMPLETE=bash_source sop)"' in text
    assert "_SOP_BEGIN_COMPLETE" in text


def test_overview_exit_codes_match_the_error_tree() -> None:
    from journal import errors
    table = sections(rendered(MAN / "sop.1"))["EXIT STATUS"]
    codes = {c.exit_code for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.SopError)}
    for code in codes | {0}:
        assert re.search(rf"^\s+{code}\s", table, re.M), f"exit {code} is not in sop(1) EXIT STATUS"


# ---------------------------------------------------------------- sop-config(5)

def _toml(v: object) -> list[str]:
    if isinstance(v, bool):
        return ["true" if v else "false"]
    if isinstance(v, float):
        return [repr(v), str(int(v))] if v.is_integer() else [repr(v)]
    if isinstance(v, int):
        return [str(v)]
    return ['"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"']


def test_config_page_names_every_key_with_its_default() -> None:
    text = rendered(MAN / "sop-config.5")
    for section, keys in DEFAULTS.items():
        m = re.search(rf"^ {{3}}\[{section}\]\n(.*?)(?=^ {{3}}\[|^\S)", text, re.M | re.S)
        assert m, f"sop-config(5) has no [{section}] subsection"
        body = m.group(1)
        for key, default in keys.items():
            forms = _toml(default)
            assert any(re.search(rf"^\s+{re.escape(key)} = {re.escape(f)}\s*$", body, re.M) for f in forms), \
                f"sop-config(5) [{section}] does not show '{key} = {forms[0]}'"


def test_config_template_holds_the_defaults() -> None:
    """The commented file sop init writes says what the code does."""
    assert parse_config(CONFIG_TEMPLATE) == parse_config("")


# ---------------------------------------------------------------- installing the pages

def test_every_page_is_installed_and_every_installed_page_exists() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    listed: dict[str, str] = {}
    for target, value in cfg["options.data_files"].items():
        for f in value.split():
            listed[f] = target
    for f, target in listed.items():
        assert (ROOT / f).is_file(), f"setup.cfg installs {f}, which does not exist: pip install would fail"
        assert target == f"share/man/man{f[-1]}", f"{f} goes to {target}"
    for page in pages():
        rel = f"man/{page.name}"
        assert rel in listed, f"{rel} is not in setup.cfg [options.data_files]: uncomment or add its line"


# ---------------------------------------------------------------- the plain-text pages

@needs_groff
@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_help_text_is_the_groff_rendering_of_the_page(page: Path) -> None:
    """journal/help/PAGE.txt is man/PAGE as groff renders it now: it cannot go stale."""
    want = render_man.render(page)
    have = rendered(page)
    version = subprocess.run(["groff", "--version"], capture_output=True, text=True).stdout.split("\n", 1)[0]
    assert have == want, (f"journal/help/{page.stem}.txt is not {version}'s rendering of man/{page.name}: "
                          "run python3 tools/render_man.py and commit the result")


def test_every_help_text_has_its_page_and_is_package_data() -> None:
    texts = sorted(p.stem for p in HELP.glob("*.txt"))
    assert texts == sorted(p.stem for p in pages()), "journal/help/ and man/ differ: run python3 tools/render_man.py"
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    assert "help/*.txt" in cfg["options.package_data"]["journal"].split()


@needs_groff
def test_plain_renderer_handles_tables_and_tags() -> None:
    src = (".TH X 1\n.SH EXIT STATUS\n.TS\nl lx.\n0\tdone\n1\tT{\nrefused;\nnothing\nT}\n.TE\n"
           ".SH OPTIONS\n.TP\n.BR \\-q \", \" \\-\\-quiet\nNo \\fBmessages\\fR.\n")
    text = render_man.render_source(src)
    assert re.search(r"^\s+1\s+refused; nothing$", text, re.M), text
    assert re.search(r"^\s+-q, --quiet\n\s+No messages\.$", text, re.M), text
    assert "\b" not in text and "\x1b" not in text, "overstrike or SGR left in the text"


# ---------------------------------------------------------------- sop help

@pytest.fixture(params=["man", "no man"])
def path_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The environment's PATH as it is (sop help hands off to man(1)), or one without man (the packaged text)."""
    if request.param == "man":
        if shutil.which("man") is None:
            pytest.skip("man(1) is not installed")
        return {}
    return {"PATH": str(tmp_path)}


def sop_help(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BIN / "sop"), "help", *args], capture_output=True, text=True,
                          encoding="utf-8", env=scrubbed_env(**env), timeout=60)


def assert_plain(text: str) -> None:
    assert "\b" not in text and "\x1b" not in text, "overstrike or SGR sequences in the text"
    assert "\\f" not in text and "\\-" not in text
    assert not re.search(r"^\.[A-Za-z]{1,2}\b", text, re.M), "a roff macro leaked into the text"


def test_sop_help_begin_prints_the_page_as_plain_text(path_env: dict[str, str]) -> None:
    p = sop_help("begin", **path_env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("SOP-BEGIN(1)")
    for text in ("NAME", "sop-begin - the pre-run gatekeeper", "--owner-pid PID", "SOP_OWNER_PID",
                 "1-Strategy-1-Row Invariant", "EXIT STATUS"):
        assert text in p.stdout, text
    assert_plain(p.stdout)
    if "PATH" in path_env:
        assert p.stdout == rendered(MAN / "sop-begin.1")


@pytest.mark.parametrize("arg, head", [((), "SOP(1)"), (("sop-commit",), "SOP-COMMIT(1)"),
                                       (("config",), "SOP-CONFIG(5)")])
def test_sop_help_finds_pages_by_any_name(arg: tuple[str, ...], head: str, path_env: dict[str, str]) -> None:
    p = sop_help(*arg, **path_env)
    assert p.returncode == 0 and p.stdout.startswith(head), p.stderr


def test_sop_help_unknown_page_exits_2_and_lists_the_known_ones(path_env: dict[str, str]) -> None:
    p = sop_help("frobnicate", **path_env)
    assert p.returncode == 2
    assert "no manual page" in p.stderr and "begin" in p.stderr


@pytest.mark.skipif(shutil.which("man") is None, reason="man(1) is not installed")
def test_sop_help_through_a_pipe_is_plain_even_when_man_is_asked_to_keep_formatting() -> None:
    p = sop_help("sweep", MAN_KEEP_FORMATTING="1", MANOPT="-Tutf8")
    assert p.returncode == 0 and p.stdout.startswith("SOP-SWEEP(1)"), p.stderr
    assert_plain(p.stdout)


@pytest.mark.skipif(os.name == "nt", reason="a fake man(1) is a shell script")
@pytest.mark.parametrize("script", ["echo 'man: this system has been minimized'; exit 1",
                                    "printf 'S\\bSO\\bOP\\bP(1)\\n'"], ids=["fails", "overstrikes"])
def test_sop_help_prints_the_text_when_man_fails_or_overstrikes(script: str, tmp_path: Path) -> None:
    man = tmp_path / "man"
    man.write_text(f"#!/bin/sh\n{script}\n", encoding="utf-8")
    man.chmod(0o755)
    p = sop_help("log", PATH=str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert p.stdout == rendered(MAN / "sop-log.1")


def test_sop_help_into_a_closed_pipe_is_quiet(path_env: dict[str, str]) -> None:
    """sop help | head: no traceback, exit 0."""
    proc = subprocess.Popen([sys.executable, str(BIN / "sop"), "help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=scrubbed_env(**path_env))
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err, err


# ---------------------------------------------------------------- README and CI agree

def test_readme_opens_with_the_two_commands_and_ci_runs_the_second() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    head = readme[: readme.find("\n## ")]
    assert README_MAIN in head and README_TESTS in head
    assert README_TESTS in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
