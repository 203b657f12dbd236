"""The annotation server's HTTP API (segany.engine.server) with FastAPI's TestClient, on a
project on SQLite and on PostgreSQL: auth, uploads, the server-side decoder (same numbers as
SamPredictor.predict), masks with version checks, stats, the embedding route and cache."""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sqlalchemy")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

import segany  # noqa: E402
from segany.data.sample import sample_image  # noqa: E402
from segany.engine.server import create_app  # noqa: E402
from segany.engine.store import Project  # noqa: E402
from segany.formats import decode_coco_rle, encode_coco_rle  # noqa: E402

TOKEN = "server-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
W, H = 320, 240


@pytest.fixture(scope="module")
def sam():
    return segany.load_model("segany_tiny", precision="fp32", device="cpu")


class CountingPredictor(segany.SamPredictor):
    """A SamPredictor that counts its encoder runs."""

    encodes = 0

    def set_image(self, image, image_format="RGB"):
        type(self).encodes += 1
        super().set_image(image, image_format)


@pytest.fixture
def project(tmp_path, db_url):
    with Project.init(tmp_path / "proj", db_url=db_url) as p:
        yield p


@pytest.fixture
def client(project, sam):
    CountingPredictor.encodes = 0
    app = create_app(
        project, predictor_factory=lambda: CountingPredictor(sam), token=TOKEN,
        max_upload_mb=1, prefetch=False,
    )  # fmt: skip
    with TestClient(app) as c:
        yield c


def _png(seed: int = 0) -> tuple[bytes, np.ndarray, list]:
    image, objects = sample_image(W, H, seed=seed)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue(), image, objects


def _upload(client, data: bytes, name: str = "scene.png", **kw):
    return client.post("/api/images", files={"file": (name, data, "image/png")}, headers=AUTH, **kw)


@pytest.fixture
def scene(client):
    data, image, objects = _png()
    r = _upload(client, data)
    assert r.status_code == 201, r.text
    return r.json(), image, objects


def test_health_needs_no_token(client):
    r = client.get("/api/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


ROUTES = [
    ("get", "/api/images"),
    ("post", "/api/images"),
    ("get", "/api/images/1"),
    ("get", "/api/images/1/file"),
    ("post", "/api/images/1/predict"),
    ("get", "/api/images/1/masks"),
    ("post", "/api/images/1/masks"),
    ("patch", "/api/masks/1"),
    ("delete", "/api/masks/1"),
    ("get", "/api/stats"),
    ("get", "/api/images/1/embedding"),
    ("get", "/api/model"),
    ("get", "/api/model/decoder.onnx"),
    ("get", "/api/openapi.json"),
    ("post", "/api/images/1/lease"),
    ("delete", "/api/images/1/lease"),
    ("post", "/api/images/1/status"),
    ("post", "/api/events"),
    ("get", "/no/such/route"),
    ("get", "/api/me"),
    ("get", "/api/annotators"),
    ("post", "/api/annotators"),
    ("get", "/static/app/index.html"),
    ("get", "/static/vendor/ort.wasm.min.mjs"),
]
#: Pages a browser opens: without a token they answer 401 with an HTML sign-in page.
PAGES = ["/", "/metrics", "/docs"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "x"}])
def test_every_route_needs_the_token(client, scene, headers):
    for method, path in ROUTES:
        r = client.request(method, path, headers=headers)
        assert r.status_code == 401, (method, path, r.text)
        assert "token" in r.json()["detail"]
    for path in PAGES:
        r = client.get(path, headers=headers)
        assert r.status_code == 401 and r.headers["content-type"].startswith("text/html"), path
        assert "token" in r.text and "segany serve" in r.text


