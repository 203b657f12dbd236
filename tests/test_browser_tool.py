"""The browser annotation tool (segany/engine/web/static/app/) in real headless Chromium,
against a real ``segany serve`` app (uvicorn in a thread, 127.0.0.1) on a project of
generated scenes and the bundled model. The tests drive the tool with real mouse and keyboard
events and read results from the server, the project and the read-only ``window.seganyTool``
hook.

Needs Debian's ``chromium`` and the vendor files (``python -m segany.engine.web.build``; ``make
test`` runs both installs). Missing either, the tests skip locally and fail on CI."""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import segany  # noqa: E402
from segany.data.scenes import ProceduralScenes  # noqa: E402
from segany.engine.server import create_app  # noqa: E402
from segany.engine.store import Project  # noqa: E402
from segany.engine.web import browser_unavailable, launch_chromium  # noqa: E402
from segany.formats import decode_coco_rle, decode_uncompressed_rle, encode_coco_rle  # noqa: E402
from segany.masks import mask_iou  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TIMEOUT_MS = 120_000  # any one Playwright wait
TOKEN = "owner-token-for-browser-tests"
SIZE = (240, 320)  # (H, W) of the generated scenes
N_IMAGES = 8
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "annotation_tool.png"


@pytest.fixture(scope="module")
def requirements():
    reason = browser_unavailable()
    if reason and os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run on CI: {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def bundled():
    return segany.load_model("segany_tiny", precision="fp32", device="cpu")


def _object_point(scene) -> tuple[int, tuple[float, float]]:
    """The largest top-level object of a scene and a point deep inside it (pixel centre)."""
    objects = [k for k in range(len(scene.masks)) if scene.levels[k] == 0]
    k = max(objects, key=lambda j: int(scene.masks[j].sum()))
    depth = cv2.distanceTransform(scene.masks[k].astype(np.uint8), cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(depth.argmax()), depth.shape)
    return k, (float(x) + 0.5, float(y) + 0.5)


@pytest.fixture(scope="module")
def server(requirements, bundled, tmp_path_factory):
    """A served project: scenes as images, two annotators (alice, bob); stopped at the end."""
    import uvicorn

    root = tmp_path_factory.mktemp("tool") / "proj"
    project = Project.init(root, model="segany_tiny")
    scenes = ProceduralScenes(N_IMAGES, seed=3, sizes=(SIZE,))
    ids = []
    for i in range(N_IMAGES):
        buf = io.BytesIO()
        Image.fromarray(scenes[i].image).save(buf, format="PNG")
        record, _ = project.add_image_bytes(buf.getvalue(), f"scene_{i}.png")
        ids.append(record.id)
    tokens = {name: project.add_annotator(name)[1] for name in ("alice", "bob")}
    app = create_app(project, predictor_factory=lambda: segany.SamPredictor(bundled), token=TOKEN)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "the test server did not start in 60 s"
    try:
        yield {
            "base": f"http://127.0.0.1:{port}",
            "project": project,
            "scenes": scenes,
            "ids": ids,
            "tokens": tokens,
        }
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
        sock.close()
        project.close()


@pytest.fixture(scope="module")
def browser(requirements):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = launch_chromium(pw, TIMEOUT_MS)
        try:
            yield b
        finally:
            b.close()


class Tool:
    """One browser context signed in with a token, on the tool's page."""

    def __init__(self, browser, server, token: str, query: str = "warmup=30") -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.server = server
        self.page.goto(f"{server['base']}/?token={token}")  # sets the cookie, redirects to /
        self.query = query

    def open(self, image_id: int | None = None, query: str | None = None) -> Tool:
        q = self.query if query is None else query
        if image_id is not None:
            q = f"{q}&image={image_id}" if q else f"image={image_id}"
        self.page.goto(f"{self.server['base']}/?{q}")
        self.page.wait_for_function("window.seganyTool !== undefined")
        self.page.evaluate("window.seganyTool.ready")
        self.idle()
        return self

    def idle(self) -> None:
        self.page.evaluate("window.seganyTool.waitIdle()")

    def state(self) -> dict:
        return self.page.evaluate("window.seganyTool.state()")

    def screen(self, x: float, y: float) -> tuple[float, float]:
        """Page coordinates of image pixel (x, y)."""
        return self.page.evaluate(
            """([x, y]) => {
                const v = window.seganyTool.state().view;
                const r = document.getElementById("view").getBoundingClientRect();
                const dpr = window.devicePixelRatio || 1;
                return [r.left + (x * v.scale + v.tx) / dpr, r.top + (y * v.scale + v.ty) / dpr];
            }""",
            [x, y],
        )

    def click(self, x: float, y: float, **kw) -> None:
        self.page.mouse.click(*self.screen(x, y), **kw)
        self.idle()

    def drag(self, a: tuple[float, float], b: tuple[float, float]) -> None:
        self.page.mouse.move(*self.screen(*a))
        self.page.mouse.down()
        self.page.mouse.move(*self.screen(*b), steps=8)
        self.page.mouse.up()
        self.idle()

    def key(self, key: str) -> None:
        self.page.keyboard.press(key)
        self.idle()

    def working_mask(self) -> np.ndarray:
        rle = self.page.evaluate("window.seganyTool.workingMask()")
        return decode_uncompressed_rle(rle)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def alice(browser, server):
    tool = Tool(browser, server, server["tokens"]["alice"])
    yield tool
    assert not tool.errors, tool.errors
    tool.close()


def _display_gt(gt: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if gt.shape == tuple(shape):
        return gt
    return cv2.resize(gt.astype(np.uint8), shape[::-1], interpolation=cv2.INTER_NEAREST) > 0


def _server_masks(server, image_id: int) -> list:
    return server["project"].list_masks(image_id)


# ---------------------------------------------------------------------------- tests


def test_click_gives_a_mask_of_the_object(alice, server):
    image_id = server["ids"][0]
    scene = server["scenes"][0]
    k, (x, y) = _object_point(scene)
    alice.open(image_id)
    st = alice.state()
    assert st["decoder"] == "browser" and st["imageId"] == image_id and not st["readOnly"]
    badge = alice.page.locator("#decoder-badge").inner_text()
    assert badge.startswith("decoder: browser (WASM, ") and "threads" in badge
    alice.click(x, y)
    st = alice.state()
    assert np.allclose(st["points"], [[x, y]], atol=0.05) and st["labels"] == [1]
    assert len(st["scores"]) == 3 and st["selected"] == int(np.argmax(st["scores"]))
    assert st["workingArea"] > 0 and st["lastClickMs"] is not None
    mask = alice.working_mask()
    iou = mask_iou(mask, _display_gt(scene.masks[k], mask.shape))
    assert iou > 0.7, iou
    assert alice.page.locator("#chips .chip").count() == 3
    assert "ms" in alice.page.locator("#click-ms").inner_text()


def test_tab_cycles_the_three_candidates(alice, server):
    scene = server["scenes"][1]
    _, (x, y) = _object_point(scene)
    alice.open(server["ids"][1])
    alice.click(x, y)
    first = alice.state()["selected"]
    seen = [first]
    areas = {first: alice.state()["workingArea"]}
    for key in ("Tab", "Tab", "c"):
        alice.key(key)
        st = alice.state()
        seen.append(st["selected"])
        areas[st["selected"]] = st["workingArea"]
    assert seen == [first, (first + 1) % 3, (first + 2) % 3, first]
    assert len(set(areas.values())) > 1  # the candidates are different masks
    assert alice.page.locator("#chips .chip.selected").count() == 1


def test_enter_accepts_the_mask_the_predictor_gives(alice, server, bundled):
    image_id = server["ids"][2]
    scene = server["scenes"][2]
    _, (x, y) = _object_point(scene)
    alice.open(image_id)
    before = len(_server_masks(server, image_id))
    alice.click(x, y)
    st = alice.state()
    alice.key("Enter")
    masks = _server_masks(server, image_id)
    assert len(masks) == before + 1
    record = masks[-1]
    assert record.annotator == "alice" and record.source == "manual"
    assert np.allclose(record.point_coords, [[x, y]], atol=0.05)
    assert abs(record.predicted_iou - st["scores"][st["selected"]]) < 1e-4
    predictor = segany.SamPredictor(bundled)
    predictor.set_image(scene.image)
    ref, _, _ = predictor.predict(
        np.array(record.point_coords), np.array([1]), multimask_output=True
    )
    got = decode_coco_rle(record.segmentation)
    assert mask_iou(got, ref[st["selected"]]) > 0.99
    after = alice.state()
    assert not after["working"] and after["accepted"][-1]["id"] == record.id
    assert alice.page.locator("#mask-list li").count() == len(masks)
    # reload: still listed and drawn
    alice.open(image_id)
    assert [m["id"] for m in alice.state()["accepted"]] == [m.id for m in masks]
    assert alice.page.locator(f'#mask-list li[data-id="{record.id}"]').count() == 1


def test_js_rle_decoder_equals_encode_coco_rle(alice, server):
    alice.open(server["ids"][0])
    rng = np.random.default_rng(0)
    cases = []
    for h, w, p in ((1, 1, 0.5), (7, 5, 0.5), (40, 30, 0.1), (64, 80, 0.9), (300, 400, 0.5)):
        m = rng.random((h, w)) < p
        if h > 10:  # blobs as well as noise: long runs
            m[h // 4 : h // 2, w // 3 : w // 2] = True
        cases.append(m)
    cases.append(np.zeros((20, 10), bool))
    cases.append(np.ones((20, 10), bool))
    rles = [encode_coco_rle(m) for m in cases]
    out = alice.page.evaluate(
        """async (rles) => {
            const rle = await import("/static/app/rle.js");
            return rles.map((r) => ({mask: Array.from(rle.rleToMask(r)),
                                     counts: rle.encodeCounts(rle.decodeCounts(r.counts)),
                                     unc: rle.maskToRle(rle.rleToMask(r), ...r.size)}));
        }""",
        rles,
    )
    for m, r, o in zip(cases, rles, out, strict=True):
        assert np.array_equal(np.asarray(o["mask"], bool).reshape(m.shape), m)
        assert o["counts"] == r["counts"]
        assert np.array_equal(decode_uncompressed_rle(o["unc"]), m)
