"""The throwaway PostgreSQL server the store's tests run against (tests/helpers.py:
PostgresServer, and the conftest fixtures): it starts, serves SQLAlchemy over psycopg, listens on
127.0.0.1 only, hands out isolated empty databases, and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from tests.helpers import (
    PostgresServer,
    find_postgres_bin,
    listening_tcp_sockets,
    pid_alive,
    port_accepts,
    reap_stale_postgres,
)

REPO = Path(__file__).resolve().parents[1]


def test_session_url_serves_sqlalchemy(postgres_url, postgres_server):
    assert postgres_url.startswith("postgresql+psycopg://test@127.0.0.1:")
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1 + 1")).scalar() == 2
            assert conn.execute(text("SHOW listen_addresses")).scalar() == "127.0.0.1"
            assert conn.execute(text("SELECT current_database()")).scalar() == "segany_test"
            assert conn.execute(text("SHOW server_encoding")).scalar() == "UTF8"
    finally:
        engine.dispose()
    # the Unix socket lives in the server's own folder, not /var/run/postgresql
    sock = postgres_server.execute("SHOW unix_socket_directories")[0][0]
    assert sock == str(postgres_server.dir)


def test_postmaster_listens_on_loopback_only(postgres_server):
    pid = postgres_server.pid
    assert pid is not None and pid_alive(pid)
    sockets = listening_tcp_sockets(pid)
    assert sockets, "the postmaster listens on no TCP socket"
    assert all(addr == "127.0.0.1" for addr, _ in sockets), sockets
    assert {port for _, port in sockets} == {postgres_server.port}


def test_fresh_database_is_empty(fresh_postgres_url):
    engine = create_engine(fresh_postgres_url)
    try:
        assert inspect(engine).get_table_names() == []
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x int)"))
            conn.execute(text("INSERT INTO t VALUES (1), (2)"))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT sum(x) FROM t")).scalar() == 3
    finally:
        engine.dispose()


def test_fresh_databases_are_isolated(fresh_postgres_url, postgres_server):
    # the previous test's table is neither in this test's database nor in the shared one
    other = postgres_server.create_database("isolation_probe")
    try:
        for url in (fresh_postgres_url, other):
            engine = create_engine(url)
            try:
                assert inspect(engine).get_table_names() == []
                with engine.begin() as conn:
                    conn.execute(text("CREATE TABLE only_here (x int)"))
            finally:
                engine.dispose()
        names = {
            r[0] for r in postgres_server.execute("SELECT datname FROM pg_database")
        }  # fmt: skip
        assert "isolation_probe" in names and fresh_postgres_url.rsplit("/", 1)[1] in names
    finally:
        postgres_server.drop_database("isolation_probe")
    assert "isolation_probe" not in {
        r[0] for r in postgres_server.execute("SELECT datname FROM pg_database")
    }


def test_bad_database_name_is_refused(postgres_server):
    with pytest.raises(ValueError, match="database name"):
        postgres_server.create_database('x"; DROP DATABASE postgres; --')


def test_context_manager_stops_and_removes_everything(postgres_server):
    # a second, independent server: leaving its context stops it and removes its folder
    with PostgresServer() as pg:
        folder, port, pid = pg.dir, pg.port, pg.pid
        assert port != postgres_server.port
        assert folder.is_dir() and pid_alive(pid) and port_accepts(port)
        assert pg.execute("SELECT 42") == [(42,)]
    assert not folder.exists()
    assert not pid_alive(pid)
    assert not port_accepts(port)
    assert pg.dir is None


def test_stopped_on_an_error_inside_the_context(postgres_server):
    with pytest.raises(KeyError), PostgresServer() as pg:
        folder, pid = pg.dir, pg.pid
        raise KeyError("boom")
    assert not folder.exists() and not pid_alive(pid)


def test_stale_server_of_a_killed_run_is_reaped(postgres_server):
    """A test process killed with SIGKILL cannot stop its server; the next PostgresServer
    (reap_stale_postgres) stops the orphan and removes its folder."""
    script = textwrap.dedent(
        """
        import sys, time
        from tests.helpers import PostgresServer
        pg = PostgresServer().__enter__()
        print(pg.dir, pg.pid, pg.port, flush=True)
        time.sleep(120)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline().split()
        assert len(line) == 3, "the child did not start its server"
        folder, pid, port = Path(line[0]), int(line[1]), int(line[2])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert pid_alive(pid) and folder.exists(), "the orphan should outlive its killed owner"
    reap_stale_postgres()
    deadline = time.monotonic() + 15
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(pid)
    assert not folder.exists()
    assert not port_accepts(port)
    # the session's own server (its owner is alive) is untouched
    assert postgres_server.execute("SELECT 1") == [(1,)]


def test_newest_installed_version_is_used(postgres_server):
    bin_dir = postgres_server.bin_dir
    assert bin_dir == find_postgres_bin()
    if bin_dir.parent.parent == Path("/usr/lib/postgresql") and "SEGANY_PG_BIN" not in os.environ:
        versions = [
            int(p.name)
            for p in Path("/usr/lib/postgresql").iterdir()
            if p.name.isdigit() and (p / "bin" / "initdb").is_file()
        ]
        assert int(bin_dir.parent.name) == max(versions)
    server_version = postgres_server.execute("SHOW server_version_num")[0][0]
    assert int(server_version) // 10000 == int(bin_dir.parent.name)
