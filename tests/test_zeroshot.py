"""Zero-shot proposals and instance segmentation from boxes (``segany.zeroshot``): the
pycocotools wrappers give pycocotools' own numbers, LVIS groups split right, the proposal
ranking and cap, the refinement pass, and ``segany zeroshot proposals|instances`` end to end
on generated scenes with the bundled model, with resume and bad input."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from PIL import Image

from segany.cli.main import main
from segany.data.scenes import ProceduralScenes, SceneConfig
from segany.formats.coco import CocoWriter
from segany.zeroshot import coco_eval
from segany.zeroshot.common import PAPER, ImageCache, image_entries
from segany.zeroshot.instances import check_detections, gt_detections, segment_boxes
from segany.zeroshot.proposals import (
    MAX_PROPOSALS,
    ProposalSettings,
    make_generator,
    rank_proposals,
)

CATEGORIES = [
    {"id": 1, "name": "object", "frequency": "f"},
    {"id": 2, "name": "part", "frequency": "c"},
    {"id": 3, "name": "sub-part", "frequency": "r"},
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three generated scenes as a COCO file: category 1 objects, 2 parts, 3 sub-parts."""
    root = tmp_path_factory.mktemp("zs")
    (root / "images").mkdir()
    scenes = ProceduralScenes(3, seed=5, config=SceneConfig(height=160, width=192))
    writer = CocoWriter(categories=[{k: c[k] for k in ("id", "name")} for c in CATEGORIES])
    for i in range(len(scenes)):
        s = scenes[i]
        name = f"scene_{i}.png"
        Image.fromarray(s.image).save(root / "images" / name)
        anns = [
            {"segmentation": m, "category_id": int(level) + 1}
            for m, level in zip(s.masks, s.levels, strict=True)
        ]
        writer.add_image(name, s.image.shape[1], s.image.shape[0], annotations=anns)
    writer.write(root / "instances.json")
    return root


@pytest.fixture(scope="module")
def lvis_file(dataset):
    """The same annotations in LVIS's layout: frequencies, no iscrowd, coco_url, no file_name."""
    data = json.loads((dataset / "instances.json").read_text())
    data["categories"] = CATEGORIES
    for a in data["annotations"]:
        a.pop("iscrowd", None)
    for im in data["images"]:
        im["coco_url"] = "http://images.cocodataset.org/val2017/" + im.pop("file_name")
    path = dataset / "lvis.json"
    path.write_text(json.dumps(data))
    return path


