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
from segany.engine.web import app_server  # noqa: E402
from segany.formats import decode_coco_rle, decode_uncompressed_rle, encode_coco_rle  # noqa: E402
from segany.masks import mask_iou  # noqa: E402
from tests.helpers import BrowserTool as Tool  # noqa: E402
from tests.helpers import bounded as _bounded  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TOKEN = "owner-token-for-browser-tests"
SIZE = (240, 320)  # (H, W) of the generated scenes
N_IMAGES = 10
BIG = (3000, 4000)  # (H, W) of the large image
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "annotation_tool.png"


def _object_point(scene) -> tuple[int, tuple[float, float]]:
    """The largest top-level object of a scene and a point deep inside it (pixel centre)."""
    objects = [k for k in range(len(scene.masks)) if scene.levels[k] == 0]
    k = max(objects, key=lambda j: int(scene.masks[j].sum()))
    depth = cv2.distanceTransform(scene.masks[k].astype(np.uint8), cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(depth.argmax()), depth.shape)
    return k, (float(x) + 0.5, float(y) + 0.5)


@pytest.fixture(scope="module")
def server(browser_requirements, bundled, tmp_path_factory):
    """A served project: scenes as images, two annotators (alice, bob); stopped at the end."""
    root = tmp_path_factory.mktemp("tool") / "proj"
    project = Project.init(root, model="segany_tiny")
    scenes = ProceduralScenes(N_IMAGES, seed=3, sizes=(SIZE,))
    ids = []
    for i in range(N_IMAGES):
        buf = io.BytesIO()
        Image.fromarray(scenes[i].image).save(buf, format="PNG")
        record, _ = project.add_image_bytes(buf.getvalue(), f"scene_{i}.png")
        ids.append(record.id)
    big = np.zeros((*BIG, 3), np.uint8)
    big[...] = (40, 60, 80)
    cv2.circle(big, (2000, 1500), 800, (230, 200, 40), -1)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")
    ids.append(project.add_image_bytes(buf.getvalue(), "big.png")[0].id)
    tokens = {name: project.add_annotator(name)[1] for name in ("alice", "bob")}
    app = create_app(project, predictor_factory=lambda: segany.SamPredictor(bundled), token=TOKEN)
    try:
        with app_server(app) as base:
            yield {
                "base": base,
                "project": project,
                "scenes": scenes,
                "ids": ids,
                "tokens": tokens,
            }
    finally:
        project.close()


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
    assert badge.startswith("decoder: browser (WASM, ") and "thread" in badge
    alice.click(x, y)
    st = alice.state()
    assert np.allclose(st["points"], [[x, y]], atol=0.05) and st["labels"] == [1]
    assert len(st["scores"]) == 3 and st["selected"] == int(np.argmax(st["scores"]))
    assert st["workingArea"] > 0 and st["lastClickMs"] is not None
    mask = alice.working_mask()
    iou = mask_iou(mask, _display_gt(scene.masks[k], mask.shape))
    assert iou > 0.9, iou  # 0.98 measured (the display layer vs the scene's ground truth)
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
    alice.key("Control+z")  # the candidate choice is undone too
    assert alice.state()["selected"] == (first + 2) % 3
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
                                     unc: rle.maskToRle(rle.rleToMask(r), ...r.size),
                                     crop: Array.from(rle.cropToMask(rle.rleToCrop(r),
                                                                     ...r.size))}));
        }""",
        rles,
    )
    for m, r, o in zip(cases, rles, out, strict=True):
        assert np.array_equal(np.asarray(o["mask"], bool).reshape(m.shape), m)
        assert o["counts"] == r["counts"]
        assert np.array_equal(decode_uncompressed_rle(o["unc"]), m)
        assert np.array_equal(np.asarray(o["crop"], bool).reshape(m.shape), m)


def test_background_point_changes_the_mask(alice, server):
    scene = server["scenes"][3]
    k, (x, y) = _object_point(scene)
    alice.open(server["ids"][3])
    alice.click(x, y)
    first = alice.working_mask()
    # a background point on the selected mask, away from the object: the mask shrinks there
    ys, xs = np.nonzero(first & ~_display_gt(scene.masks[k], first.shape))
    if len(xs):
        bx, by = float(xs[len(xs) // 2]) + 0.5, float(ys[len(ys) // 2]) + 0.5
    else:
        bx, by = 2.5, 2.5
    alice.click(bx, by, button="right")
    st = alice.state()
    assert st["labels"] == [1, 0] and len(st["scores"]) == 1  # single mask after the first
    second = alice.working_mask()
    assert not np.array_equal(first, second)
    # shift+click is a background point too
    alice.page.keyboard.down("Shift")
    alice.click(3.5, 3.5)
    alice.page.keyboard.up("Shift")
    assert alice.state()["labels"] == [1, 0, 0]
    alice.key("Escape")  # discards the working mask, recorded as an event
    assert not alice.state()["working"]
    kinds = [e.kind for e in server["project"].list_events(image_id=server["ids"][3])]
    assert "discard" in kinds
    alice.key("Control+z")  # the discard is undone: the mask and its prompts are back
    assert alice.state()["labels"] == [1, 0, 0]


def test_drag_draws_a_box_and_a_mask_inside_it(alice, server):
    scene = server["scenes"][4]
    k, _ = _object_point(scene)
    ys, xs = np.nonzero(scene.masks[k])
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    alice.open(server["ids"][4])
    alice.drag((box[0], box[1]), (box[2], box[3]))
    st = alice.state()
    assert st["points"] == [] and st["box"] is not None
    assert np.allclose(st["box"], box, atol=0.1)
    assert len(st["scores"]) == 1
    mask = alice.working_mask()
    assert mask.any()
    ys2, xs2 = np.nonzero(mask)
    assert xs2.min() >= box[0] - 3 and xs2.max() <= box[2] + 3
    assert ys2.min() >= box[1] - 3 and ys2.max() <= box[3] + 3
    assert mask_iou(mask, _display_gt(scene.masks[k], mask.shape)) > 0.85  # 0.95 measured
    # a new drag replaces the box
    alice.drag((box[0] + 2, box[1] + 2), (box[2] - 2, box[3] - 2))
    assert np.allclose(alice.state()["box"], [box[0] + 2, box[1] + 2, box[2] - 2, box[3] - 2],
                       atol=0.1)  # fmt: skip


def test_brush_adds_and_eraser_removes_pixels(alice, server):
    image_id = server["ids"][5]
    alice.open(image_id)
    before = len(_server_masks(server, image_id))
    alice.key("b")
    assert alice.state()["tool"] == "brush"
    alice.drag((40, 40), (120, 40))  # a manual mask: no SAM prompt
    st = alice.state()
    assert st["strokes"] == 1 and st["scores"] == []
    painted = st["workingArea"]
    r = st["brushRadius"]
    assert painted > 80 * 2 * r * 0.8
    alice.key("e")
    alice.drag((80, 20), (80, 60))  # cut it in two
    erased = alice.state()["workingArea"]
    assert 0 < erased < painted
    mask = alice.working_mask()
    assert not mask[40, 80 - r // 2 : 80 + r // 2].any() and mask[40, 50] and mask[40, 110]
    alice.key("Control+z")  # undo the eraser stroke
    assert alice.state()["workingArea"] == painted
    alice.key("Control+Shift+z")
    assert alice.state()["workingArea"] == erased
    alice.key("Enter")
    masks = _server_masks(server, image_id)
    assert len(masks) == before + 1
    got = decode_coco_rle(masks[-1].segmentation)
    assert got[40, 50] and got[40, 110] and not got[40, 80]
    assert abs(int(got.sum()) - erased) < 0.05 * erased  # the full-size replay ~ the display


def test_undo_redo_of_accept_and_delete(alice, server):
    image_id = server["ids"][6]
    scene = server["scenes"][6]
    _, (x, y) = _object_point(scene)
    alice.open(image_id)
    before = {m.id for m in _server_masks(server, image_id)}
    alice.click(x, y)
    alice.key("Enter")
    added = {m.id for m in _server_masks(server, image_id)} - before
    assert len(added) == 1
    alice.key("Control+z")  # undo the accept: deleted on the server, the working mask is back
    assert {m.id for m in _server_masks(server, image_id)} == before
    assert alice.state()["working"]
    alice.key("Control+y")  # redo: posted again
    now = {m.id for m in _server_masks(server, image_id)}
    assert len(now - before) == 1 and not alice.state()["working"]
    new_id = (now - before).pop()
    # hover highlights it; select it in the list and Delete
    item = alice.page.locator(f'#mask-list li[data-id="{new_id}"]')
    item.hover()
    assert alice.state()["hoverMask"] == new_id
    item.click()
    assert alice.state()["selectedMask"] == new_id
    alice.page.locator("#view").focus()
    alice.key("Delete")
    assert {m.id for m in _server_masks(server, image_id)} == before
    alice.key("Control+z")  # undo the delete: it comes back
    assert len({m.id for m in _server_masks(server, image_id)} - before) == 1
    kinds = [e.kind for e in server["project"].list_events(image_id=image_id)]
    assert "undo" in kinds and "redo" in kinds and "prompt" in kinds


def test_another_annotator_cannot_take_a_leased_image(alice, browser, server):
    image_id = server["ids"][7]
    alice.open(image_id)
    assert not alice.state()["readOnly"]
    bob = Tool(browser, server, server["tokens"]["bob"])
    try:
        statuses = []
        bob.page.on(
            "response",
            lambda r: statuses.append(r.status) if r.url.endswith(f"/{image_id}/lease") else None,
        )
        bob.open(image_id)
        st = bob.state()
        assert st["imageId"] == image_id and st["readOnly"] and st["leaseHolder"] == "alice"
        assert 409 in statuses
        assert "Taken by alice" in bob.page.locator("#banner").inner_text()
        item = bob.page.locator(f'#image-list li[data-id="{image_id}"]')
        assert "taken by alice" in item.inner_text()
        before = len(_server_masks(server, image_id))
        _, (x, y) = _object_point(server["scenes"][7])
        bob.click(x, y)
        bob.key("Enter")
        assert not bob.state()["working"]  # read-only: no prompt taken
        assert len(_server_masks(server, image_id)) == before
        assert not bob.errors, bob.errors
    finally:
        bob.close()
    # leaving the page releases the lease (a keepalive DELETE on pagehide)
    alice.page.close(run_before_unload=True)
    deadline = time.monotonic() + 20
    while server["project"].get_image(image_id).lease_holder and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server["project"].get_image(image_id).lease_holder is None


@pytest.mark.parametrize("how", ["query", "wasm_404"])
def test_server_fallback_gives_a_mask_and_says_so(browser, server, how):
    tool = Tool(browser, server, server["tokens"]["alice"])
    try:
        if how == "query":
            tool.open(server["ids"][0], query="decoder=server")
        else:
            tool.context.route("**/*.wasm", lambda route: route.fulfill(status=404, body="no"))
            tool.open(server["ids"][0])
        st = tool.state()
        assert st["decoder"] == "server"
        badge = tool.page.locator("#decoder-badge").inner_text()
        assert badge.startswith("decoder: server (")
        if how == "wasm_404":
            assert "WASM unavailable" in badge
        scene = server["scenes"][0]
        k, (x, y) = _object_point(scene)
        tool.click(x, y)
        st = tool.state()
        assert len(st["scores"]) == 3
        mask = tool.working_mask()
        assert mask_iou(mask, _display_gt(scene.masks[k], mask.shape)) > 0.9  # 0.98 measured
        tool.click(3.5, 3.5, button="right")  # the server's mask_input token is fed back
        assert len(tool.state()["scores"]) == 1
        if how == "query":  # accept: the server's own RLE is stored
            before = len(_server_masks(server, server["ids"][0]))
            tool.key("Enter")
            assert len(_server_masks(server, server["ids"][0])) == before + 1
        assert not tool.errors, tool.errors
    finally:
        tool.close()


def test_admin_sign_in_creates_an_annotator(browser, server):
    tool = Tool(browser, server, TOKEN)
    try:
        tool.open()
        dialog = tool.page.locator("#signin")
        assert dialog.is_visible()
        tool.page.fill("#signin-name", "alice")  # taken: the server's message is shown
        tool.page.click("#signin-ok")
        tool.page.wait_for_function(
            "document.getElementById('signin-error').textContent.length > 0"
        )
        assert "exists" in tool.page.locator("#signin-error").inner_text()
        tool.page.fill("#signin-name", "carol")
        tool.page.click("#signin-ok")
        tool.page.wait_for_url(f"{server['base']}/")
        tool.page.wait_for_function("window.seganyTool !== undefined")
        _bounded(tool.page, "window.seganyTool.ready")
        assert tool.state()["annotator"] == "carol"
        assert "carol" in [a.name for a in server["project"].list_annotators()]
    finally:
        tool.close()


def test_screenshot_with_accepted_masks(alice, server, tmp_path):
    """The tool with a few accepted masks; SEGANY_SCREENSHOT=1 writes docs/images/."""
    image_id = server["ids"][1]
    scene = server["scenes"][1]
    alice.open(image_id)
    objects = sorted(
        (k for k in range(len(scene.masks)) if scene.levels[k] == 0),
        key=lambda j: -int(scene.masks[j].sum()),
    )[:4]
    for k in objects[:3]:
        depth = cv2.distanceTransform(scene.masks[k].astype(np.uint8), cv2.DIST_L2, 3)
        y, x = np.unravel_index(int(depth.argmax()), depth.shape)
        alice.click(float(x) + 0.5, float(y) + 0.5)
        alice.key("Enter")
    depth = cv2.distanceTransform(scene.masks[objects[3]].astype(np.uint8), cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(depth.argmax()), depth.shape)
    alice.click(float(x) + 0.5, float(y) + 0.5)  # a working mask with its candidates, too
    assert len(alice.state()["accepted"]) >= 3
    out = SCREENSHOT if os.environ.get("SEGANY_SCREENSHOT") == "1" else tmp_path / "tool.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    png = alice.page.screenshot()
    # 256 colours keep the committed PNG small (< 300 KB)
    Image.open(io.BytesIO(png)).convert("RGB").quantize(256).save(out, optimize=True)
    assert 10_000 < out.stat().st_size < 300_000


def test_edit_a_mask_and_a_stale_edit_is_refused(alice, server):
    image_id = server["ids"][8]
    alice.open(image_id)
    alice.key("b")
    alice.drag((40, 40), (100, 40))
    alice.key("Enter")
    record = _server_masks(server, image_id)[-1]
    area = record.area
    alice.page.locator(f'#mask-list li[data-id="{record.id}"] .swatch').click()
    alice.key("m")  # edit: the mask becomes the working mask, the brush is on
    st = alice.state()
    assert st["editing"] == record.id and st["tool"] == "brush" and st["workingArea"] > 0
    alice.drag((40, 100), (100, 100))
    alice.key("Enter")  # PATCH with its version
    edited = server["project"].get_mask(record.id)
    assert edited.version == record.version + 1 and edited.area > area
    assert len(_server_masks(server, image_id)) == 1
    # it changes meanwhile (alice in another tab): the edit is refused with 409, nothing lost
    assert alice.state()["selectedMask"] == record.id  # still selected after the edit
    alice.key("m")
    alice.drag((40, 160), (100, 160))
    server["project"].update_mask(
        record.id, version=edited.version, label="changed", annotator="alice"
    )
    alice.key("Enter")
    toast = alice.page.locator(".toast").last
    assert "version" in toast.inner_text(timeout=10_000).lower()
    st = alice.state()
    assert st["working"] and st["editing"] == record.id  # the edit stays, with the message
    assert {m["id"]: m["version"] for m in st["accepted"]}[record.id] == edited.version + 1
    assert server["project"].get_mask(record.id).area == edited.area


def test_pan_zoom_and_a_large_image(alice, server):
    image_id = server["ids"][-1]  # 4000 x 3000
    alice.open(image_id)
    st = alice.state()
    assert st["displaySize"] == [768, 1024]  # the working layer is capped, not full size
    fit = st["view"]
    alice.page.mouse.move(*alice.screen(1500, 1000))
    alice.page.mouse.wheel(0, -400)  # zoom in about the cursor
    alice.page.wait_for_function(f"window.seganyTool.state().view.scale > {fit['scale']}")
    sx, sy = alice.screen(1500, 1000)
    view = alice.state()["view"]
    assert view["scale"] > fit["scale"] * 1.5
    pos = alice.screen(1500, 1000)
    assert abs(pos[0] - sx) < 1 and abs(pos[1] - sy) < 1
    alice.click(2000, 1500)  # a mask on the large image, drawn from the low-res logits
    st = alice.state()
    assert st["workingArea"] > 0.5 * np.pi * (800 * 1024 / 4000) ** 2
    # space+drag pans
    alice.page.keyboard.down(" ")
    alice.page.mouse.move(600, 400)
    alice.page.mouse.down()
    alice.page.mouse.move(700, 450, steps=5)
    alice.page.mouse.up()
    alice.page.keyboard.up(" ")
    moved = alice.state()["view"]
    assert abs(moved["tx"] - view["tx"] - 100) < 2 and abs(moved["ty"] - view["ty"] - 50) < 2
    assert len(alice.state()["points"]) == 1  # panning is no prompt
    # middle-button drag pans too
    alice.page.mouse.move(600, 400)
    alice.page.mouse.down(button="middle")
    alice.page.mouse.move(560, 380, steps=5)
    alice.page.mouse.up(button="middle")
    again = alice.state()["view"]
    assert abs(again["tx"] - moved["tx"] + 40) < 2 and abs(again["ty"] - moved["ty"] + 20) < 2
    alice.key("0")
    alice.page.wait_for_function(f"window.seganyTool.state().view.scale === {fit['scale']}")
    alice.key("+")
    assert alice.state()["view"]["scale"] > fit["scale"]
    alice.key("-")
    alice.key("-")
    assert alice.state()["view"]["scale"] < fit["scale"]


def test_next_previous_done_and_help(alice, server):
    project = server["project"]
    ids = server["ids"]
    alice.open(ids[0])
    alice.key("n")
    assert alice.state()["imageId"] == ids[1]
    assert project.get_image(ids[0]).lease_holder is None  # released
    assert project.get_image(ids[1]).lease_holder == "alice"
    alice.key("p")
    assert alice.state()["imageId"] == ids[0]
    alice.key("d")  # done, and on to the next
    assert project.get_image(ids[0]).status == "done"
    assert alice.state()["imageId"] == ids[1]
    help_panel = alice.page.locator("#help")
    assert not help_panel.is_visible()
    alice.key("?")
    assert help_panel.is_visible() and "Ctrl+Z" in help_panel.inner_text()
    alice.key("h")
    assert not help_panel.is_visible()
    alice.key("o")
    assert alice.state()["overlays"] is False
    alice.key("o")
    assert alice.state()["overlays"] is True


def _bilinear_reference(low: np.ndarray, valid: tuple[float, float], h: int, w: int) -> np.ndarray:
    """What layers.js lowResToMask computes, pixel by pixel: half-pixel centres, edges clamped."""
    n0, n1 = low.shape
    vh, vw = valid

    def axis(size: int, extent: float, n: int):
        u = np.maximum((np.arange(size) + 0.5) * (extent / size) - 0.5, 0)
        a = np.minimum(np.floor(u).astype(int), n - 1)
        return a, np.minimum(a + 1, n - 1), (u - a).astype(np.float32)

    y0, y1, fy = axis(h, vh, n0)
    x0, x1, fx = axis(w, vw, n1)
    top = low[y0][:, x0] + (low[y0][:, x1] - low[y0][:, x0]) * fx
    bot = low[y1][:, x0] + (low[y1][:, x1] - low[y1][:, x0]) * fx
    return (top + (bot - top) * fy[:, None]) > 0


def test_display_upsample_equals_bilinear(alice, server):
    alice.open(server["ids"][0])
    rng = np.random.default_rng(1)
    n = 64
    yy, xx = np.mgrid[0:n, 0:n]
    cases = []
    for i in range(4):  # smooth blobs plus noise: edges, interiors, zero crossings
        cx, cy, r = rng.uniform(10, 50), rng.uniform(10, 50), rng.uniform(5, 25)
        low = (r - np.hypot(xx - cx, yy - cy)).astype(np.float32)
        low += rng.normal(0, 2, low.shape).astype(np.float32) * (i % 2)
        cases.append(low)
    for low, (valid, h, w) in zip(
        cases,
        [((48, 64), 300, 400), ((64, 48), 250, 187), ((40.5, 64), 81, 128), ((64, 64), 64, 64)],
        strict=True,
    ):
        got = alice.page.evaluate(
            """async ([low, n, valid, h, w]) => {
                const L = await import("/static/app/layers.js");
                const r = {lowRes: Float32Array.from(low), lowResSize: [n, n], lowResValid: valid};
                return Array.from(L.lowResToMask(r, 0, h, w));
            }""",
            [low.ravel().tolist(), n, list(valid), h, w],
        )
        ref = _bilinear_reference(low, valid, h, w)
        got = np.asarray(got, bool).reshape(h, w)
        assert int((got != ref).sum()) <= 2  # float32 rounding at exact zero crossings only


def test_label_is_saved_verbatim(alice, server):
    image_id = server["ids"][9]
    alice.open(image_id)
    alice.key("b")
    alice.drag((30, 30), (60, 60))
    alice.key("Enter")
    record = _server_masks(server, image_id)[-1]
    label = "road'; DROP TABLE masks; -- <b>é</b>"
    field = alice.page.locator(f'#mask-list li[data-id="{record.id}"] input')
    field.fill(label)
    field.press("Enter")  # blur -> change -> PATCH with the version
    alice.idle()
    saved = server["project"].get_mask(record.id)
    assert saved.label == label and saved.version == record.version + 1
    assert {m["id"]: m["label"] for m in alice.state()["accepted"]}[record.id] == label
    # a label for new masks goes with each accept
    alice.page.fill("#next-label", "car")
    alice.page.press("#next-label", "Enter")
    alice.drag((150, 150), (180, 150))
    alice.key("Enter")
    assert _server_masks(server, image_id)[-1].label == "car"


def test_upload_adds_images_and_refuses_non_images(alice, server):
    alice.open(server["ids"][0])
    before = len(server["project"].list_images())
    image = np.zeros((50, 60, 3), np.uint8)
    image[10:30, 20:40] = 200
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    alice.page.set_input_files(
        "#upload-input",
        files=[
            {"name": "added.png", "mimeType": "image/png", "buffer": buf.getvalue()},
            {"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image at all"},
        ],
    )
    alice.page.wait_for_function(
        f"window.seganyTool.state().images.length === {before + 1}", timeout=30_000
    )
    alice.idle()
    names = [i.file_name for i in server["project"].list_images()]
    assert len(names) == before + 1 and "added.png" in names and "notes.png" not in names
    toasts = alice.page.locator(".toast").all_inner_texts()
    assert any("notes.png" in t for t in toasts), toasts
    assert alice.page.locator("#image-list li").count() == before + 1


def test_a_failed_accept_keeps_the_working_mask(alice, server):
    image_id = server["ids"][3]
    alice.open(image_id)
    before = len(_server_masks(server, image_id))

    def refuse(route):
        if route.request.method == "POST":
            route.fulfill(
                status=503,
                content_type="application/json",
                body='{"detail": "the database is busy; try again"}',
            )
        else:
            route.continue_()

    alice.page.route(f"**/api/images/{image_id}/masks", refuse)
    _, (x, y) = _object_point(server["scenes"][3])
    alice.click(x, y)
    alice.key("Enter")
    assert "the database is busy" in alice.page.locator(".toast").last.inner_text()
    st = alice.state()
    assert st["working"] and st["workingArea"] > 0  # kept, not dropped
    assert len(_server_masks(server, image_id)) == before
    alice.page.unroute(f"**/api/images/{image_id}/masks")
    alice.key("Enter")  # again, now the server takes it
    assert len(_server_masks(server, image_id)) == before + 1
    assert not alice.state()["working"]
