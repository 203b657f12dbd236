"""Data-engine stage 2 (segany.engine.prefill): prefilled proposals stored by the automatic
generator and by the box detector, their review through the store and the server API
(accept / edit / reject with versions), the stage-2 statistics, and the CLI actions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sqlalchemy")

import segany  # noqa: E402
from segany.data.scenes import ProceduralScenes  # noqa: E402
from segany.engine.prefill import prefill_project  # noqa: E402
from segany.engine.store import InvalidInput, NotFound, Project, VersionConflict  # noqa: E402
from segany.formats import decode_coco_rle, encode_coco_rle  # noqa: E402

TOKEN = "prefill-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SIZE = 128


@pytest.fixture(scope="module")
def scenes():
    from segany.data.scenes import SceneConfig

    return ProceduralScenes(4, seed=3, config=SceneConfig(height=SIZE, width=SIZE))


@pytest.fixture(scope="module")
def predictor():
    return segany.SamPredictor(segany.load_model("segany_tiny", precision="fp32", device="cpu"))


def _make_project(root, scenes, db_url=None, n=None):
    project = Project.init(root, db_url=db_url)
    folder = root.parent / f"{root.name}_images"
    folder.mkdir()
    for i in range(len(scenes) if n is None else n):
        Image.fromarray(scenes[i].image).save(folder / f"scene_{i}.png")
    project.add_paths([folder])
    return project


def _gt_proposals(scene, k=3):
    rles = encode_coco_rle(scene.masks[:k])
    return [
        {"segmentation": r, "predicted_iou": 0.97, "stability_score": 0.98,
         "prompts": {"box": [0, 0, 10, 10]}}
        for r in rles
    ]  # fmt: skip


# ---------------------------------------------------------------------- store


def test_add_prefill_once_per_image_and_bad_masks_store_nothing(tmp_path, scenes):
    with _make_project(tmp_path / "p", scenes, n=2) as project:
        image = project.list_images()[0]
        stored = project.add_prefill(image.id, _gt_proposals(scenes[0]), method="test")
        assert stored and all(m.source == "prefill" and m.stage == 2 for m in stored)
        assert all(m.annotator is None and m.predicted_iou == 0.97 for m in stored)
        assert project.add_prefill(image.id, _gt_proposals(scenes[0]), method="test") is None
        assert len(project.list_masks(image.id)) == len(stored)
        other = project.list_images()[1]
        bad = [*_gt_proposals(scenes[1]), {"segmentation": np.zeros((SIZE, SIZE), bool)}]
        with pytest.raises(InvalidInput):
            project.add_prefill(other.id, bad, method="test")
        assert project.list_masks(other.id) == [] and project.prefilled_image_ids() == {image.id}
        assert set(project.proposal_states(image.id).values()) == {"proposal"}


def test_review_versions_and_stats(tmp_path, scenes, db_url):
    with _make_project(tmp_path / "p", scenes, db_url=db_url, n=2) as project:
        project.add_annotator("alice")
        a, b = (im.id for im in project.list_images())
        m1, m2, m3 = project.add_prefill(a, _gt_proposals(scenes[0]), method="test")
        assert project.pending_proposals() == {a: 3}
        manual = project.add_mask(b, segmentation=scenes[1].masks[0], annotator="alice")
        with pytest.raises(VersionConflict):
            project.accept_proposal(m1.id, version=2, annotator="alice")
        accepted = project.accept_proposal(m1.id, version=1, annotator="alice", elapsed_ms=900)
        assert (accepted.source, accepted.annotator, accepted.version) == ("prefill", "alice", 2)
        with pytest.raises(InvalidInput, match="accepted already"):
            project.accept_proposal(m1.id, version=2, annotator="alice")
        with pytest.raises(InvalidInput, match="not a prefilled proposal"):
            project.accept_proposal(manual.id, version=1)
        with pytest.raises(NotFound):
            project.reject_proposal(10_000, version=1)
        project.update_mask(m2.id, version=1, label="cup", annotator="alice")
        with pytest.raises(InvalidInput, match="edited already"):
            project.reject_proposal(m2.id, version=2)
        project.reject_proposal(m3.id, version=1, annotator="alice")
        assert project.proposal_states(a) == {m1.id: "accepted", m2.id: "edited"}
        assert project.pending_proposals() == {}
        assert [e.payload["mask"]["id"] for e in project.list_events(kind="reject_prefill")] == [
            m3.id
        ]
        for image in (a, b):
            project.record_event("open", image_id=image, annotator="alice")
            project.set_status(image, "done", annotator="alice")
        stats = project.stats()
        pre = stats["prefill"]
        assert (pre["proposals"], pre["accepted"], pre["edited"], pre["rejected"]) == (3, 1, 1, 1)
        assert pre["pending"] == 0 and pre["images_prefilled"] == 1
        assert pre["with_prefill"]["images"] == 1 and pre["with_prefill"]["masks"] == 2
        assert pre["with_prefill"]["prefill_masks"] == 2
        assert pre["without_prefill"]["masks"] == 1 and pre["without_prefill"]["prefill_masks"] == 0
        assert pre["with_prefill"]["seconds_per_image"] is not None
        assert {"images", "masks", "groups"} <= set(stats)  # existing keys kept
        assert pre["reviewed"] == 3 and pre["accept_rate"] == pre["reject_rate"] == 1 / 3
        assert pre["seconds_per_review"] == 0.9  # only the accept carried a time
        (mine,) = pre["by_annotator"]  # alice decided every review and marked both done
        assert mine["annotator"] == "alice"
        assert (mine["accepted"], mine["edited"], mine["rejected"]) == (1, 1, 1)
        assert mine["with_prefill"] == pre["with_prefill"]
        assert mine["without_prefill"] == pre["without_prefill"]


def test_prefill_stats_per_annotator_before_and_after_review(tmp_path, scenes):
    with _make_project(tmp_path / "p", scenes, n=1) as project:
        for name in ("alice", "bob"):
            project.add_annotator(name)
        (a,) = (im.id for im in project.list_images())
        m1, m2, m3 = project.add_prefill(a, _gt_proposals(scenes[0]), method="test")
        pre = project.stats()["prefill"]
        assert pre["reviewed"] == 0 and pre["by_annotator"] == []
        assert pre["accept_rate"] is None and pre["seconds_per_review"] is None
        project.accept_proposal(m1.id, version=1, annotator="alice", elapsed_ms=1000)
        project.reject_proposal(m2.id, version=1, annotator="bob", elapsed_ms=3000)
        project.reject_proposal(m3.id, version=1)  # no annotator
        project.set_status(a, "done", annotator="bob")
        pre = project.stats()["prefill"]
        rows = {r["annotator"]: r for r in pre["by_annotator"]}
        assert [r["annotator"] for r in pre["by_annotator"]] == [None, "alice", "bob"]
        assert (rows[None]["rejected"], rows[None]["seconds_per_review"]) == (1, None)
        assert (rows["alice"]["accepted"], rows["alice"]["accept_rate"]) == (1, 1.0)
        assert rows["alice"]["with_prefill"]["images"] == 0  # bob marked the image done
        assert (rows["bob"]["rejected"], rows["bob"]["seconds_per_review"]) == (1, 3.0)
        assert rows["bob"]["with_prefill"]["images"] == 1
        assert rows["bob"]["with_prefill"]["masks"] == 1  # the accepted proposal
        assert (pre["reviewed"], pre["seconds_per_review"]) == (3, 2.0)


# ---------------------------------------------------------------------- prefill auto


def test_prefill_auto_stores_proposals_idempotent_thresholds(tmp_path, scenes, predictor):
    knobs = {"points_per_side": 8, "stability_score_thresh": 0.6}
    lines = []
    with _make_project(tmp_path / "p", scenes, n=2) as project:
        first = project.list_images()[0]
        project.set_status(first.id, "done")  # not new: left alone by --images new
        report = prefill_project(
            project, method="auto", min_score=0.4, predictor=predictor, auto_knobs=knobs,
            progress=lambda i, n, im, k, s: lines.append((i, n, im.id, k)),
        )  # fmt: skip
        second = project.list_images()[1]
        assert report.prefilled == [second.id] and len(lines) == 1
        masks = project.list_masks(second.id)
        assert masks and report.masks == len(masks) and project.list_masks(first.id) == []
        for m in masks:
            assert (m.source, m.stage) == ("prefill", 2)
            assert m.predicted_iou >= 0.4 and m.stability_score >= 0.6
            assert m.prompts["labels"] == [1] and len(m.prompts["points"]) == 1
            assert m.model_version_id == project.current_model().id
        again = prefill_project(
            project, method="auto", min_score=0.4, predictor=predictor, auto_knobs=knobs
        )
        assert again.prefilled == [] and again.skipped == 1
        assert len(project.list_masks(second.id)) == len(masks)
        event = project.list_events(kind="prefill")[0]
        assert (
            event.payload["method"] == "auto" and event.payload["params"]["pred_iou_thresh"] == 0.4
        )


def test_prefill_resumes_after_a_kill(tmp_path, scenes, predictor):
    knobs = {"points_per_side": 4, "stability_score_thresh": 0.0}

    def killed(i, n, image, stored, seconds):
        raise KeyboardInterrupt  # killed after the first image was stored

    with _make_project(tmp_path / "p", scenes, n=3) as project:
        kw = {"method": "auto", "min_score": 0.0, "predictor": predictor, "auto_knobs": knobs}
        with pytest.raises(KeyboardInterrupt):
            prefill_project(project, progress=killed, **kw)
        first = project.prefilled_image_ids()
        assert len(first) == 1
        report = prefill_project(project, **kw)
        assert report.skipped == 1 and set(report.prefilled) | first == {
            im.id for im in project.list_images()
        }
        events = project.list_events(kind="prefill")
        assert sorted(e.image_id for e in events) == sorted(first | set(report.prefilled))
        ids = [m for e in events for m in e.payload["mask_ids"]]
        stored = [m.id for im in project.list_images() for m in project.list_masks(im.id)]
        assert sorted(ids) == sorted(stored)  # nothing duplicated, nothing half-written


# ---------------------------------------------------------------------- API


@pytest.fixture
def api(tmp_path, scenes):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from segany.engine.server import create_app

    with _make_project(tmp_path / "p", scenes, n=1) as project:
        image = project.list_images()[0]
        project.add_prefill(image.id, _gt_proposals(scenes[0]), method="test")
        app = create_app(project, predictor_factory=None, token=TOKEN, prefetch=False)
        with TestClient(app) as client:
            yield client, project, image.id


def test_api_accept_reject_edit(api):
    client, project, image_id = api
    masks = client.get(f"/api/images/{image_id}/masks", headers=AUTH).json()
    assert [(m["source"], m["review"]) for m in masks] == [("prefill", "proposal")] * 3
    listed = client.get("/api/images", headers=AUTH).json()
    assert [(i["id"], i["proposals"]) for i in listed] == [(image_id, 3)]
    m1, m2, m3 = (m["id"] for m in masks)
    r = client.post(f"/api/masks/{m1}/accept", json={"version": 2}, headers=AUTH)
    assert r.status_code == 409, r.text
    r = client.post(f"/api/masks/{m1}/accept", json={"version": 1, "elapsed_ms": 500}, headers=AUTH)
    assert r.status_code == 200 and r.json()["version"] == 2 and r.json()["review"] == "accepted"
    assert (
        client.post(f"/api/masks/{m1}/accept", json={"version": 2}, headers=AUTH).status_code == 422
    )
    assert (
        client.post("/api/masks/999/reject", json={"version": 1}, headers=AUTH).status_code == 404
    )
    assert client.post(f"/api/masks/{m2}/reject", json={}, headers=AUTH).status_code == 422
    new = decode_coco_rle(masks[1]["segmentation"]).copy()
    new[:4, :4] = True
    r = client.patch(
        f"/api/masks/{m2}", json={"version": 1, "segmentation": encode_coco_rle(new)}, headers=AUTH
    )
    assert r.status_code == 200, r.text
    r = client.post(f"/api/masks/{m3}/reject", json={"version": 1}, headers=AUTH)
    assert r.status_code == 204, r.text
    listed = client.get(f"/api/images/{image_id}/masks", headers=AUTH).json()
    assert [(m["id"], m["review"]) for m in listed] == [(m1, "accepted"), (m2, "edited")]
    assert client.get("/api/images", headers=AUTH).json()[0]["proposals"] == 0
    seg = {"size": [SIZE, SIZE], "counts": encode_coco_rle(new)["counts"]}
    manual = client.post(f"/api/images/{image_id}/masks", json={"segmentation": seg}, headers=AUTH)
    manual_id = manual.json()["id"]  # SQLite may give it the rejected proposal's id again
    r = client.post(f"/api/masks/{manual_id}/reject", json={"version": 1}, headers=AUTH)
    assert r.status_code == 422
    listed = client.get(f"/api/images/{image_id}/masks", headers=AUTH).json()
    assert [m["review"] for m in listed if m["id"] == manual_id] == [None]
    pre = client.get("/api/stats", headers=AUTH).json()["prefill"]
    assert (pre["proposals"], pre["accepted"], pre["edited"], pre["rejected"]) == (3, 1, 1, 1)


# ---------------------------------------------------------------------- detector


@pytest.fixture(scope="module")
def trained(tmp_path_factory, scenes):
    """A project whose first 3 images have manual masks (the objects), and a tiny detector
    trained on them for a few steps."""
    pytest.importorskip("torchvision")
    from segany.engine.prefill.detector import train_project_detector

    root = tmp_path_factory.mktemp("det") / "p"
    project = _make_project(root, scenes)
    for image, i in zip(project.list_images()[:3], range(3), strict=True):
        for mask in scenes[i].masks[scenes[i].levels == 0]:
            project.add_mask(image.id, segmentation=mask)
        project.set_status(image.id, "done")
    path, info = train_project_detector(project, steps=30, arch="tiny", lr=0.01)
    yield project, path, info
    project.close()


def test_detector_trains_records_and_detects(trained, scenes):
    from segany.engine.prefill.detector import detect_boxes, load_detector, newest_detector

    project, path, info = trained
    losses = info["losses"]
    assert len(losses) == info["steps"] == 30 and info["images"] == 3 and info["boxes"] > 3
    assert np.mean(losses[-5:]) < np.mean(losses[:5])  # it learns
    assert path.parent == project.root / "detectors" and newest_detector(project.root) == path
    recorded = json.loads(path.with_suffix(".json").read_text())
    assert recorded["arch"] == "tiny" and recorded["file"] == path.name
    boxes, scores = detect_boxes(load_detector(path), scenes[3].image, min_score=0.0)
    assert boxes.shape[1:] == (4,) and len(boxes) == len(scores) > 0
    assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1])
    assert np.all(np.diff(scores) <= 0) and np.all(boxes <= SIZE)


def test_prefill_detector_stores_box_prompted_masks(trained, predictor):
    project, path, _ = trained
    new = [im.id for im in project.list_images(status="new")]
    report = prefill_project(
        project, method="detector", min_score=0.0, min_iou=0.2, predictor=predictor
    )
    assert report.prefilled == new and report.masks > 0
    masks = project.list_masks(new[0])
    assert masks and all((m.source, m.stage) == ("prefill", 2) for m in masks)
    for m in masks:
        x0, y0, x1, y1 = m.prompts["box"]
        assert 0 <= x0 <= x1 <= SIZE and 0 <= y0 <= y1 <= SIZE
        assert 0.0 <= m.prompts["detector_score"] <= 1.0 and m.predicted_iou >= 0.2
    assert project.list_events(kind="prefill")[-1].payload["params"]["detector"] == path.name
    assert prefill_project(project, method="detector", predictor=predictor).prefilled == []


def test_no_detector_is_a_clear_error(tmp_path, scenes, predictor):
    from segany.engine.prefill.detector import NoDetectorError

    with _make_project(tmp_path / "p", scenes, n=1) as project:
        with pytest.raises(NoDetectorError, match="train-detector"):
            prefill_project(project, method="detector", predictor=predictor)
        with pytest.raises(ValueError, match="min_score"):
            prefill_project(project, method="auto", min_score=1.5, predictor=predictor)
        assert project.prefilled_image_ids() == set()


# ---------------------------------------------------------------------- CLI


def _cli(argv):
    """Exit code of the ``engine_prefill`` actions as ``segany`` maps it (argparse errors 2,
    CliError its code)."""
    import argparse

    from segany.cli import engine_prefill
    from segany.cli.common import CliError

    parser = argparse.ArgumentParser(prog="segany engine")
    engine_prefill.register(parser.add_subparsers(dest="action"))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code
    try:
        return args.func(args)
    except CliError as e:
        return e.exit_code


@pytest.mark.parametrize(
    "argv",
    [
        ["prefill", "{dir}", "--method", "magic"],
        ["prefill", "{dir}", "--min-score", "1.5"],
        ["prefill", "{dir}", "--min-score", "-0.1"],
        ["prefill", "{dir}", "--min-score", "high"],
        ["prefill", "{dir}", "--images", "some"],
        ["train-detector", "{dir}", "--steps", "0"],
        ["train-detector", "{dir}", "--arch", "resnet"],
    ],
)
def test_cli_bad_arguments_exit_2(tmp_path, argv, capsys):
    assert _cli([a.format(dir=tmp_path) for a in argv]) == 2


def test_cli_errors_exit_2(tmp_path, scenes, capsys):
    assert _cli(["prefill", str(tmp_path / "nothing"), "--method", "auto"]) == 2
    with _make_project(tmp_path / "p", scenes, n=1):
        pass
    root = str(tmp_path / "p")
    assert _cli(["prefill", root, "--method", "detector"]) == 2  # no detector yet
    assert _cli(["train-detector", root, "--steps", "1", "--arch", "tiny"]) == 2  # no masks
    assert _cli(["prefill", root, "--device", "nonsense"]) == 2


def test_cli_train_detector_and_prefill(trained, tmp_path, capsys):
    project, _, _ = trained
    out = tmp_path / "mine.pt"
    argv = [
        "train-detector",
        str(project.root),
        "--steps",
        "2",
        "--arch",
        "tiny",
        "--out",
        str(out),
    ]
    assert _cli(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert (
        result["path"] == str(out) and result["steps"] == 2 and out.with_suffix(".json").is_file()
    )
    argv = ["prefill", str(project.root), "--images", "all", "--detector", str(out)]
    argv += ["--min-score", "0.9", "--precision", "fp32"]
    assert _cli(argv) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    n = len(project.list_images())
    assert report["method"] == "detector" and report["skipped"] + len(report["prefilled"]) == n
    assert len([line for line in captured.err.splitlines() if line.startswith("[")]) == n
    assert _cli(argv) == 0 and json.loads(capsys.readouterr().out)["skipped"] == n
