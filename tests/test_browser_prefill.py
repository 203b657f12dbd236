"""Reviewing prefilled proposals in the browser tool, and the prefill split on the metrics
page, in real headless Chromium against a real ``segany serve`` app (uvicorn in a thread,
127.0.0.1). The proposals are stored directly with ``Project.add_prefill`` (the scenes' true
objects, no detector). The tests drive the tool with real mouse and keyboard events and read
the results from the project, the server and the read-only ``window.seganyTool`` hook.

Needs Debian's ``chromium`` and the vendor files, as tests/test_browser_tool.py does."""

from __future__ import annotations

import io

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
from segany.formats import decode_coco_rle  # noqa: E402
from tests.helpers import BrowserTool  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TOKEN = "owner-token-for-prefill-tests"
SIZE = (240, 320)  # (H, W) of the generated scenes
N_PROPOSALS = 3  # per prefilled image


def _objects(scene) -> list[np.ndarray]:
    """The scene's largest top-level objects, each without the pixels of the others (HW
    bool), so that a click inside one hits only it."""
    top = [scene.masks[k] for k in range(len(scene.masks)) if scene.levels[k] == 0]
    top = sorted(top, key=lambda m: -int(m.sum()))[:N_PROPOSALS]
    return [m & ~np.any([o for o in top if o is not m], axis=0) for m in top]


def _deep_point(mask: np.ndarray) -> tuple[float, float]:
    """XY pixel centre of the point of ``mask`` farthest from its boundary."""
    depth = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(depth.argmax()), depth.shape)
    return float(x) + 0.5, float(y) + 0.5


@pytest.fixture(scope="module")
def server(browser_requirements, bundled, tmp_path_factory):
    """Three scenes: images 0 and 1 prefilled with three proposals each, image 2 not; one
    annotator, alice. Stopped at the end."""
    root = tmp_path_factory.mktemp("prefill-tool") / "proj"
    project = Project.init(root, model="segany_tiny")
    scenes = ProceduralScenes(3, seed=5, sizes=(SIZE,))
    ids, proposals, objects = [], {}, {}
    for i in range(3):
        buf = io.BytesIO()
        Image.fromarray(scenes[i].image).save(buf, format="PNG")
        ids.append(project.add_image_bytes(buf.getvalue(), f"scene_{i}.png")[0].id)
        objects[ids[i]] = _objects(scenes[i])
    for image_id in ids[:2]:
        masks = [{"segmentation": m, "predicted_iou": 0.95} for m in objects[image_id]]
        stored = project.add_prefill(image_id, masks, method="test")
        proposals[image_id] = [m.id for m in stored]
    token = project.add_annotator("alice")[1]
    app = create_app(project, predictor_factory=lambda: segany.SamPredictor(bundled), token=TOKEN)
    try:
        with app_server(app) as base:
            yield {"base": base, "project": project, "ids": ids, "proposals": proposals,
                   "objects": objects, "token": token}  # fmt: skip
    finally:
        project.close()


@pytest.fixture
def alice(browser, server):
    tool = BrowserTool(browser, server, server["token"])
    yield tool
    assert not tool.errors, tool.errors
    tool.close()


def _count(tool: BrowserTool, selector: str) -> int:
    return tool.page.locator(selector).count()


def _select_in_list(tool: BrowserTool, mask_id: int) -> None:
    if tool.state()["selectedMask"] != mask_id:  # a click on the selected one deselects it
        tool.page.click(f"#proposal-list li[data-id='{mask_id}']")
        tool.idle()
    assert tool.state()["selectedMask"] == mask_id


