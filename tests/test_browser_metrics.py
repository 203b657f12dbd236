"""The tool's metrics page (``/metrics``) in real headless Chromium, against the annotation
server on uvicorn in a thread (127.0.0.1, a free port): the table per stage and annotator, the
SVG plot with one line per annotator and the model-version marks, switching the metric, and
the error shown when the API fails.

Needs Debian's ``chromium`` and the vendor files (``python -m segany.engine.web.build``; ``make
test`` runs both installs). Missing either, the tests skip locally and fail on CI."""

from __future__ import annotations

import datetime as dt
import io
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sqlalchemy")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from segany.engine.server import create_app  # noqa: E402
from segany.engine.server.app import COOKIE  # noqa: E402
from segany.engine.store import Project  # noqa: E402
from segany.engine.web import launch_chromium  # noqa: E402

TOKEN = "metrics-page-token"
TIMEOUT_MS = 60_000
T0 = dt.datetime(2030, 1, 1, 9, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _fill(project: Project, clock: Clock) -> None:
    """alice gets faster over three hours (30 s, 20 s, 10 s per mask), bob works in hours 0
    and 2 (40 s, 35 s); model v2 arrives at hour 1; one stage-2 mask by bob, untimed."""
    for name in ("alice", "bob"):
        project.add_annotator(name)
    v1 = project.register_model("v1", "fp-v1")
    images = [project.add_image_bytes(_png(i), f"{i}.png")[0] for i in range(3)]
    mask = np.zeros((24, 32), bool)
    mask[2:9, 3:12] = True
    plan = [(0, "alice", 30, 3), (0, "bob", 40, 4), (2, "alice", 10, 1), (2, "bob", 35, 3)]
    plan.insert(2, (1, "alice", 20, 2))
    v2 = None
    for hour, who, seconds, clicks in plan:
        clock.now = T0 + dt.timedelta(hours=hour, minutes=10)
        if hour >= 1 and v2 is None:
            v2 = project.register_model("v2", "fp-v2")
        for _ in range(clicks):
            project.record_event("prompt", image_id=images[hour].id, annotator=who)
        project.add_mask(
            images[hour].id, segmentation=mask, annotator=who, elapsed_ms=seconds * 1000,
            model_version=v2 or v1,
        )  # fmt: skip
    project.add_mask(images[0].id, segmentation=mask, annotator="bob", stage=2)


@pytest.fixture(scope="module")
def server(browser_requirements, tmp_path_factory):
    """The server on uvicorn in a thread; yields its base URL; stopped at the end."""
    clock = Clock()
    with Project.init(tmp_path_factory.mktemp("metrics") / "proj", clock=clock) as project:
        _fill(project, clock)

        def no_model():
            raise AssertionError("the metrics page must not need the model")

        app = create_app(project, predictor_factory=no_model, token=TOKEN, prefetch=False)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port = sock.getsockname()[1]
        srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            for _ in range(400):  # up to 20 s
                if srv.started or not thread.is_alive():
                    break
                time.sleep(0.05)
            assert srv.started, "uvicorn did not start"
            yield f"http://127.0.0.1:{port}"
        finally:
            srv.should_exit = True
            thread.join(20)
            sock.close()
            assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch_chromium(pw, TIMEOUT_MS)
        try:
            context = browser.new_context()
            context.add_cookies([{"name": COOKIE, "value": TOKEN, "url": server}])
            pg = context.new_page()
            pg.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.goto(f"{server}/metrics")
            pg.wait_for_function("document.body.dataset.state === 'ready'")
            assert not errors, errors
            yield pg
            assert not errors, errors
            context.close()
        finally:
            browser.close()


def _refresh(pg) -> None:
    before = int(pg.evaluate("document.body.dataset.refreshes || '0'"))
    pg.evaluate("window.seganyMetrics.refresh()")
    pg.wait_for_function(f"Number(document.body.dataset.refreshes) > {before}")


def _rows(pg) -> list[list[str]]:
    return pg.eval_on_selector_all(
        "#groups tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )


def test_table(page):
    rows = _rows(page)
    assert [r[:2] for r in rows] == [["1", "alice"], ["1", "bob"], ["2", "bob"]]
    alice, bob, bob2 = rows
    # stage, annotator, masks, images done, s/mask, masks/image, clicks/mask, model versions
    assert alice[2] == "3" and alice[4] == "20.0" and alice[6] == "2.00"
    assert alice[7] == "v1 (1), v2 (2)"
    assert bob[2] == "2" and bob[4] == "37.5" and bob[6] == "3.50"
    assert bob2[2] == "1" and bob2[4] == "–" and bob2[7] == "(none) (1)"
    assert page.text_content("#embeddings").startswith("embeddings: 3 images, cache not known")
    assert page.get_attribute("#back", "href") == "/"
    assert page.is_hidden("#error")


def test_plot_one_line_per_annotator(page):
    page.select_option("#metric", "seconds_per_mask")
    page.select_option("#stage", "1")
    page.wait_for_function("document.querySelectorAll('#groups tbody tr').length === 2")
    lines = page.eval_on_selector_all(
        "#plot svg g.series",
        "gs => gs.map(g => [g.dataset.annotator, g.querySelectorAll('circle').length, "
        "g.querySelector('path').getAttribute('d')])",
    )
    assert [(name, n) for name, n, _ in lines] == [("alice", 3), ("bob", 2)]
    assert all(d.startswith("M") and d.count("L") == n - 1 for _, n, d in lines)
    # alice gets faster: her line goes down the screen (SVG y grows downwards)
    ys = [float(p.split(",")[1]) for p in lines[0][2].replace("M", "L").split("L")[1:]]
    assert ys[0] < ys[1] < ys[2]
    legend = page.eval_on_selector_all("#plot svg .legend text", "ts => ts.map(t => t.textContent)")
    assert legend == ["alice", "bob"]
    marks = page.eval_on_selector_all(
        "#plot svg .model-version text", "ts => ts.map(t => t.textContent)"
    )
    assert "v2" in marks
    texts = page.eval_on_selector_all("#plot svg .axis text", "ts => ts.map(t => t.textContent)")
    assert "seconds per mask" in texts and "time (UTC, per hour)" in texts


def test_switch_metric(page):
    page.select_option("#stage", "")
    page.wait_for_function("document.querySelectorAll('#groups tbody tr').length === 3")
    page.select_option("#metric", "clicks_per_mask")
    page.wait_for_function(
        "[...document.querySelectorAll('#plot .axis text')]"
        ".some(t => t.textContent === 'clicks per mask')"
    )
    names = page.eval_on_selector_all("#plot svg .legend text", "ts => ts.map(t => t.textContent)")
    # the stage-2 mask has no time but a click count (0): it gets a line for clicks per mask
    assert names == ["alice · stage 1", "bob · stage 1", "bob · stage 2"]
    page.select_option("#metric", "masks_per_image")
    page.wait_for_function(
        "[...document.querySelectorAll('#plot .axis text')]"
        ".some(t => t.textContent === 'masks per image')"
    )
    assert page.locator("#plot svg g.series").count() == 3


def test_error_shown(page):
    def fail(route):
        route.fulfill(
            status=500, content_type="application/json",
            body='{"detail": "the database is gone"}',
        )  # fmt: skip

    page.route("**/api/stats/timeline**", fail)
    try:
        _refresh(page)
        assert page.is_visible("#error")
        message = page.text_content("#error")
        assert "500" in message and "the database is gone" in message
        assert page.evaluate("document.body.dataset.state") == "error"
        assert len(_rows(page)) == 3  # the last good numbers stay
    finally:
        page.unroute("**/api/stats/timeline**", fail)
    _refresh(page)
    assert page.is_hidden("#error")
    assert page.evaluate("document.body.dataset.state") == "ready"
