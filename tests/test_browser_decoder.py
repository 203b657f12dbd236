"""The in-browser decoder in real headless Chromium: ONNX Runtime Web (WASM, in a Web Worker)
runs segany's ONNX decoder export of the bundled model on an embedding computed by
``SamPredictor``, and gives the masks, IoU predictions and low-res logits that ONNX Runtime and
PyTorch give on the same embedding and prompts.

Needs Debian's ``chromium`` and the vendor files (``python -m segany.engine.web.build``; ``make
test`` runs both installs). Missing either, the tests skip locally and fail on CI."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import segany
from segany.data.scenes import ProceduralScenes
from segany.engine.web import STATIC_DIR, isolated_server, launch_chromium
from segany.export import export_onnx
from segany.masks import mask_iou
from segany.runtime import OnnxPredictor

pytestmark = pytest.mark.usefixtures("one_thread")

# Any one wait: Playwright's own, and each request to the worker (page.evaluate has no timeout
# of its own, so the page's client rejects a request unanswered in this time).
TIMEOUT_MS = 120_000
NEAR = 1e-2  # logits this close to the threshold may flip between runtimes


@pytest.fixture(scope="module")
def export_dir(bundled, tmp_path_factory):
    out = tmp_path_factory.mktemp("browser_onnx")
    export_onnx(bundled, out, encoder=False, name="segany_tiny")
    return out


@pytest.fixture(scope="module")
def low_res_dir(export_dir, tmp_path_factory):
    """The export with its decoder cut before the mask upscale: inputs without orig_im_size,
    outputs iou_predictions and low_res_masks only (a low-res-only graph)."""
    import onnx
    from onnx.utils import Extractor

    out = tmp_path_factory.mktemp("browser_onnx_low")
    manifest = json.loads((export_dir / "manifest.json").read_text())
    for key in ("decoder_image", "decoder_prompt"):  # only decoder.onnx: the cut graph
        del manifest["files"][key]
    (out / "manifest.json").write_text(json.dumps(manifest))
    model = onnx.load(str(export_dir / "decoder.onnx"))
    inputs = [i.name for i in model.graph.input if i.name != "orig_im_size"]
    cut = Extractor(model).extract_model(inputs, ["iou_predictions", "low_res_masks"])
    onnx.save(cut, str(out / "decoder.onnx"))
    return out


@pytest.fixture(scope="module")
def scene_case(bundled):
    """A non-square scene, its largest object, a point deep inside it and the embedding."""
    scene = ProceduralScenes(4, seed=3, sizes=((240, 320),))[0]
    objects = [k for k in range(len(scene.masks)) if scene.levels[k] == 0]
    k = max(objects, key=lambda j: int(scene.masks[j].sum()))
    gt = scene.masks[k]
    depth = cv2.distanceTransform(gt.astype(np.uint8), cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(depth.argmax()), depth.shape)
    predictor = segany.SamPredictor(bundled)
    predictor.set_image(scene.image)
    emb = predictor.get_image_embedding().numpy().astype(np.float32)
    return {"scene": scene, "gt": gt, "point": (float(x), float(y)), "torch": predictor, "emb": emb}


@pytest.fixture(scope="module")
def page(browser_requirements, export_dir, low_res_dir, scene_case):
    from playwright.sync_api import sync_playwright

    emb = scene_case["emb"]
    routes = {
        "static": STATIC_DIR,
        "model": export_dir,
        "model_low": low_res_dir,
        "emb.bin": emb.tobytes(),
        "emb16.bin": emb.astype(np.float16).tobytes(),
    }
    with isolated_server(routes) as base, sync_playwright() as pw:
        browser = launch_chromium(pw, TIMEOUT_MS)
        try:
            context = browser.new_context()  # a fresh profile of its own
            pg = context.new_page()
            pg.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.goto(f"{base}/static/decoder-test.html?timeout={TIMEOUT_MS}")
            pg.wait_for_function("window.seganyDecoderLoaded === true", timeout=TIMEOUT_MS)
            assert not errors, errors
            h, w = scene_case["scene"].image.shape[:2]
            ready = pg.evaluate(
                """async ([h, w]) => {
                    const d = window.seganyDecoder;
                    const ready = await d.client.init({manifestUrl: "/model/manifest.json",
                                                       warmup: 3});
                    const emb = await d.client.setEmbedding({url: "/emb.bin", dtype: "float32",
                                                             originalSize: [h, w]});
                    return {ready, emb};
                }""",
                [h, w],
            )
            yield pg, ready
            context.close()
        finally:
            browser.close()


def _decode(pg, prompt: dict) -> dict:
    """Run one decode in the page and return its result with the arrays as numpy."""
    r = pg.evaluate(
        """async (prompt) => {
            const r = await window.seganyDecoder.client.decode(prompt);
            const arr = (a) => (a === null ? null : Array.from(a));
            return {...r, scores: arr(r.scores), lowRes: arr(r.lowRes), masks: arr(r.masks)};
        }""",
        prompt,
    )
    m = len(r["scores"])
    r["scores"] = np.asarray(r["scores"], np.float32)
    r["lowRes"] = np.asarray(r["lowRes"], np.float32).reshape(m, *r["lowResSize"])
    if r["masks"] is not None:
        r["masks"] = np.asarray(r["masks"], np.float32).reshape(m, *r["maskSize"])
    return r


def _assert_masks_match(logits: np.ndarray, ref_logits: np.ndarray) -> None:
    """Thresholded masks equal except on pixels within NEAR of the threshold in either."""
    differ = (logits > 0) != (ref_logits > 0)
    near = (np.abs(logits) < NEAR) | (np.abs(ref_logits) < NEAR)
    assert not (differ & ~near).any(), f"{int((differ & ~near).sum())} pixels differ"


def test_worker_is_isolated_and_threaded(page):
    _, ready = page
    assert ready["ready"]["crossOriginIsolated"] is True
    assert ready["ready"]["backend"] == "wasm"
    assert ready["ready"]["numThreads"] >= 1
    assert ready["ready"]["embeddingShape"] == [1, 256, 32, 32]
    assert ready["emb"]["inputSize"] == [192, 256]  # 240x320 resized to the 256 long side
    # the export's split decoder: the image half ran once, on the embedding
    assert ready["ready"]["split"] is True and ready["emb"]["projectMs"] > 0


def test_split_decoder_agrees_with_the_official_graph(page, scene_case):
    """The default split decoder (decoder_image.onnx once per embedding, decoder_prompt.onnx per
    prompt) and decoder.onnx (``split: false``) in the same browser: the same scores and
    logits, for a click and for a second click with the first one's logits fed back."""
    pg, _ = page
    (x, y), (h, w) = scene_case["point"], scene_case["scene"].image.shape[:2]
    first = {"points": [[x, y]], "labels": [1], "output": "low"}
    second = {
        "points": [[x, y], [min(w - 1.0, x + 40.0), y]],
        "labels": [1, 0],
        "maskInput": {"previous": 0},
        "output": "low",
    }
    got = pg.evaluate(
        """async ([first, second, h, w]) => {
            const D = window.seganyDecoder.DecoderClient;
            const out = {};
            for (const split of [true, false]) {
                const c = new D(new URL("/static/decoder-worker.js", location.href),
                                {timeoutMs: 120000});
                try {
                    const ready = await c.init({manifestUrl: "/model/manifest.json", warmup: 2,
                                                split});
                    await c.setEmbedding({url: "/emb.bin", dtype: "float32", originalSize: [h, w]});
                    const a = await c.decode(first);
                    const b = await c.decode(second);
                    out[split] = {split: ready.split, scores: Array.from(a.scores),
                                  lowRes: Array.from(a.lowRes), scores2: Array.from(b.scores),
                                  lowRes2: Array.from(b.lowRes)};
                } finally { c.terminate(); }
            }
            return out;
        }""",
        [first, second, h, w],
    )
    split, official = got["true"], got["false"]
    assert split["split"] is True and official["split"] is False
    np.testing.assert_allclose(split["scores"], official["scores"], atol=1e-4)
    np.testing.assert_allclose(split["lowRes"], official["lowRes"], atol=1e-3, rtol=1e-4)
    np.testing.assert_allclose(split["scores2"], official["scores2"], atol=1e-4)
    np.testing.assert_allclose(split["lowRes2"], official["lowRes2"], atol=1e-3, rtol=1e-4)