def _pycocotools_stats(gt_path, results, use_cats, max_dets):
    """COCOeval run by hand, as a user of pycocotools would."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "segm")
        ev.params.useCats = use_cats
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def _fake_results(dataset, jitter=0.0, seed=0):
    """Ground-truth masks, some eroded, as scored results (category kept)."""
    import cv2

    from segany.formats.rle import encode_coco_rle

    rng = np.random.default_rng(seed)
    gt = coco_eval.load_annotations(dataset / "instances.json")
    out = []
    for ann in gt.loadAnns(gt.getAnnIds()):
        m = gt.annToMask(ann).astype(bool)
        if rng.random() < 0.5:
            m = cv2.erode(m.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        if not m.any():
            continue
        out.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "segmentation": encode_coco_rle(m),
                "score": float(rng.random() + jitter),
            }
        )
    return out


def test_recall_and_ap_are_pycocotools_numbers(dataset):
    results = _fake_results(dataset)
    gt = coco_eval.load_annotations(dataset / "instances.json")
    ar = coco_eval.proposal_recall(gt, results)
    stats = _pycocotools_stats(dataset / "instances.json", results, 0, (10, 100, 1000))
    assert ar["AR@10"] == stats[6] and ar["AR@100"] == stats[7] and ar["AR@1000"] == stats[8]
    assert [ar["AR_small@1000"], ar["AR_medium@1000"], ar["AR_large@1000"]] == list(stats[9:12])
    assert 0 < ar["AR@1000"] < 1  # eroded masks miss at the strict thresholds
    ap = coco_eval.mask_ap(gt, results)
    stats = _pycocotools_stats(dataset / "instances.json", results, 1, (1, 10, 100))
    assert [ap[k] for k in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")] == list(
        stats[:6]
    )
    # a category changed makes AP (with categories) fall but not the class-agnostic recall
    wrong = [{**r, "category_id": 1} for r in results]
    assert coco_eval.mask_ap(gt, wrong)["AP"] < ap["AP"]
    assert coco_eval.proposal_recall(gt, wrong)["AR@1000"] == ar["AR@1000"]


def test_lvis_layout_and_frequency_groups(dataset, lvis_file):
    gt = coco_eval.load_annotations(lvis_file)
    assert coco_eval.is_lvis(gt)
    assert all(a["iscrowd"] == 0 for a in gt.dataset["annotations"])
    assert gt.loadImgs(gt.getImgIds())[0]["file_name"] == "scene_0.png"
    results = _fake_results(dataset)
    ar = coco_eval.proposal_recall(gt, results)
    for letter, word in coco_eval.LVIS_GROUPS.items():
        group = coco_eval.restrict(gt, frequency=letter)
        cats = {c["id"] for c in CATEGORIES if c["frequency"] == letter}
        anns = group.dataset["annotations"]
        assert anns and {a["category_id"] for a in anns} == cats
        assert ar[f"AR_{word}@1000"] == coco_eval.proposal_recall(group, results)["AR@1000"]
    # COCO annotations (no frequencies) give no group numbers
    assert "AR_rare@1000" not in coco_eval.proposal_recall(
        coco_eval.load_annotations(dataset / "instances.json"), results
    )


def test_bad_annotations_and_results_are_refused(dataset, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        coco_eval.load_annotations(bad)
    with pytest.raises(ValueError, match="needs a list 'annotations'"):
        coco_eval.load_annotations({"images": [], "categories": []})
    gt = coco_eval.load_annotations(dataset / "instances.json")
    with pytest.raises(ValueError, match="image_id 99"):
        coco_eval.proposal_recall(gt, [{"image_id": 99, "segmentation": {}, "score": 1}])
    with pytest.raises(ValueError, match="COCO RLE"):
        coco_eval.mask_ap(gt, [{"image_id": 1, "category_id": 1, "score": 1.0}])
    data = json.loads((dataset / "instances.json").read_text())
    data["images"][0]["file_name"] = "../escape.png"
    with pytest.raises(ValueError, match="leaves the images folder"):
        image_entries(coco_eval.load_annotations(data), dataset / "images")
    with pytest.raises(ValueError, match="bbox must be"):
        check_detections(
            [{"image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 5], "score": 1}], {1}, {1}
        )
    with pytest.raises(ValueError, match="score must be"):
        check_detections(
            [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 5], "score": float("nan")}],
            {1},
            {1},
        )


def test_proposal_settings_are_the_papers_and_ranking_caps():
    s = ProposalSettings()
    assert (s.points_per_side, s.box_nms_thresh, s.crop_n_layers) == (64, 0.9, 0)
    assert (s.pred_iou_thresh, s.stability_score_thresh, s.max_proposals) == (0.0, 0.0, 1000)
    assert MAX_PROPOSALS == 1000
    rng = np.random.default_rng(0)
    records = [
        {"predicted_iou": float(a), "stability_score": float(b), "area": 5, "i": i}
        for i, (a, b) in enumerate(rng.random((1500, 2)))
    ]
    records.append({"predicted_iou": 1.0, "stability_score": float("nan"), "area": 0, "i": -1})
    ranked = rank_proposals(records)
    assert len(ranked) == 1000 and all(r["i"] >= 0 for r in ranked)
    means = [(r["predicted_iou"] + r["stability_score"]) / 2 for r in records[:-1]]
    assert [r["i"] for r in ranked] == list(np.argsort(-np.array(means), kind="stable")[:1000])
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    with pytest.raises(ValueError, match="points_per_side"):
        ProposalSettings(points_per_side=0)


def test_generator_gets_the_proposal_settings(bundled):
    g = make_generator(bundled, ProposalSettings(points_per_side=8))
    assert (g.pred_iou_thresh, g.stability_score_thresh, g.box_nms_thresh) == (0.0, 0.0, 0.9)
    assert g.crop_n_layers == 0 and len(g.point_grids[0]) == 64 and g.output_mode == "coco_rle"


def test_refinement_changes_masks_and_keeps_detections(bundled, dataset):
    from segany import SamPredictor
    from segany.io.image import load_image
    from segany.masks import mask_iou

    gt = coco_eval.load_annotations(dataset / "instances.json")
    image_id = gt.getImgIds()[0]
    dets = gt_detections(gt, [image_id])
    rng = np.random.default_rng(1)
    for d in dets:  # a jittered "detector"
        d["bbox"] = [v + float(rng.normal(0, 2)) for v in d["bbox"][:2]] + d["bbox"][2:]
        d["score"] = float(rng.random())
    image = load_image(dataset / "images" / gt.imgs[image_id]["file_name"])
    predictor = SamPredictor(bundled)
    refined, masks = segment_boxes(predictor, image, dets, batch=3)
    first, masks0 = segment_boxes(predictor, image, dets, refine=False)
    assert len(refined) == len(dets) == len(masks)
    for r, d in zip(refined, dets, strict=True):
        assert (r["category_id"], r["score"], r["bbox"]) == (
            d["category_id"],
            d["score"],
            d["bbox"],
        )
    changed = [not np.array_equal(a, b) for a, b in zip(masks, masks0, strict=True)]
    assert any(changed)
    truth = [gt.annToMask(gt.anns[d["ann_id"]]).astype(bool) for d in dets]
    assert np.mean([mask_iou(m, t) for m, t in zip(masks, truth, strict=True)]) > 0.7


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_proposals_end_to_end_and_resume(dataset, tmp_path, capsys):
    out = tmp_path / "prop"
    argv = [
        "zeroshot",
        "proposals",
        dataset / "instances.json",
        "--images",
        dataset / "images",
        "--out",
        out,
        "--model",
        "segany_tiny",
        "--precision",
        "fp32",
        "--points-per-side",
        "8",
        "--max-proposals",
        "50",
        "--max-images",
        "2",
        "--no-progress",
    ]
    code, stdout, err = _run(argv, capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert json.loads(stdout) == results["metrics"]
    props = json.loads((out / "proposals.json").read_text())
    assert {p["image_id"] for p in props} == {1, 2}
    assert max(sum(p["image_id"] == i for p in props) for i in (1, 2)) <= 50
    assert results["settings"]["points_per_side"] == 8 and results["times"]["computed"] == 2
    assert results["metrics"]["AR@1000"] > 0.3
    assert results["paper"] == PAPER["proposals"]
    md = (out / "results.md").read_text()
    assert "the paper's numbers" in md and "AR@1000" in md and (out / "ar.png").stat().st_size
    kinds = [o["kind"] for o in results["overlays"]]
    assert kinds == ["best", "best"]  # 2 images: both are among the best 2, none repeated
    for o in results["overlays"]:
        with Image.open(out / o["file"]) as im:
            assert im.size == (192, 160)
    # a second run resumes from the cache: same proposals, nothing computed
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    again = json.loads((out / "results.json").read_text())
    assert again["times"]["cached"] == 2 and again["metrics"] == results["metrics"]
    assert json.loads((out / "proposals.json").read_text()) == props


def test_cli_instances_with_gt_boxes_and_detections(dataset, tmp_path, capsys):
    base = [
        "zeroshot",
        "instances",
        dataset / "instances.json",
        "--images",
        dataset / "images",
        "--model",
        "segany_tiny",
        "--precision",
        "fp32",
        "--no-progress",
    ]
    code, stdout, err = _run([*base, "--out", tmp_path / "gt", "--boxes", "gt"], capsys)
    assert code == 0, err
    metrics = json.loads(stdout)
    assert metrics["mIoU"] > 0.7 and metrics["AP"] > 0.3
    segs = json.loads((tmp_path / "gt" / "segmentations.json").read_text())
    gt = coco_eval.load_annotations(dataset / "instances.json")
    assert len(segs) == len(gt.getAnnIds())
    dets = [
        {k: d[k] for k in ("image_id", "category_id", "bbox")} | {"score": 0.5 + 0.1 * (i % 5)}
        for i, d in enumerate(gt_detections(gt, gt.getImgIds()))
    ]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    code, stdout, err = _run([*base, "--out", tmp_path / "det", "--detections", path], capsys)
    assert code == 0, err
    out = json.loads((tmp_path / "det" / "segmentations.json").read_text())
    assert [(r["category_id"], r["score"]) for r in out] == [
        (d["category_id"], d["score"]) for d in dets
    ]
    assert "mIoU" not in json.loads(stdout)
    assert json.loads((tmp_path / "det" / "results.json").read_text())["settings"]["refine"]


def test_cli_bad_input_is_exit_2_and_writes_nothing(dataset, tmp_path, capsys):
    base = [
        "zeroshot",
        "instances",
        dataset / "instances.json",
        "--images",
        dataset / "images",
        "--model",
        "segany_tiny",
    ]
    bad = tmp_path / "dets.json"
    bad.write_text(
        json.dumps([{"image_id": 1, "category_id": 7, "bbox": [0, 0, 4, 4], "score": 1}])
    )
    code, _, err = _run([*base, "--out", tmp_path / "o1", "--detections", bad], capsys)
    assert code == 2 and "category_id 7" in err and not (tmp_path / "o1").exists()
    code, _, err = _run(
        [*base, "--out", tmp_path / "o2", "--detections", tmp_path / "nope"], capsys
    )
    assert code == 2 and "cannot read" in err
    code, _, err = _run(
        [
            "zeroshot",
            "proposals",
            tmp_path / "missing.json",
            "--images",
            dataset / "images",
            "--out",
            tmp_path / "o3",
        ],
        capsys,
    )
    assert code == 2 and "cannot read" in err and not (tmp_path / "o3").exists()
    code, _, err = _run(
        [
            "zeroshot",
            "proposals",
            dataset / "instances.json",
            "--images",
            tmp_path,
            "--out",
            tmp_path / "o4",
        ],
        capsys,
    )
    assert code == 2 and "missing" in err


def test_coverage_of_perfect_and_partial_results(dataset):
    from segany.zeroshot.overlays import coverage

    gt = coco_eval.load_annotations(dataset / "instances.json")
    image_id = gt.getImgIds()[0]
    anns = gt.loadAnns(gt.getAnnIds(imgIds=[image_id]))
    perfect = [{"segmentation": gt.annToRLE(a), "score": 1.0} for a in anns]
    assert coverage(gt, image_id, perfect) == pytest.approx(1.0)
    assert coverage(gt, image_id, perfect[:1]) < 1.0
    assert coverage(gt, image_id, []) == 0.0


def test_image_cache_ignores_other_settings(tmp_path):
    a = ImageCache(tmp_path, {"model": "x", "grid": 64})
    a.put("7", [1, 2])
    assert a.get("7") == [1, 2]
    assert ImageCache(tmp_path, {"model": "y", "grid": 64}).get("7") is None
    assert a.get("8") is None