def test_review_proposals_in_the_tool(alice, server):
    project = server["project"]
    a, b, c = server["ids"]
    m1, m2, m3 = server["proposals"][a]
    alice.open(a)
    st = alice.state()
    assert st["proposals"] == [m1, m2, m3] and not st["readOnly"]
    assert {m["id"]: m["review"] for m in st["accepted"]} == dict.fromkeys((m1, m2, m3), "proposal")
    assert {i["id"]: i["proposals"] for i in st["images"]} == {a: 3, b: 3, c: 0}
    # drawn apart from the accepted masks: their own list section, none among the masks
    assert alice.page.locator("#proposals-section").is_visible()
    assert _count(alice, "#proposal-list li") == 3 and _count(alice, "#mask-list li") == 0
    assert alice.page.inner_text("#proposal-count") == "(3)"
    assert "0.95" in alice.page.inner_text(f"#proposal-list li[data-id='{m1}']")
    assert _count(alice, "#image-list li.has-proposals") == 2
    assert "3 to review" in alice.page.inner_text(f"#image-list li[data-id='{a}']")

    # a click on a proposal selects it (no prompt); A accepts it, with its review time
    alice.click(*_deep_point(server["objects"][a][0]))
    st = alice.state()
    assert st["selectedMask"] == m1 and not st["working"] and st["points"] == []
    alice.key("a")
    assert project.proposal_states(a)[m1] == "accepted"
    (event,) = project.list_events(kind="accept_prefill")
    assert event.mask_id == m1 and event.elapsed_ms is not None and event.elapsed_ms >= 0
    st = alice.state()
    assert st["proposals"] == [m2, m3] and _count(alice, "#mask-list li") == 1

    # the Reject button rejects the selected proposal: the store deletes it
    _select_in_list(alice, m3)
    alice.page.click("#proposal-reject-btn")
    alice.idle()
    assert m3 not in {m.id for m in project.list_masks(a)}
    assert [e.mask_id for e in project.list_events(kind="reject_prefill")] == [m3]

    # M edits a proposal (brush), Enter stores the edit: an edited proposal
    _select_in_list(alice, m2)
    before = decode_coco_rle(project.get_mask(m2).segmentation)
    outside = cv2.distanceTransform((~before).astype(np.uint8), cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(outside.argmax()), outside.shape)
    alice.key("m")
    assert alice.state()["editing"] == m2 and alice.state()["tool"] == "brush"
    alice.drag((float(x), float(y)), (float(x) + 4, float(y)))
    alice.key("Enter")
    after = decode_coco_rle(project.get_mask(m2).segmentation)
    assert after.sum() > before.sum() and np.all(after[before])
    assert project.proposal_states(a) == {m1: "accepted", m2: "edited"}
    st = alice.state()
    assert st["proposals"] == [] and st["editing"] is None
    assert not alice.page.locator("#proposals-section").is_visible()

    # on image b: Enter accepts the selected proposal, "Accept all" (confirmed) the rest
    n1, n2, n3 = server["proposals"][b]
    alice.open(b)
    _select_in_list(alice, n1)
    alice.key("Enter")
    assert project.proposal_states(b) == {n1: "accepted", n2: "proposal", n3: "proposal"}
    alice.page.once("dialog", lambda d: d.accept())
    alice.page.click("#proposal-accept-all-btn")
    alice.idle()
    assert project.proposal_states(b) == dict.fromkeys((n1, n2, n3), "accepted")

    # a reload shows the stored reviews
    alice.open(a)
    st = alice.state()
    assert {m["id"]: m["review"] for m in st["accepted"]} == {m1: "accepted", m2: "edited"}
    assert st["proposals"] == [] and _count(alice, "#image-list li.has-proposals") == 0
    assert "edited" in alice.page.inner_text(f"#mask-list li[data-id='{m2}']")
    alice.key("?")
    assert "cannot be undone" in alice.page.inner_text("#help")


def test_metrics_page_shows_the_prefill_split(alice, server):
    """The metrics page's prefill table equals /api/stats' prefill, after the reviews the test
    above made in the tool (it runs first: the module's tests share one project)."""
    project = server["project"]
    a, b, c = server["ids"]
    project.add_mask(c, segmentation=server["objects"][c][0], annotator="alice")
    for image_id in (a, b, c):
        project.record_event("open", image_id=image_id, annotator="alice")
        project.set_status(image_id, "done", annotator="alice")
    page = alice.page
    page.goto(f"{server['base']}/metrics")
    page.wait_for_function("document.body.dataset.state === 'ready'")
    pre = page.evaluate("fetch('/api/stats').then((r) => r.json())")["prefill"]
    assert pre["by_annotator"][-1]["annotator"] == "alice"

    def cells(annotator: str) -> dict[str, str]:
        row = page.locator(f"#prefill tr[data-annotator='{annotator}'] td")
        return {row.nth(k).get_attribute("data-col"): row.nth(k).inner_text()
                for k in range(row.count())}  # fmt: skip

    for key, row in (("*", pre), ("alice", pre["by_annotator"][-1])):
        shown = cells(key)
        for col in ("reviewed", "accepted", "edited", "rejected", "with_images", "without_images"):
            name = col.replace("with_", "with_prefill.").replace("without_", "without_prefill.")
            group, _, field = name.rpartition(".")
            value = row[group][field] if group else row[col]
            assert shown[col] == str(value), (key, col)
        assert shown["accept_rate"] == f"{100 * row['accept_rate']:.0f} %"
        assert shown["with_masks_per_image"] == f"{row['with_prefill']['masks_per_image']:.2f}"
    if pre["reviewed"] != 6:
        pytest.skip("needs the reviews of test_review_proposals_in_the_tool (run the module)")
    assert pre["by_annotator"][-1]["reviewed"] == 6  # the tool's reviews are alice's
    assert (pre["accepted"], pre["edited"], pre["rejected"]) == (4, 1, 1)
    assert pre["with_prefill"]["images"] == 2 and pre["without_prefill"]["images"] == 1
    assert "6 proposals" in page.inner_text("#prefill-summary")
