"""Fixtures of the cluster tests: a PostgreSQL server, a fresh database per test, and hosts.

Collected only with ``SOP_CLUSTER=1`` (tests/conftest.py); ``.ci/cluster-lane``
installs what they need and runs them.

``pg_dsn`` (session): ``$SOP_TEST_PG_DSN`` when set, else a throwaway cluster
(tools/pg_throwaway.py) started once for the session over a Unix socket in a
folder under /tmp, stopped and removed at the end.  ``pg_db``: a database of
its own for each test (``sop_<random>``), its DSN; dropped after the test,
even with clients still connected.  ``hosts``: ``hosts("a", net=False)``
makes a :class:`cluster.hosts.Host`, killed at the end of the test.

What a machine lacks (PostgreSQL's binaries, psycopg, namespaces) skips the
tests with the reason, except under CI (``$CI`` set), where it fails them: a
lane that skips has tested nothing.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest

from cluster.hosts import Host
from cluster.hosts import unavailable as hosts_unavailable

if os.environ.get("SOP_CLUSTER") != "1":                  # even when named on the command line
    collect_ignore_glob = ["test_*.py"]

ROOT = Path(__file__).resolve().parents[2]
ENV_DSN = os.environ.get("SOP_TEST_PG_DSN")             # read before the autouse fixture scrubs SOP_*


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason`` locally; fail under CI, where every cluster test must run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (and $CI is set: the cluster tests must run here)", pytrace=False)
    pytest.skip(reason)


def pg_throwaway() -> ModuleType:
    """tools/pg_throwaway.py (tools/ is no package)."""
    spec = importlib.util.spec_from_file_location("pg_throwaway", ROOT / "tools" / "pg_throwaway.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def psycopg() -> Any:
    try:
        import psycopg as mod
    except ImportError:
        unavailable("psycopg 3 is not installed: pip install -e '.[postgresql]'")
    return mod


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A libpq DSN of a running server (a superuser's, to make databases)."""
    if ENV_DSN:
        yield ENV_DSN
        return
    pt = pg_throwaway()
    try:
        pg = pt.Throwaway.start()
    except pt.Unavailable as e:
        unavailable(f"no PostgreSQL for the cluster tests: {e}")
    try:
        yield pg.dsn
    finally:
        pg.stop()


@pytest.fixture
def pg_db(pg_dsn: str) -> Iterator[str]:
    """The DSN of a new, empty database ``sop_<random>`` on that server, for this test alone."""
    pg = psycopg()
    name = f"sop_{secrets.token_hex(6)}"
    with pg.connect(pg_dsn, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg.conninfo.make_conninfo(pg_dsn, dbname=name)
    finally:
        with pg.connect(pg_dsn, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def hosts() -> Iterator[Callable[..., Host]]:
    """``hosts(name, *, net=False, env=None) -> Host``: a new host; every one is killed after the test."""
    why = hosts_unavailable()
    if why:
        unavailable(why)
    made: list[Host] = []

    def make(name: str, *, net: bool = False, env: Mapping[str, str] | None = None) -> Host:
        h = Host(name, net=net, env=env)
        made.append(h)
        return h
    yield make
    for h in made:
        h.close()
