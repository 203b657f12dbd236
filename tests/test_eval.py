"""Interactive point evaluation: click simulation, both tracks with fake predictors, a
single-mask reference loop against the batched evaluation, a tiny-model run and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import segany
from segany.cli import eval_cmd
from segany.cli.main import main
from segany.data.datasets import Sample, open_dataset
from segany.eval import (
    DEFAULT_CLICKS,
    NOC_MAX_CLICKS,
    InteractiveResult,
    average_results,
    datasets_table,
    evaluate_interactive,
    farthest_point,
    first_click,
    mask_iou,
    next_click,
    number_of_clicks,
)
from tests.helpers import TINY, make_amg_pair, randomize_

H, W = 40, 50
LOW = 16  # low-res logit size of the fake predictors


pytestmark = pytest.mark.usefixtures("one_thread")


def rect(y0: int, y1: int, x0: int, x1: int, h: int = H, w: int = W) -> np.ndarray:
    """Mask of rows y0..y1-1 and columns x0..x1-1."""
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def toy_dataset() -> list[Sample]:
    img = np.full((H, W, 3), 128, np.uint8)
    empty = np.zeros((H, W), bool)
    return [
        Sample(img, np.stack([rect(5, 16, 5, 20), empty, rect(20, 35, 25, 48)]), "a"),
        Sample(img, np.stack([rect(0, 9, 0, 13)]), "b"),
        Sample(img, np.zeros((0, H, W), bool), "c"),
    ]


# ---------------------------------------------------------------------------- clicks


def test_first_click_is_the_centre_of_a_rectangle():
    assert first_click(rect(10, 21, 4, 31)) == (17, 15)  # rows 10..20, cols 4..30
    # the image border is boundary too: a rectangle in the corner is still clicked in its centre
    assert first_click(rect(0, 9, 0, 13)) == (6, 4)
    x, y, d = farthest_point(rect(10, 21, 4, 31))
    assert (x, y) == (17, 15) and d == pytest.approx(6.0)
    assert farthest_point(np.zeros((5, 5), bool))[2] == 0
    with pytest.raises(ValueError, match="empty"):
        first_click(np.zeros((5, 5), bool))


def test_next_click_false_negative_is_positive():
    gt = rect(5, 30, 5, 45)
    pred = rect(5, 30, 5, 20)  # misses the right part: FN region cols 20..44
    x, y, label = next_click(gt, pred)
    assert label == 1 and gt[y, x] and not pred[y, x]
    assert (x, y) == (32, 17)  # centre of the FN rectangle rows 5..29, cols 20..44


def test_next_click_false_positive_is_negative():
    gt = rect(5, 15, 5, 15)
    pred = gt | rect(20, 39, 20, 49)  # a large spurious blob
    x, y, label = next_click(gt, pred)
    assert label == 0 and pred[y, x] and not gt[y, x]
    assert next_click(gt, gt) is None


def test_next_click_picks_the_larger_error():
    gt = rect(0, 40, 0, 20)
    pred = rect(0, 40, 3, 50)  # FN: 3-px strip on the left; FP: 30-px wide block on the right
    assert next_click(gt, pred)[2] == 0
    pred = rect(0, 40, 15, 22)  # FN: 15-px block on the left; FP: 2-px strip
    assert next_click(gt, pred)[2] == 1


def test_mask_iou():
    a, b = rect(0, 10, 0, 10), rect(0, 10, 5, 15)
    assert mask_iou(a, b) == pytest.approx(50 / 150)
    assert mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    assert mask_iou(np.stack([a, b])[None], a[None, None]).shape == (1, 2)


# ---------------------------------------------------------------------------- fake predictors


class FakePredictor:
    """Knows the ground truth; ``mode`` says what it returns for the mask whose first click
    starts the prompt: "gt" (the mask, 3 times), "empty", or "ambiguous" (empty, gt, half with
    predicted IoU 0.9, 0.1, 0.5; a single-mask output is the empty mask). Records calls."""

    def __init__(self, dataset, mode: str) -> None:
        self.dataset = [s for s in dataset if s.masks.any()]
        self.mode = mode
        self.images = 0
        self.calls: list[dict] = []

    def set_image(self, image):
        self.gts = self.dataset[self.images].masks
        self.firsts = [first_click(g) if g.any() else None for g in self.gts]
        self.images += 1

    def predict(self, point_coords, point_labels, mask_input=None, multimask_output=True):
        coords = np.asarray(point_coords)
        assert coords.ndim == 3 and np.asarray(point_labels).shape == coords.shape[:2]
        self.calls.append(
            {"n": coords.shape[1], "multimask": multimask_output, "mask_input": mask_input}
        )
        outs, scores = [], []
        for pts in coords:
            gt = self.gts[self.firsts.index(tuple(int(v) for v in pts[0]))]
            empty = np.zeros_like(gt)
            if self.mode == "gt":
                ms, sc = [gt, gt, gt], [0.5, 0.6, 0.7]
            elif self.mode == "empty":
                ms, sc = [empty] * 3, [0.5, 0.5, 0.5]
            else:
                half = gt.copy()
                half[: gt.shape[0] // 2] = False
                ms, sc = [empty, gt, half], [0.9, 0.1, 0.5]
            if not multimask_output:
                ms, sc = ms[:1], sc[:1]
            outs.append(np.stack(ms))
            scores.append(sc)
        masks = np.stack(outs)
        low = np.zeros((*masks.shape[:2], LOW, LOW), np.float32)
        return masks, np.asarray(scores, np.float32), low


def test_perfect_predictor_scores_one_everywhere():
    pred = FakePredictor(toy_dataset(), "gt")
    r = evaluate_interactive(pred, toy_dataset(), progress=False)
    assert r.clicks == DEFAULT_CLICKS
    assert r.miou_top == [1.0] * 5 and r.miou_oracle == [1.0] * 5
    assert r.num_masks == 3 and r.num_images == 2  # the empty mask and image "c" skipped
    assert r.image_names == ["a", "b"]
    assert r.mask_index.tolist() == [0, 2, 0] and r.mask_image.tolist() == [0, 0, 1]
    assert r.iou_top.shape == (3, 9)
    assert len(pred.calls) == 2  # one click-1 call per image; no error, no further clicks


def test_empty_predictor_scores_zero_and_keeps_clicking_foreground():
    pred = FakePredictor(toy_dataset(), "empty")
    r = evaluate_interactive(pred, toy_dataset(), clicks=(1, 3), progress=False)
    assert r.miou_top == [0.0, 0.0] and r.miou_oracle == [0.0, 0.0]
    # per image: click 1 shared by both tracks, then clicks 2 and 3 for each track
    assert [c["n"] for c in pred.calls[:5]] == [1, 2, 2, 3, 3]
    assert [c["multimask"] for c in pred.calls[:5]] == [True, False, True, False, True]
    assert pred.calls[0]["mask_input"] is None
    assert pred.calls[1]["mask_input"].shape == (2, 1, LOW, LOW)


def test_number_of_clicks_by_hand():
    iou = np.zeros((3, 20))
    iou[0, 2:] = 0.86  # reaches 0.85 at click 3, never 0.90
    iou[1, :] = 0.95  # click 1
    iou[2, 19] = 0.91  # only the 20th click
    assert number_of_clicks(iou, 0.85).tolist() == [3, 1, 20]
    assert number_of_clicks(iou, 0.90).tolist() == [20, 1, 20]
    with pytest.raises(ValueError, match="needs IoU after 20 clicks"):
        number_of_clicks(iou[:, :9], 0.85)


def test_noc_runs_twenty_clicks_and_keeps_the_miou():
    def empty():
        return FakePredictor(toy_dataset(), "empty")  # one pass over the data each

    short = evaluate_interactive(empty(), toy_dataset(), clicks=(1, 3), progress=False)
    assert short.noc() is None and "NoC" not in short.table()
    r = evaluate_interactive(empty(), toy_dataset(), clicks=(1, 3), progress=False, noc=True)
    assert r.iou_top.shape == (3, NOC_MAX_CLICKS) and r.miou_top == short.miou_top
    assert r.noc() == {
        "top": {"NoC@85": 20.0, "NoC@90": 20.0},
        "oracle": {"NoC@85": 20.0, "NoC@90": 20.0},
    }
    perfect = evaluate_interactive(
        FakePredictor(toy_dataset(), "gt"), toy_dataset(), clicks=(1, 3), progress=False, noc=True
    )
    assert perfect.noc()["top"] == {"NoC@85": 1.0, "NoC@90": 1.0}
    assert "| NoC@85 | NoC@90 |" in perfect.table().splitlines()[0]
    assert perfect.to_dict()["noc"] == perfect.noc()
    # the average over datasets weighs each dataset the same
    avg = average_results([r, perfect])
    assert avg["noc"]["top"]["NoC@90"] == 10.5 and avg["miou_top"][0] == 0.5
    table = datasets_table(["empty", "perfect"], [r, perfect])
    assert "| **average of 2** | 0.500 |" in table


def test_oracle_picks_best_mask_top_picks_highest_score():
    pred = FakePredictor(toy_dataset(), "ambiguous")
    r = evaluate_interactive(pred, toy_dataset(), clicks=(1, 2), progress=False)
    assert r.miou_top[0] == 0.0  # predicted IoU 0.9 goes to the empty mask
    assert r.miou_oracle == [1.0, 1.0]
    assert all(o >= t for o, t in zip(r.miou_oracle, r.miou_top, strict=True))


def test_max_masks_and_images_and_bad_arguments():
    data = toy_dataset()
    r = evaluate_interactive(FakePredictor(data, "gt"), data, max_masks_per_image=1, progress=False)
    assert r.num_masks == 2
    r2 = evaluate_interactive(
        FakePredictor(data, "gt"), data, max_masks_per_image=1, progress=False
    )
    assert r2.mask_index.tolist() == r.mask_index.tolist()  # deterministic choice
    r = evaluate_interactive(FakePredictor(data, "gt"), data, max_images=1, progress=False)
    assert r.num_images == 1 and r.num_masks == 2
    for kwargs in ({"clicks": ()}, {"clicks": (0, 2)}, {"max_images": 0}):
        with pytest.raises(ValueError):
            evaluate_interactive(FakePredictor(data, "gt"), data, progress=False, **kwargs)
    with pytest.raises(ValueError, match="no non-empty"):
        evaluate_interactive(FakePredictor(data, "gt"), data[2:], progress=False)


# ---------------------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def scenes():
    return open_dataset({"type": "procedural", "length": 3, "seed": 1, "height": 64, "width": 80})


def capped_masks(dataset, cap: int) -> int:
    """Masks the protocol evaluates with ``max_masks_per_image=cap``: each image's non-empty
    masks, at most ``cap`` of them."""
    total = 0
    for i in range(len(dataset)):
        masks = dataset[i].masks
        total += min(int(masks.any(axis=(1, 2)).sum()), cap)
    return total


def reference_track(predictor, gt: np.ndarray, n: int, oracle: bool) -> list[float]:
    """The protocol for one mask, written plainly with unbatched ``predict`` calls."""
    x, y = first_click(gt)
    pts, labels = [[x, y]], [1]
    ious, logits, pred = [], None, None
    for k in range(n):
        if k > 0:
            click = next_click(gt, pred)
            if click is None:
                ious.append(ious[-1])
                continue
            pts.append(list(click[:2]))
            labels.append(click[2])
        multimask = k == 0 or oracle
        masks, scores, low = predictor.predict(
            np.array(pts), np.array(labels), mask_input=logits, multimask_output=multimask
        )
        j = int(np.argmax(mask_iou(masks, gt[None]) if oracle else scores))
        pred, logits = masks[j], low[j][None]
        ious.append(float(mask_iou(pred, gt)))
    return ious


def test_batched_evaluation_matches_reference_loop(scenes):
    _, model = make_amg_pair(TINY)  # image-dependent masks, unlike plain random weights
    predictor = segany.SamPredictor(model)
    r = evaluate_interactive(
        predictor, scenes, clicks=(1, 2, 4), max_masks_per_image=3, batch_size=2, progress=False
    )
    assert r.num_masks == capped_masks(scenes, 3) > 0
    for row in range(r.num_masks):
        sample = scenes[int(r.mask_image[row])]
        predictor.set_image(sample.image)
        gt = sample.masks[r.mask_index[row]]
        np.testing.assert_allclose(r.iou_top[row], reference_track(predictor, gt, 4, False))
        np.testing.assert_allclose(r.iou_oracle[row], reference_track(predictor, gt, 4, True))


def test_image_indices_evaluate_a_share_with_the_same_masks(tiny_model, scenes):
    pred = segany.SamPredictor(tiny_model)
    kw = {"clicks": (1, 2), "max_masks_per_image": 2, "progress": False}
    whole = evaluate_interactive(pred, scenes, **kw)
    share = evaluate_interactive(pred, scenes, image_indices=[2, 0], **kw)
    rows = np.flatnonzero(whole.mask_image != 1)  # images 0 and 2 of the whole run
    assert share.num_masks == len(rows)
    np.testing.assert_allclose(np.sort(share.iou_top, 0), np.sort(whole.iou_top[rows], 0))
    with pytest.raises(ValueError, match="image_indices"):
        evaluate_interactive(pred, scenes, image_indices=[3], **kw)


def test_tiny_model_run_writes_table_plot_and_json(tiny_model, scenes, tmp_path):
    r = evaluate_interactive(segany.SamPredictor(tiny_model), scenes, progress=False)
    assert isinstance(r, InteractiveResult) and r.num_images == 3
    assert r.num_masks == sum(int(s.masks.any(axis=(1, 2)).sum()) for s in scenes)
    for values in (r.miou_top, r.miou_oracle, r.iou_top.ravel(), r.iou_oracle.ravel()):
        v = np.asarray(values)
        assert np.isfinite(v).all() and (v >= 0).all() and (v <= 1).all()
    assert r.miou_oracle[0] >= r.miou_top[0]  # same first prediction, best-of-3 choice
    table = r.table()
    assert table.splitlines()[0] == "| track | 1 pt | 2 pt | 3 pt | 5 pt | 9 pt |"
    assert table.splitlines()[2].startswith("| top |")
    assert table.splitlines()[3].startswith("| oracle |")
    r.plot(tmp_path / "eval.png")
    with Image.open(tmp_path / "eval.png") as im:
        assert im.format == "PNG" and im.size[0] > 100
    r.write_json(tmp_path / "eval.json", extra={"model": "tiny"})
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["clicks"] == [1, 2, 3, 5, 9] and data["model"] == "tiny"
    assert data["miou_top"] == pytest.approx(r.miou_top)
    assert len(data["per_mask"]) == r.num_masks and len(data["per_mask"][0]["iou_top"]) == 9
    r.write_markdown(tmp_path / "eval.md")
    assert table in (tmp_path / "eval.md").read_text()


# ---------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval_cli") / "tiny.pth"
    torch.save(randomize_(segany.build_sam_model(TINY), 0).state_dict(), path)
    return path


def test_cli_eval_writes_outputs(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["eval", "procedural:2", "--model", str(tiny_ckpt), "--device", "cpu"]
    args += ["--precision", "fp32", "--max-masks-per-image", "3", "--out", str(out), "--quiet"]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert "| track | 1 pt | 2 pt | 3 pt | 5 pt | 9 pt |" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["eval.json", "eval.md", "eval.png"]
    data = json.loads((out / "eval.json").read_text())
    assert data["data"] == "procedural:2"
    assert data["num_masks"] == capped_masks(open_dataset("procedural:2"), 3) > 0
    assert data["model"] == str(tiny_ckpt)


def test_cli_eval_several_datasets_with_noc(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["eval", "procedural:1", "procedural:1:7", "--model", str(tiny_ckpt), "--quiet"]
    args += ["--precision", "fp32", "--max-masks-per-image", "2", "--out", str(out)]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert "| dataset | 1 pt | 2 pt | 3 pt | 5 pt | 9 pt | NoC@85 | NoC@90 | masks |" in stdout
    data = json.loads((out / "eval.json").read_text())
    assert [d["data"] for d in data["datasets"]] == ["procedural:1", "procedural:1:7"]
    for d in data["datasets"]:
        assert len(d["per_mask"][0]["iou_top"]) == 20 and d["noc"] is not None
    mean = np.mean([d["miou_top"] for d in data["datasets"]], axis=0)
    assert data["average"]["miou_top"] == pytest.approx(mean.tolist())
    assert "average of 2" in (out / "eval.md").read_text() and (out / "eval.png").exists()


def test_cli_eval_errors(tiny_ckpt, tmp_path, capsys):
    assert main(["eval", "procedural:0", "--model", str(tiny_ckpt)]) == 2
    assert "must be positive" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert main(["eval", "procedural:1", "--clicks", "0,2"]) == 2
    assert "invalid clicks" in capsys.readouterr().err
    missing = tmp_path / "missing.pth"
    assert main(["eval", "procedural:1", "--model", str(missing), "--quiet"]) == 3
    assert eval_cmd.DEFAULT_CLICKS == DEFAULT_CLICKS