def test_pages_and_static_files_are_cross_origin_isolated(client):
    """The tool's pages, its scripts and the API carry COOP/COEP/CORP (WASM threads need them);
    the offline /docs loads Swagger UI from the server, never a CDN."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for path in ["/", "/metrics", "/docs", "/static/decoder-worker.js", "/api/images"]:
        r = client.get(path, headers=auth)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["cross-origin-opener-policy"] == "same-origin", path
        assert r.headers["cross-origin-embedder-policy"] == "require-corp", path
        assert r.headers["cross-origin-resource-policy"] == "same-origin", path
    assert (
        client.get("/static/decoder-worker.js", headers=auth)
        .headers["content-type"]
        .startswith("text/javascript")
    )
    docs = client.get("/docs", headers=auth).text
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    for asset in ["swagger-ui-bundle.js", "swagger-ui.css"]:
        assert client.get(f"/static/vendor/swagger-ui/{asset}", headers=auth).status_code == 200
    assert client.get("/static/../project.json", headers=auth).status_code == 404


def test_annotators_are_added_by_the_owner(client, project):
    owner = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/me", headers=owner).json() == {"annotator": None, "admin": True}
    r = client.post("/api/annotators", json={"name": "bob"}, headers=owner)
    assert r.status_code == 201, r.text
    bob = {"Authorization": f"Bearer {r.json()['token']}"}
    assert r.json()["url"] == f"/?token={r.json()['token']}"
    assert client.get("/api/me", headers=bob).json() == {"annotator": "bob", "admin": False}
    assert [a["name"] for a in client.get("/api/annotators", headers=owner).json()] == ["bob"]
    again = client.post("/api/annotators", json={"name": "bob"}, headers=owner)
    assert again.status_code == 422 and "exists" in again.json()["detail"]
    r = client.post("/api/annotators", json={"name": "eve"}, headers=bob)
    assert r.status_code == 403 and "server's token" in r.json()["detail"]
    assert client.post("/api/annotators", json={}, headers=owner).status_code == 422
    assert [a.name for a in project.list_annotators()] == ["bob"]


def test_cookie_from_the_url_and_annotator_tokens(client, project, scene):
    assert client.get("/?token=wrong", follow_redirects=False).status_code == 401
    r = client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303
    assert client.get("/api/images").status_code == 200  # the cookie
    client.cookies.clear()
    assert client.get("/api/images").status_code == 401
    _, alice = project.add_annotator("alice")
    record, _image, objects = scene
    rle = encode_coco_rle(np.ones((H, W), bool))
    r = client.post(
        f"/api/images/{record['id']}/masks",
        json={"segmentation": rle}, headers={"Authorization": f"Bearer {alice}"},
    )  # fmt: skip
    assert r.status_code == 201 and r.json()["annotator"] == "alice"


def test_upload_list_get_file(client, scene):
    record, image, _ = scene
    assert (record["width"], record["height"], record["status"]) == (W, H, "new")
    assert record["file_name"] == "scene.png" and record["num_masks"] == 0
    listed = client.get("/api/images", headers=AUTH).json()
    assert [i["id"] for i in listed] == [record["id"]]
    assert client.get(f"/api/images/{record['id']}", headers=AUTH).json() == record
    r = client.get(f"/api/images/{record['id']}/file", headers=AUTH)
    assert r.status_code == 200
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")), image)
    again = _upload(client, _png()[0], "other.png")
    assert again.status_code == 200 and again.json()["id"] == record["id"]
    assert client.get("/api/images/999", headers=AUTH).status_code == 404


def test_bad_uploads(client, project):
    r = _upload(client, b"this is text, not a PNG\n", "fake.png")
    assert r.status_code == 415 and "not an image" in r.json()["detail"]
    big = b"\0" * (1024 * 1024 + 10)
    r = _upload(client, big, "big.png")
    assert r.status_code == 413 and "MiB" in r.json()["detail"]
    assert client.post("/api/images", headers=AUTH, data={"x": "1"}).status_code == 422
    jpeg = io.BytesIO()
    Image.fromarray(sample_image(W, H)[0]).save(jpeg, format="JPEG")
    r = _upload(client, jpeg.getvalue()[: len(jpeg.getvalue()) // 2], "cut.jpg")
    assert r.status_code == 415 and "truncated" in r.json()["detail"]
    bomb = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(bomb, format="PNG")
    r = _upload(client, bomb.getvalue(), "bomb.png")
    assert r.status_code == 415 and "bomb" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is checked while the body is read
        yield (
            b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n"
        )
        for _ in range(20):
            yield b"\0" * 100_000

    r = client.post(
        "/api/images", content=chunks(),
        headers={**AUTH, "Content-Type": "multipart/form-data; boundary=xyz"},
    )  # fmt: skip
    assert r.status_code == 413
    assert project.list_images() == []
    assert not any(project.images_dir.rglob("*.*"))
    r = _upload(client, _png(1)[0], "../../etc/evil.png")
    assert r.status_code == 201 and r.json()["file_name"] == "evil.png"


def test_predict_matches_the_predictor(client, scene, sam):
    record, image, objects = scene
    x, y = objects[0].point
    r = client.post(
        f"/api/images/{record['id']}/predict",
        json={"points": [[x, y]], "labels": [1], "box": None, "mask_input": None,
              "multimask": True},
        headers=AUTH,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    out = r.json()
    ref = segany.SamPredictor(sam)
    ref.set_image(image)
    masks, scores, low = ref.predict(np.array([[x, y]]), np.array([1]), multimask_output=True)
    got = decode_coco_rle([m["segmentation"] for m in out["masks"]]).astype(bool)
    assert np.array_equal(got, masks)
    np.testing.assert_allclose([m["predicted_iou"] for m in out["masks"]], scores, rtol=1e-6)
    # the mask_input token feeds the best mask's low-res logits back
    best = int(np.argmax(scores))
    r = client.post(
        f"/api/images/{record['id']}/predict",
        json={"points": [[x, y]], "labels": [1], "mask_input": out["mask_input"],
              "multimask": False},
        headers=AUTH,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    masks2, scores2, _ = ref.predict(
        np.array([[x, y]]), np.array([1]), mask_input=low[best][None], multimask_output=False
    )
    got2 = decode_coco_rle([m["segmentation"] for m in r.json()["masks"]]).astype(bool)
    assert np.array_equal(got2, masks2)
    np.testing.assert_allclose(r.json()["masks"][0]["predicted_iou"], scores2, rtol=1e-6)
    bad = client.post(
        f"/api/images/{record['id']}/predict",
        json={"points": [[x, y]], "labels": [1], "mask_input": "nope"}, headers=AUTH,
    )  # fmt: skip
    assert bad.status_code == 422 and "mask_input" in bad.json()["detail"]


def _predictor_message(sam, image, **prompt) -> str:
    ref = segany.SamPredictor(sam)
    ref.set_image(image)
    with pytest.raises(ValueError) as e:
        ref.predict(**prompt)
    return str(e.value)


def test_bad_prompts_give_the_predictors_message(client, scene, sam):
    record, image, _ = scene
    url = f"/api/images/{record['id']}/predict"
    cases = [
        ({"points": [[W + 50, 10]], "labels": [1]}, {"point_coords": [[W + 50, 10]],
                                                     "point_labels": [1]}),
        ({"points": [[10, 10], [20, 20]], "labels": [1]}, {"point_coords": [[10, 10], [20, 20]],
                                                           "point_labels": [1]}),
        ({"points": [[10, 10]], "labels": [7]}, {"point_coords": [[10, 10]],
                                                 "point_labels": [7]}),
    ]  # fmt: skip
    for body, prompt in cases:
        r = client.post(url, json=body, headers=AUTH)
        assert r.status_code == 422, (body, r.text)
        prompt = {k: np.asarray(v, np.float64) for k, v in prompt.items()}
        prompt["point_labels"] = prompt["point_labels"].astype(np.int64)
        assert r.json()["detail"] == _predictor_message(sam, image, **prompt)
    r = client.post(
        url, content='{"points": [[NaN, 3]], "labels": [1]}',
        headers={**AUTH, "Content-Type": "application/json"},
    )  # fmt: skip
    assert r.status_code == 422
    nan = _predictor_message(
        sam, image, point_coords=np.array([[np.nan, 3.0]]), point_labels=np.array([1])
    )
    assert r.json()["detail"] == nan
    r = client.post(url, content="{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]
    r = client.post(url, json={"points": [[1, 1]], "labels": [1], "clicks": 3}, headers=AUTH)
    assert r.status_code == 422 and "allowed" in r.json()["detail"]


def test_masks_versions_delete_stats(client, scene):
    record, _, _ = scene
    mask = np.zeros((H, W), bool)
    mask[20:60, 30:90] = True
    r = client.post(
        f"/api/images/{record['id']}/masks",
        json={"segmentation": encode_coco_rle(mask), "predicted_iou": 0.9,
              "point_coords": [[40, 30]], "source": "manual", "label": "a'; DROP TABLE masks;--",
              "elapsed_ms": 5000},
        headers=AUTH,
    )  # fmt: skip
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["version"] == 1 and m["area"] == mask.sum() and m["label"].startswith("a';")
    listed = client.get(f"/api/images/{record['id']}/masks", headers=AUTH).json()
    assert [x["id"] for x in listed] == [m["id"]]
    mask[60:70, 30:90] = True
    r = client.patch(
        f"/api/masks/{m['id']}", json={"version": 1, "segmentation": encode_coco_rle(mask)},
        headers=AUTH,
    )  # fmt: skip
    assert r.status_code == 200 and r.json()["version"] == 2 and r.json()["area"] == mask.sum()
    stale = client.patch(f"/api/masks/{m['id']}", json={"version": 1, "label": "x"}, headers=AUTH)
    assert stale.status_code == 409 and "version 2" in stale.json()["detail"]
    assert (
        client.patch(f"/api/masks/{m['id']}", json={"label": "x"}, headers=AUTH).status_code == 422
    )
    bad = client.post(
        f"/api/images/{record['id']}/masks", json={"segmentation": {"size": [1, 1], "counts": "x"}},
        headers=AUTH,
    )  # fmt: skip
    assert bad.status_code == 422
    stats = client.get("/api/stats", headers=AUTH)
    assert stats.status_code == 200
    assert json.dumps(stats.json())  # JSON all the way
    assert client.delete(f"/api/masks/{m['id']}?version=1", headers=AUTH).status_code == 409
    assert client.delete(f"/api/masks/{m['id']}", headers=AUTH).status_code == 204
    assert client.delete(f"/api/masks/{m['id']}", headers=AUTH).status_code == 404
    assert client.get(f"/api/images/{record['id']}/masks", headers=AUTH).json() == []


def test_leases_status_events(client, project, scene):
    record, _, _ = scene
    url = f"/api/images/{record['id']}"
    _, alice = project.add_annotator("alice")
    _, bob = project.add_annotator("bob")
    a = {"Authorization": f"Bearer {alice}"}
    b = {"Authorization": f"Bearer {bob}"}
    assert client.post(url + "/lease", headers=AUTH).status_code == 422  # not an annotator
    r = client.post(url + "/lease", json={"ttl_s": 60}, headers=a)
    assert r.status_code == 200 and r.json()["lease_holder"] == "alice"
    assert r.json()["status"] == "in_progress"
    taken = client.post(url + "/lease", headers=b)
    assert taken.status_code == 409 and "alice" in taken.json()["detail"]
    rle = encode_coco_rle(np.ones((H, W), bool))
    assert client.post(url + "/masks", json={"segmentation": rle}, headers=b).status_code == 409
    assert client.post(url + "/masks", json={"segmentation": rle}, headers=a).status_code == 201
    assert client.delete(url + "/lease", headers=a).status_code == 204
    assert client.post(url + "/lease", headers=b).json()["lease_holder"] == "bob"
    r = client.post(url + "/status", json={"status": "done"}, headers=b)
    assert r.status_code == 200 and r.json()["status"] == "done"
    bad = client.post(url + "/status", json={"status": "finished"}, headers=b)
    assert bad.status_code == 422
    r = client.post("/api/events", json={"kind": "undo", "image_id": record["id"]}, headers=b)
    assert r.status_code == 201 and r.json()["kind"] == "undo"
    assert client.post("/api/events", json={"kind": "dance"}, headers=b).status_code == 422
    assert [e.annotator for e in project.list_events(kind="undo")] == ["bob"]


def test_embedding_route_and_cache(client, project, scene, sam):
    record, image, objects = scene
    url = f"/api/images/{record['id']}"
    x, y = objects[0].point
    body = {"points": [[x, y]], "labels": [1]}
    assert client.post(url + "/predict", json=body, headers=AUTH).status_code == 200
    assert CountingPredictor.encodes == 1
    fingerprint = segany.io.embedding.model_fingerprint(sam)
    cached = project.embeddings_dir / f"{record['sha256']}_{fingerprint}.safetensors"
    assert cached.is_file()
    for dtype, size in (("float32", 4), ("float16", 2)):
        r = client.get(url + f"/embedding?dtype={dtype}", headers=AUTH)
        assert r.status_code == 200
        shape = tuple(int(n) for n in r.headers["x-embedding-shape"].split(","))
        assert r.headers["x-embedding-dtype"] == dtype
        assert r.headers["x-original-size"] == f"{H},{W}"
        assert len(r.content) == int(np.prod(shape)) * size
    ref = segany.SamPredictor(sam)
    ref.set_image(image)
    got = np.frombuffer(client.get(url + "/embedding", headers=AUTH).content, "<f4")
    np.testing.assert_array_equal(got, ref.get_image_embedding().numpy().ravel())
    assert client.get(url + "/embedding?dtype=int8", headers=AUTH).status_code == 422
    # another image in between, then back: loaded from the cache, not re-encoded
    other = _upload(client, _png(3)[0], "b.png").json()
    assert client.post(f"/api/images/{other['id']}/predict", json=body, headers=AUTH).is_success
    assert CountingPredictor.encodes == 2
    r = client.post(url + "/predict", json=body, headers=AUTH)
    assert r.status_code == 200 and CountingPredictor.encodes == 2
    # a damaged cache file is encoded again, with the same answer
    first = r.json()
    cached.write_bytes(b"garbage")
    assert client.post(f"/api/images/{other['id']}/predict", json=body, headers=AUTH).is_success
    r = client.post(url + "/predict", json=body, headers=AUTH)
    assert (
        r.status_code == 200
        and r.json()["masks"][0]["segmentation"] == (first["masks"][0]["segmentation"])
    )
    assert CountingPredictor.encodes == 3 and cached.stat().st_size > 1000
    model = client.get("/api/model", headers=AUTH).json()
    assert model["embedding_fingerprint"] == fingerprint
    assert model["version"]["name"] == "segany_tiny"


def test_onnx_decoder_route(client, project, sam):
    pytest.importorskip("onnx")
    model = client.get("/api/model", headers=AUTH).json()
    r = client.get(model["manifest_url"], headers=AUTH)
    assert r.status_code == 200
    manifest = r.json()
    r = client.get(model["decoder_url"], headers=AUTH)
    assert r.status_code == 200 and len(r.content) > 1000
    [folder] = project.embeddings_dir.glob(f"onnx_{model['embedding_fingerprint']}_*")
    assert (folder / "decoder.onnx").read_bytes() == r.content
    assert json.dumps(manifest)
    # the split decoder the browser tool runs, every file the manifest lists served beside it
    for key in ("decoder_image", "decoder_prompt"):
        name = manifest["files"][key]["file"]
        r = client.get(f"/api/model/{name}", headers=AUTH)
        assert r.status_code == 200 and r.content == (folder / name).read_bytes()
    r = client.get("/api/model/other.bin", headers=AUTH)
    assert r.status_code == 404 and "decoder_prompt.onnx" in r.json()["detail"]
    # an export made before the split decoder existed: its files are missing, a clear 404
    (folder / "decoder_image.onnx").unlink()
    r = client.get("/api/model/decoder_image.onnx", headers=AUTH)
    assert r.status_code == 404 and "has no decoder_image.onnx" in r.json()["detail"]


def test_background_worker_encodes_added_images(tmp_path, sam):
    import time

    with Project.init(tmp_path / "p") as project:
        CountingPredictor.encodes = 0
        app = create_app(project, predictor_factory=lambda: CountingPredictor(sam), token=TOKEN)
        with TestClient(app) as c:
            record = _upload(c, _png()[0]).json()
            service = app.state.embeddings
            for _ in range(600):  # bounded wait for the worker
                if service.is_cached(record["id"]):
                    break
                time.sleep(0.05)
            assert service.is_cached(record["id"])
            assert CountingPredictor.encodes == 1
            # opening an image queues the next ones
            more = [_upload(c, _png(s)[0], f"{s}.png").json()["id"] for s in (5, 6)]
            assert c.get(f"/api/images/{record['id']}", headers=AUTH).status_code == 200
            for _ in range(600):
                if all(service.is_cached(i) for i in more):
                    break
                time.sleep(0.05)
            assert all(service.is_cached(i) for i in more)
            assert CountingPredictor.encodes == 3
            body = {"points": [[5, 5]], "labels": [1]}
            assert c.post(f"/api/images/{record['id']}/predict", json=body, headers=AUTH).is_success
            assert CountingPredictor.encodes == 3


def test_segany_serve_subprocess(tmp_path):
    """``segany serve`` on 127.0.0.1 with a free port: prints the URL with the token, answers
    /api/health and the API with the token, and stops on SIGTERM."""
    import os
    import selectors
    import subprocess
    import sys
    import time

    import httpx

    Project.init(tmp_path / "p").close()
    env = {**os.environ, "SEGANY_TOKEN": ""}
    for headless in ("DISPLAY", "WAYLAND_DISPLAY"):  # --open finds no graphical browser
        env.pop(headless, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "segany", "serve", str(tmp_path / "p"), "--port", "0", "--open"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout=120), "segany serve printed no URL"
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and "/?token=" in url
        base, token = url.split("/?token=")
        assert token == (tmp_path / "p" / "server_token").read_text().strip()
        for _ in range(200):
            try:
                r = httpx.get(base + "/api/health", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert r.json() == {"status": "ok"}
        assert httpx.get(base + "/api/images", timeout=5).status_code == 401
        r = httpx.get(base + "/api/images", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json() == []
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    # uvicorn shuts down cleanly on SIGTERM, then re-raises the signal
    err = proc.stderr.read()
    assert proc.returncode in (0, -15), err
    assert "Traceback" not in err, err
    assert "no web browser to open here" in err


def test_app_server_runs_the_app_in_a_thread(project, sam):
    """segany.engine.web.app_server (the browser tests' and benchmarks' server): uvicorn on
    127.0.0.1 at a free port with the lifespan, stopped when the block exits."""
    import httpx

    from segany.engine.web import app_server

    app = create_app(
        project, predictor_factory=lambda: segany.SamPredictor(sam), token=TOKEN, prefetch=False
    )
    with app_server(app) as base:
        assert base.startswith("http://127.0.0.1:")
        assert httpx.get(base + "/api/health", timeout=10).json() == {"status": "ok"}
        assert httpx.get(base + "/api/images", headers=AUTH, timeout=10).json() == []
        assert httpx.get(base + "/api/images", timeout=10).status_code == 401
    with pytest.raises(httpx.TransportError):
        httpx.get(base + "/api/health", timeout=2)


class ThreadRecordingPredictor(segany.SamPredictor):
    """A SamPredictor that records the threads its torch work runs on."""

    threads: set = set()

    def __init__(self, model):
        type(self).threads.add(threading.get_ident())
        super().__init__(model)

    def set_image(self, image, image_format="RGB"):
        type(self).threads.add(threading.get_ident())
        super().set_image(image, image_format)

    def load_embedding(self, path):
        type(self).threads.add(threading.get_ident())
        return super().load_embedding(path)

    def predict(self, *args, **kwargs):
        type(self).threads.add(threading.get_ident())
        return super().predict(*args, **kwargs)


def test_all_model_work_runs_on_one_model_thread(project, sam):
    """Loading, background encoding, decoding and the embedding route all run on the service's
    one model thread, never on a request thread or the event loop (two threads with OpenMP
    teams make every torch operation about twice as slow); it ends with the app."""
    ThreadRecordingPredictor.threads = set()
    app = create_app(
        project, predictor_factory=lambda: ThreadRecordingPredictor(sam), token=TOKEN
    )  # prefetch on: the background encoder hands its work to the model thread
    with TestClient(app) as c:
        ids = [_upload(c, _png(seed)[0], f"s{seed}.png").json()["id"] for seed in range(2)]
        for image_id in ids + ids:
            r = c.post(f"/api/images/{image_id}/predict", json={"points": [[50, 60]], "labels": [1]},
                       headers=AUTH)  # fmt: skip
            assert r.status_code == 200, r.text
        assert c.get(f"/api/images/{ids[0]}/embedding", headers=AUTH).status_code == 200
        service = app.state.embeddings
        assert service.call(threading.get_ident) in ThreadRecordingPredictor.threads
    (model_thread,) = ThreadRecordingPredictor.threads
    assert model_thread != threading.get_ident()
    assert model_thread not in {t.ident for t in threading.enumerate()}  # ended with the app
