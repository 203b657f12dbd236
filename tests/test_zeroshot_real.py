"""The zero-shot tasks on a real image with ground truth: the fluorescence nuclei sample that the
``stardist`` wheel ships (read in place by ``segany.data.package_samples``; segany ships no
copy). The metrics must be pycocotools' and the BSDS metric's own numbers on real data."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from segany.cli.main import main
from segany.data.package_samples import labels_to_masks, package_data_dir, stardist_nuclei
from segany.formats.coco import CocoWriter
from segany.zeroshot import coco_eval


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory):
    image, masks = stardist_nuclei()
    root = tmp_path_factory.mktemp("nuclei")
    (root / "images").mkdir()
    Image.fromarray(image).save(root / "images" / "nuclei.png")
    writer = CocoWriter()
    writer.add_image("nuclei.png", 512, 512, annotations=[{"segmentation": m} for m in masks])
    writer.write(root / "instances.json")
    return root, image, masks


def test_the_sample_is_read_in_place(nuclei):
    _, image, masks = nuclei
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 2]).all() and image.min() == 0 and image.max() == 255
    assert masks.shape == (125, 512, 512) and masks.any(axis=(1, 2)).all()
    assert (masks.sum(0) <= 1).all()  # instance labels: the nuclei do not overlap
    assert "stardist" not in sys.modules  # located, never imported


def test_labels_and_missing_packages_are_checked():
    lab = np.array([[0, 3], [3, 7]])
    m = labels_to_masks(lab)
    assert m.shape == (2, 2, 2) and m[0].sum() == 2 and m[1, 1, 1]
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        labels_to_masks(np.zeros((2, 2, 2)))
    with pytest.raises(FileNotFoundError, match="not installed"):
        package_data_dir("segany_no_such_package")
    with pytest.raises(FileNotFoundError, match="missing"):
        package_data_dir("segany", "no", "such", "folder")


def test_instances_from_boxes_on_the_real_image(nuclei, tmp_path, capsys):
    root, _, masks = nuclei
    code = main(
        [
            "zeroshot",
            "instances",
            str(root / "instances.json"),
            "--images",
            str(root / "images"),
            "--boxes",
            "gt",
            "--out",
            str(tmp_path / "out"),
            "--model",
            "segany_tiny",
            "--precision",
            "fp32",
            "--no-progress",
        ]
    )
    stdout = capsys.readouterr().out
    assert code == 0
    metrics = json.loads(stdout)
    results = json.loads((tmp_path / "out" / "segmentations.json").read_text())
    assert len(results) == len(masks)
    gt = coco_eval.load_annotations(root / "instances.json")
    # the numbers are pycocotools' own on the same files
    from pycocotools import mask as mask_utils
    from pycocotools.cocoeval import COCOeval

    ev = COCOeval(gt, gt.loadRes([dict(r) for r in results]), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert metrics["AP"] == ev.stats[0] and metrics["AP50"] == ev.stats[1]
    # mIoU: each box's mask against its own nucleus
    anns = gt.loadAnns(gt.getAnnIds())
    ious = [
        mask_utils.iou([r["segmentation"]], [a["segmentation"]], [0])[0, 0]
        for r, a in zip(results, anns, strict=True)
    ]
    assert metrics["mIoU"] == pytest.approx(float(np.mean(ious)), abs=1e-9)
    assert 0.0 < metrics["mIoU"] < 1.0


def test_edge_map_of_the_real_image(nuclei, bundled):
    from segany.viz import mask_boundary
    from segany.zeroshot.edge_eval import evaluate_edges
    from segany.zeroshot.edges import edge_maps

    _, image, masks = nuclei
    gt = np.zeros((512, 512), bool)
    for m in masks:
        gt |= mask_boundary(m)
    raw, thin_map = edge_maps(bundled, image, points_per_side=8)
    assert raw.max() == pytest.approx(1.0) and (thin_map <= raw).all()
    r = evaluate_edges([thin_map], [[gt]], thresholds=9)
    # touching nuclei give 2-pixel boundaries, which the benchmark's thinning narrows
    perfect = evaluate_edges([gt * 1.0], [[gt]], thresholds=9, thin_pred=False)
    thinned = evaluate_edges([gt * 1.0], [[gt]], thresholds=9)
    assert perfect.ods == pytest.approx(1.0) and 0.9 < thinned.ods < 1.0
    assert 0.0 < r.ods < 1.0 and 0.0 <= r.r50 <= 1.0