def test_click_matches_onnx_runtime_and_torch(page, export_dir, scene_case):
    pg, _ = page
    scene, gt, (x, y) = scene_case["scene"], scene_case["gt"], scene_case["point"]
    h, w = scene.image.shape[:2]
    r = _decode(pg, {"points": [[x, y]], "labels": [1], "multimask": True, "output": "full"})
    assert r["originalSize"] == [h, w] and r["maskSize"] == [h, w]
    assert r["masks"].shape == (3, h, w) and r["lowRes"].shape == (3, 128, 128)

    ort_pred = OnnxPredictor(export_dir)
    ort_pred.set_embedding(scene_case["emb"], (h, w))
    kw = dict(point_coords=np.array([[x, y]]), point_labels=np.array([1]), return_logits=True)
    ref_masks, ref_scores, ref_low = ort_pred.predict(**kw)
    np.testing.assert_allclose(r["scores"], ref_scores, atol=1e-3, rtol=0)
    np.testing.assert_allclose(r["lowRes"], ref_low, atol=1e-3, rtol=1e-3)
    _assert_masks_match(r["masks"], ref_masks)

    t_masks, t_scores, t_low = scene_case["torch"].predict(**kw)
    np.testing.assert_allclose(r["scores"], t_scores, atol=1e-3, rtol=0)
    _assert_masks_match(r["masks"], t_masks)

    # The best-scored mask covers the object as well in the browser as in PyTorch, and well.
    best = int(r["scores"].argmax())
    assert best == int(np.argmax(t_scores))
    ref_iou = float(mask_iou(t_masks[best] > 0, gt))
    ours_iou = float(mask_iou(r["masks"][best] > 0, gt))
    assert ref_iou > 0.8
    assert abs(ours_iou - ref_iou) < 0.01


