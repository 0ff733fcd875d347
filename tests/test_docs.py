"""The manual tells the truth about the code (STYLE §10, after sqlite-utils' tests/test_docs.py).

Every command has a page in git's shape that names every option its
``--help`` shows; sop-config(5) names every key with its default; every page
listed for installation exists; ``sop help`` prints a page; the README's two
commands are the ones CI runs.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest
from conftest import ROOT, sop

from journal import cli, manpages
from journal.workspace import CONFIG_TEMPLATE, DEFAULTS, parse_config

MAN = ROOT / "man"
ALL_COMMANDS = ["init", "begin", "commit", "abort", "run", "recover", "sweep", "status", "log", "fsck"]
SHAPE = ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "OUTPUT", "EXIT STATUS", "FILES", "EXAMPLES", "SEE ALSO"]
README_MAIN = "python3 -m pip install . && python3 examples/demo.py"
README_TESTS = "python3 -m pip install -e '.[test]' && python3 -m pytest -q"


def pages() -> list[Path]:
    return sorted(p for p in MAN.iterdir() if p.suffix in (".1", ".5"))


def rendered(page: Path) -> str:
    return manpages.render_text(page.read_text(encoding="utf-8"), width=100)


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


def options_of(name: str, cmd: click.Command) -> list[str]:
    """Every option string ``sop-<name> --help`` shows, help and version included."""
    ctx = click.Context(cmd, info_name=f"sop-{name}")
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
    assert "--help" in opts and "--root" in opts       # the helper sees what --help shows
    missing = [o for o in opts if not names_option(options, o)]
    assert not missing, f"man/sop-{name}.1 OPTIONS does not name {missing}"


@pytest.mark.parametrize("name", ALL_COMMANDS)
def test_help_output_options_are_the_params(name: str) -> None:
    """The params we check are exactly the options --help prints (none hidden, none extra)."""
    cmd = command(name)
    text = cmd.get_help(click.Context(cmd, info_name=f"sop-{name}"))
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


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
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


# ---------------------------------------------------------------- sop help

def sop_help(*args: str) -> subprocess.CompletedProcess[str]:
    return sop("", "help", *args, code=None)


def test_sop_help_begin_prints_the_page_as_plain_text() -> None:
    p = sop_help("begin")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("SOP-BEGIN(1)")
    for text in ("NAME", "sop-begin - the pre-run gatekeeper", "--owner-pid PID", "SOP_OWNER_PID",
                 "1-Strategy-1-Row Invariant", "EXIT STATUS"):
        assert text in p.stdout, text
    assert "\\f" not in p.stdout and "\\-" not in p.stdout
    assert not re.search(r"^\.[A-Za-z]{1,2}\b", p.stdout, re.M), "a roff macro leaked into the text"


@pytest.mark.parametrize("arg, head", [((), "SOP(1)"), (("sop-commit",), "SOP-COMMIT(1)"),
                                       (("config",), "SOP-CONFIG(5)")])
def test_sop_help_finds_pages_by_any_name(arg: tuple[str, ...], head: str) -> None:
    p = sop_help(*arg)
    assert p.returncode == 0 and p.stdout.startswith(head), p.stderr


def test_sop_help_unknown_page_exits_2_and_lists_the_known_ones() -> None:
    p = sop_help("frobnicate")
    assert p.returncode == 2
    assert "no manual page" in p.stderr and "begin" in p.stderr


def test_plain_renderer_handles_tables_and_tags() -> None:
    src = (".TH X 1\n.SH EXIT STATUS\n.TS\nl lx.\n0\tdone\n1\tT{\nrefused;\nnothing\nT}\n.TE\n"
           ".SH OPTIONS\n.TP\n.BR \\-q \", \" \\-\\-quiet\nNo \\fBmessages\\fR.\n")
    text = manpages.render_text(src)
    assert re.search(r"^\s+1\s+refused; nothing$", text, re.M), text
    assert re.search(r"^\s+-q, --quiet\n\s+No messages\.$", text, re.M), text


# ---------------------------------------------------------------- README and CI agree

def test_readme_opens_with_the_two_commands_and_ci_runs_the_second() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    head = readme[: readme.find("\n## ")]
    assert README_MAIN in head and README_TESTS in head
    assert README_TESTS in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
