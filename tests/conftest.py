"""Shared fixtures: random-weight model pairs (official package vs segany) with equal weights,
the bundled model in fp32 (``bundled``), a throwaway PostgreSQL server (``postgres_url``,
``fresh_postgres_url``) and the browser tests' precondition (``browser_requirements``)."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

import segany
from tests.helpers import (
    BROWSER_TIMEOUT_MS,
    PG_INSTALL_HINT,
    TINY,
    PostgresServer,
    find_postgres_bin,
    make_pair,
    randomize_,
)

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="module")
def one_thread():
    """Pin torch to one thread for a module (``pytestmark = pytest.mark.usefixtures(...)``):
    tiny models gain nothing from threads, and a busy machine makes them much slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_pair():
    return make_pair(TINY)


@pytest.fixture(scope="session")
def tiny_model(tiny_pair):
    return tiny_pair[1]


@pytest.fixture(scope="session")
def vit_b_pair(tmp_path_factory):
    """Official vit_b with random weights, and segany's loaded from the same file through the
    drop-in ``sam_model_registry["vit_b"](checkpoint=...)``."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    official = randomize_(sam_model_registry["vit_b"](), 0).eval()
    path = tmp_path_factory.mktemp("vit_b") / "sam_vit_b_random.pth"
    torch.save(official.state_dict(), path)
    ours = segany.sam_model_registry["vit_b"](checkpoint=str(path))
    path.unlink()
    return official, ours


# ---------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway :class:`tests.helpers.PostgresServer` for the session (127.0.0.1 only),
    stopped and removed at the end. Without PostgreSQL's binaries (or psycopg) the tests that
    use it are skipped locally, and fail under CI (``$CI`` set): CI must run them."""
    problem = None if find_postgres_bin() else PG_INSTALL_HINT
    try:
        import psycopg  # noqa: F401
    except ImportError:
        problem = "psycopg is not installed: pip install -e '.[test]'"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {problem}", pytrace=False)
        pytest.skip(problem)
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    """SQLAlchemy URL ``postgresql+psycopg://test@127.0.0.1:PORT/segany_test`` of a database
    that is empty when the session starts and shared by every test that asks for it (a test
    must not rely on it being empty; use ``fresh_postgres_url`` for that)."""
    return postgres_server.create_database("segany_test")


_fresh_databases = itertools.count()


@pytest.fixture
def fresh_postgres_url(postgres_server):
    """SQLAlchemy URL of a new, empty database for this test alone (on the session's server),
    dropped afterwards (open connections are closed by the drop)."""
    name = f"segany_fresh_{next(_fresh_databases)}"
    yield postgres_server.create_database(name)
    postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request):
    """Each test on both databases: None (a project's embedded SQLite file) or the URL of a
    fresh, empty PostgreSQL database (:func:`fresh_postgres_url`)."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("fresh_postgres_url")


@pytest.fixture(scope="session")
def bundled():
    """The bundled ``segany_tiny`` in fp32 on the CPU (shared: do not modify it)."""
    return segany.load_model("segany_tiny", precision="fp32", device="cpu")


@pytest.fixture(scope="session")
def browser_requirements():
    """Debian's Chromium, Playwright and the npm files (``make web``) for the browser tests:
    without them the tests skip locally and fail on CI."""
    from segany.engine.web import browser_unavailable

    reason = browser_unavailable()
    if reason and os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run on CI: {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(browser_requirements):
    """Headless Chromium (Playwright) for a module's browser tests; closed at its end."""
    from playwright.sync_api import sync_playwright

    from segany.engine.web import launch_chromium

    with sync_playwright() as pw:
        b = launch_chromium(pw, BROWSER_TIMEOUT_MS)
        try:
            yield b
        finally:
            b.close()