def test_a_low_res_only_graph_decodes_low(page, scene_case):
    """A decoder graph without orig_im_size and masks gives the same low-res output; asking it
    for "full" is refused with a message."""
    pg, _ = page
    (x, y), (h, w) = scene_case["point"], scene_case["scene"].image.shape[:2]
    prompt = {"points": [[x, y]], "labels": [1], "output": "low"}
    want = _decode(pg, prompt)
    got = pg.evaluate(
        """async ([prompt, h, w]) => {
            const D = window.seganyDecoder.DecoderClient;
            const c = new D(new URL("/static/decoder-worker.js", location.href),
                            {timeoutMs: 120000});
            try {
                await c.init({manifestUrl: "/model_low/manifest.json", warmup: 2});
                await c.setEmbedding({url: "/emb.bin", dtype: "float32", originalSize: [h, w]});
                const r = await c.decode(prompt);
                let refused = null;
                try { await c.decode({...prompt, output: "full"}); }
                catch (e) { refused = String(e.message || e); }
                return {scores: Array.from(r.scores), lowRes: Array.from(r.lowRes), refused};
            } finally { c.terminate(); }
        }""",
        [prompt, h, w],
    )
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(got["lowRes"]), want["lowRes"].ravel(), atol=1e-4)
    assert 'no "masks" output' in got["refused"]


def test_low_res_output_and_mask_feedback(page, export_dir, scene_case):
    """``output: "low"`` (the split decoder) gives the scores and logits of ``"full"``
    (decoder.onnx) without the full-size masks, and a second click fed the previous low-res
    logits matches ONNX Runtime with that mask input."""
    pg, _ = page
    scene, (x, y) = scene_case["scene"], scene_case["point"]
    h, w = scene.image.shape[:2]
    full = _decode(pg, {"points": [[x, y]], "labels": [1], "output": "full"})
    low = _decode(pg, {"points": [[x, y]], "labels": [1], "output": "low"})
    assert low["masks"] is None
    np.testing.assert_allclose(low["scores"], full["scores"], atol=1e-5)
    np.testing.assert_allclose(low["lowRes"], full["lowRes"], atol=1e-3, rtol=1e-4)
    assert low["lowResValid"] == [96.0, 128.0]  # the 192x256 input frame at 1/2 scale

    # drawMask puts the low-res mask where the full-size mask is (blocky at its edges).
    best = int(low["scores"].argmax())
    alpha = pg.evaluate(
        """async ([prompt, k, h, w]) => {
            const d = window.seganyDecoder;
            const r = await d.client.decode(prompt);
            const canvas = new OffscreenCanvas(w, h);
            d.drawMask(canvas, r, k);
            const px = canvas.getContext("2d").getImageData(0, 0, w, h).data;
            return Array.from({length: w * h}, (_, i) => px[4 * i + 3]);
        }""",
        [{"points": [[x, y]], "labels": [1], "output": "low"}, best, h, w],
    )
    drawn = np.asarray(alpha).reshape(h, w) > 0
    iou = float(mask_iou(drawn, full["masks"][best] > 0))
    assert iou > 0.9, iou

    bg = [min(w - 1.0, x + 40.0), y]
    prompt = {"points": [[x, y], bg], "labels": [1, 0], "maskInput": {"previous": best}}
    second = _decode(pg, {**prompt, "multimask": False, "output": "full"})
    assert second["masks"].shape == (1, h, w)

    ort_pred = OnnxPredictor(export_dir)
    ort_pred.set_embedding(scene_case["emb"], (h, w))
    ref_masks, ref_scores, _ = ort_pred.predict(
        point_coords=np.array([[x, y], bg]),
        point_labels=np.array([1, 0]),
        mask_input=low["lowRes"][best][None],
        multimask_output=False,
        return_logits=True,
    )
    np.testing.assert_allclose(second["scores"], ref_scores, atol=1e-3, rtol=0)
    _assert_masks_match(second["masks"], ref_masks)


def test_box_prompt_matches_onnx_runtime(page, export_dir, scene_case):
    pg, _ = page
    scene, gt = scene_case["scene"], scene_case["gt"]
    h, w = scene.image.shape[:2]
    ys, xs = np.nonzero(gt)
    box = [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]
    r = _decode(pg, {"box": box, "multimask": False, "output": "full"})
    ort_pred = OnnxPredictor(export_dir)
    ort_pred.set_embedding(scene_case["emb"], (h, w))
    ref_masks, ref_scores, _ = ort_pred.predict(
        box=np.array(box), multimask_output=False, return_logits=True
    )
    np.testing.assert_allclose(r["scores"], ref_scores, atol=1e-3, rtol=0)
    _assert_masks_match(r["masks"], ref_masks)


def test_float16_embedding(page, export_dir, scene_case):
    """An fp16 embedding (what a server may send to halve the bytes) decodes as its values
    widened to fp32 do in ONNX Runtime."""
    pg, _ = page
    scene, (x, y) = scene_case["scene"], scene_case["point"]
    h, w = scene.image.shape[:2]
    set_emb = """async ([url, dtype, h, w]) => window.seganyDecoder.client.setEmbedding(
        {url, dtype, originalSize: [h, w]})"""
    pg.evaluate(set_emb, ["/emb16.bin", "float16", h, w])
    try:
        r = _decode(pg, {"points": [[x, y]], "labels": [1], "output": "full"})
    finally:
        pg.evaluate(set_emb, ["/emb.bin", "float32", h, w])
    ort_pred = OnnxPredictor(export_dir)
    ort_pred.set_embedding(scene_case["emb"].astype(np.float16).astype(np.float32), (h, w))
    ref_masks, ref_scores, ref_low = ort_pred.predict(
        point_coords=np.array([[x, y]]), point_labels=np.array([1]), return_logits=True
    )
    np.testing.assert_allclose(r["scores"], ref_scores, atol=1e-3, rtol=0)
    np.testing.assert_allclose(r["lowRes"], ref_low, atol=1e-3, rtol=1e-3)
    _assert_masks_match(r["masks"], ref_masks)


def test_bad_requests_answer_errors(page):
    pg, _ = page
    messages = pg.evaluate(
        """async () => {
            const c = window.seganyDecoder.client;
            const out = [];
            for (const p of [{points: [[1, 2]], labels: []},
                             {points: [[NaN, 2]], labels: [1]},
                             {points: [[1, 2]], labels: [1], maskInput: {previous: 7}}]) {
                try { await c.decode(p); out.push("no error"); }
                catch (e) { out.push(e.message); }
            }
            try { await c.request("nonsense"); out.push("no error"); }
            catch (e) { out.push(e.message); }
            for (const [bytes, dtype] of [[16, "float32"], [16, "int8"]]) {
                try {
                    await c.setEmbedding({buffer: new ArrayBuffer(bytes), dtype,
                                          originalSize: [10, 10]});
                    out.push("no error");
                } catch (e) { out.push(e.message); }
            }
            const d = window.seganyDecoder;
            const slow = new d.DecoderClient(new URL("decoder-worker.js", location.href),
                                             {timeoutMs: 1});
            try { await slow.init({manifestUrl: "/model/manifest.json", warmup: 1000});
                  out.push("no error"); }
            catch (e) { out.push(e.message); }
            slow.terminate();
            return out;
        }"""
    )
    assert "1 points but 0 labels" in messages[0]
    assert "not finite" in messages[1]
    assert "no previous mask 7" in messages[2]
    assert "unknown message type nonsense" in messages[3]
    assert "embedding has 4 values; shape 1,256,32,32 needs 262144" in messages[4]
    assert 'embedding dtype must be "float32" or "float16"; got int8' in messages[5]
    assert messages[6] == "decoder worker gave no answer to init in 1 ms"


def test_server_sends_isolation_headers_and_only_routed_files(tmp_path):
    import urllib.error
    import urllib.request

    (tmp_path / "a.wasm").write_bytes(b"\0asm")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.mjs").write_text("export {};")
    secret = tmp_path.parent / "secret.txt"
    secret.write_text("no")
    with isolated_server({"f": tmp_path, "blob.bin": b"xyz"}) as base:
        assert base.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{base}/f/a.wasm", timeout=10) as r:
            assert r.headers["Content-Type"] == "application/wasm"
            assert r.headers["Cross-Origin-Opener-Policy"] == "same-origin"
            assert r.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
            assert r.read() == b"\0asm"
        with urllib.request.urlopen(f"{base}/f/sub/m.mjs", timeout=10) as r:
            assert r.headers["Content-Type"] == "text/javascript"
        with urllib.request.urlopen(f"{base}/blob.bin", timeout=10) as r:
            assert r.read() == b"xyz"
        for path in ("/f/../secret.txt", "/f/%2e%2e/secret.txt", "/f/", "/other/a.wasm", "/"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(base + path, timeout=10)
            assert e.value.code == 404, path
