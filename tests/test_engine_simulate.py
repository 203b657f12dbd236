"""The simulated annotator (segany.engine.simulate): the click protocol against a scripted
server (first click farthest from the boundary, a background click on a false positive, the
best-scored of the multimask output, accept at the target, the click budget, an empty mask
discarded), a 2-round loop with retrains on tiny procedural scenes through the real server
(the report's numbers recomputed from the event log and Project.stats, model versions
recorded), and ``segany engine simulate``'s argument errors."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("fastapi")

from segany.cli import engine_simulate  # noqa: E402
from segany.cli.common import EXIT_USAGE, UsageError  # noqa: E402
from segany.engine.simulate import (  # noqa: E402
    SimulatedAnnotator,
    SimulationConfig,
    check_config,
    parse_schedule,
    run_simulation,
)
from segany.engine.store import Project  # noqa: E402
from segany.eval.interactive import first_click  # noqa: E402
from segany.formats import decode_coco_rle, encode_coco_rle  # noqa: E402
from segany.masks import mask_iou  # noqa: E402
from tests.helpers import fast_finetune_toml  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

H = W = 40


def rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


class _Response:
    def __init__(self, status_code: int, body: Any) -> None:
        self.status_code = status_code
        self._body = body
        self.content = b"" if body is None else b"x"
        self.text = json.dumps(body)

    def json(self) -> Any:
        return self._body


class ScriptedServer:
    """A stand-in HTTP client: ``predict`` answers with ``script(call, body)`` -> a list of
    ``(mask, predicted_iou)``; every request is recorded."""

    def __init__(self, script) -> None:
        self.script = script
        self.requests: list[tuple[str, str, Any]] = []
        self.predicts: list[dict[str, Any]] = []
        self.tokens: list[list[str]] = []

    def request(self, method: str, path: str, json: Any = None) -> _Response:
        self.requests.append((method, path, json))
        if path.endswith("/predict"):
            call = len(self.predicts)
            self.predicts.append(json)
            answers = self.script(call, json)
            tokens = [f"t{call}_{i}" for i in range(len(answers))]
            self.tokens.append(tokens)
            masks = [
                {"segmentation": encode_coco_rle(m), "predicted_iou": s, "mask_input": t}
                for (m, s), t in zip(answers, tokens, strict=True)
            ]
            best = int(np.argmax([s for _, s in answers]))
            return _Response(200, {"masks": masks, "mask_input": tokens[best]})
        if path.endswith("/masks"):
            return _Response(201, {"id": 7, **json})
        if path == "/api/events":
            return _Response(201, {"id": 1, "kind": json["kind"]})
        return _Response(200, {})

    def posted(self, suffix: str) -> list[Any]:
        return [body for _, path, body in self.requests if path.endswith(suffix)]


def test_first_click_farthest_from_boundary_and_accept_at_target():
    gt = rect(5, 25, 8, 30)
    server = ScriptedServer(lambda call, body: [(gt, 0.9)])
    out = SimulatedAnnotator(server, seconds_per_click=1.5).annotate_mask(3, gt)
    assert out.clicks == 1 and out.accepted and out.reached and out.iou == 1.0
    first = server.predicts[0]
    x, y = first["points"][0]
    assert gt[y, x] and [x, y] == list(first_click(gt)) and first["labels"] == [1]
    # the farthest pixel from the boundary: the rectangle's centre
    assert abs(x - 18.5) <= 1 and abs(y - 14.5) <= 1
    assert first["multimask"] is True and first["mask_input"] is None
    (stored,) = server.posted("/api/images/3/masks")
    assert stored["elapsed_ms"] >= 1500 and stored["elapsed_ms"] == out.elapsed_ms
    assert stored["prompts"]["points"] == [[x, y]] and stored["prompts"]["labels"] == [1]
    assert np.array_equal(decode_coco_rle(stored["segmentation"]), gt)


def test_background_click_on_false_positive_and_best_scored_multimask():
    gt = rect(10, 20, 10, 20)
    spill = gt | rect(10, 38, 20, 38)  # the truth plus a large false positive on the right

    def script(call, body):
        if call == 0:  # best-scored is the spill; a perfect mask with a lower score is ignored
            return [(rect(0, 2, 0, 2), 0.1), (spill, 0.8), (gt, 0.5)]
        return [(gt, 0.7)]

    server = ScriptedServer(script)
    out = SimulatedAnnotator(server, iou_target=0.95).annotate_mask(1, gt)
    assert out.clicks == 2 and out.reached and out.labels == [1, 0]
    second = server.predicts[1]
    x, y = second["points"][1]
    assert second["labels"] == [1, 0] and spill[y, x] and not gt[y, x]
    assert second["multimask"] is False and second["mask_input"] == "t0_1"
    assert out.ious[0] == pytest.approx(float(mask_iou(spill, gt)))


def test_click_budget_respected_and_foreground_clicks_on_misses():
    gt = rect(4, 36, 4, 36)
    half = rect(4, 36, 4, 20)  # always a false negative on the right
    server = ScriptedServer(lambda call, body: [(half, 0.9)])
    out = SimulatedAnnotator(server, click_budget=3, iou_target=0.9).annotate_mask(1, gt)
    assert out.clicks == 3 == len(server.predicts) and not out.reached and out.accepted
    assert out.labels == [1, 1, 1]
    for x, y in out.points[1:]:
        assert gt[y, x] and not half[y, x]
    assert out.iou == pytest.approx(0.5, abs=0.01)
    assert server.posted("/masks")[0]["elapsed_ms"] >= 3 * 1500
    # corrected by hand after the budget: the truth is stored, the brush time added
    server = ScriptedServer(lambda call, body: [(half, 0.9)])
    out = SimulatedAnnotator(server, click_budget=2, brush_seconds=10).annotate_mask(1, gt)
    (stored,) = server.posted("/masks")
    assert out.brushed and out.clicks == 2 and out.iou == pytest.approx(0.5, abs=0.01)
    assert np.array_equal(decode_coco_rle(stored["segmentation"]), gt)
    assert stored["elapsed_ms"] >= 13000 and stored["prompts"]["brushed"] is True


def test_empty_mask_is_discarded_and_image_marked_done():
    gt = np.stack([rect(4, 20, 4, 20), np.zeros((H, W), bool), rect(22, 38, 22, 38)])
    server = ScriptedServer(lambda call, body: [(np.zeros((H, W), bool), 0.5)])
    outs = SimulatedAnnotator(server, click_budget=2).annotate_image(5, gt)
    assert [o.target for o in outs] == [0, 2]  # the empty truth is skipped
    assert not any(o.accepted for o in outs) and all(o.clicks == 2 for o in outs)
    assert [e["kind"] for e in server.posted("/api/events")] == ["discard", "discard"]
    assert server.requests[0][1] == "/api/images/5/lease"
    assert server.requests[-1][1:] == ("/api/images/5/status", {"status": "done"})


def test_bad_protocol_values():
    with pytest.raises(ValueError, match="click budget"):
        SimulatedAnnotator(None, click_budget=0)
    with pytest.raises(ValueError, match="IoU target"):
        SimulatedAnnotator(None, iou_target=1.5)
    with pytest.raises(ValueError, match="seconds per click"):
        SimulatedAnnotator(None, seconds_per_click=-1)


# ----------------------------------------------------------------------------- the loop


FAST_CONFIG = fast_finetune_toml(max_masks_per_image=2)


def test_two_round_loop_recomputable_from_the_event_log(tmp_path):
    config_file = tmp_path / "fast.toml"
    config_file.write_text(FAST_CONFIG)
    data = {"type": "procedural", "length": 6, "seed": 2, "height": 64, "width": 64}
    config = SimulationConfig(
        data=data, out=tmp_path / "sim", rounds=2, images_per_round=2, click_budget=3,
        masks_per_image=2, steps=1, retrain_config=str(config_file), eval_masks_per_image=1,
        holdout=0.3,
    )  # fmt: skip
    report = run_simulation(config)
    rows = report["rounds"]
    assert [r["round"] for r in rows] == [1, 2]
    masks = [
        json.loads(line) for line in (tmp_path / "sim" / "masks.jsonl").read_text().splitlines()
    ]
    with Project.open(tmp_path / "sim" / "project") as p:
        versions = {v.id: v for v in p.list_models()}
        stats = {g["annotator"]: g for g in p.stats()["groups"]}
        prompts = p.list_events(kind="prompt")
        accepts = p.list_events(kind="accept")
        for row in rows:
            name = row["annotator"]
            mine = [o for o in masks if o["round"] == row["round"]]
            n_prompts = sum(e.annotator == name for e in prompts)
            n_accepts = sum(e.annotator == name for e in accepts)
            assert 0 < row["targets"] == len(mine) <= 2 * 2
            assert all(1 <= o["clicks"] <= 3 for o in mine)
            assert row["clicks"] == n_prompts == sum(o["clicks"] for o in mine)
            assert row["masks"] == n_accepts == stats[name]["accepted"]
            assert row["clicks_per_mask"] == pytest.approx(stats[name]["clicks_per_mask"])
            assert row["clicks_per_mask"] == pytest.approx(n_prompts / n_accepts)
            assert row["seconds_per_mask"] == pytest.approx(stats[name]["seconds_per_mask"])
            assert row["event_log"]["clicks_per_mask"] == stats[name]["clicks_per_mask"]
            assert row["miou_final"] == pytest.approx(np.mean([o["iou"] for o in mine]))
            # the model used is a registered version; the retrain after the round its child
            assert row["model_version"]["id"] in versions
            new = versions[row["retrain"]["version"]["id"]]
            assert new.parent_id == row["model_version"]["id"]
            assert 0 <= row["heldout_miou_1pt"] <= 1 and 0 <= row["heldout_miou_5pt"] <= 1
        # round 2 ran on the model the first retrain left current
        first = rows[0]["retrain"]
        expect = first["version"]["id"] if first["switched"] else first["parent"]["id"]
        assert rows[1]["model_version"]["id"] == expect
        assert p.stats()["images"]["done"] == 4
    for name in ("report.json", "report.md", "report.png"):
        assert (tmp_path / "sim" / name).is_file()
    assert json.loads((tmp_path / "sim" / "report.json").read_text())["rounds"] == rows
    assert "| round |" in (tmp_path / "sim" / "report.md").read_text()
    with pytest.raises(ValueError, match="holds a simulation"):
        run_simulation(config)


# ----------------------------------------------------------------------------- CLI


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="segany engine")
    engine_simulate.register(parser.add_subparsers(dest="action"))
    args = parser.parse_args(["simulate", *argv])
    return args.func(args)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rounds", "0"], "--rounds must be >= 1"),
        (["--click-budget", "0"], "--click-budget must be >= 1"),
        (["--iou-target", "1.5"], r"--iou-target must be in \(0, 1\]"),
        (["--iou-target", "0"], r"--iou-target must be in \(0, 1\]"),
        (["--images-per-round", "0"], "--images-per-round must be >= 1"),
        (["--steps", "-1"], "--steps must be >= 0"),
        (["--seconds-per-click", "-2"], "--seconds-per-click must be >= 0"),
        (["--brush-seconds", "-1"], "--brush-seconds must be >= 0"),
        (["--weak-keep", "1"], r"--weak-keep must be in \[0, 1\)"),
        (["--rounds", "3", "--images-per-round", "2"], "has 4 images"),
    ],
)
def test_cli_bad_arguments(tmp_path, extra, message):
    with pytest.raises(UsageError, match=message) as info:
        run_cli("--data", "procedural:4", "--out", str(tmp_path / "o"), *extra)
    assert info.value.exit_code == EXIT_USAGE == 2


def test_cli_bad_data_and_out(tmp_path):
    with pytest.raises(UsageError, match="procedural"):
        run_cli("--data", "procedural:x", "--out", str(tmp_path / "o"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(UsageError, match="not an empty folder"):
        run_cli("--data", "procedural:4", "--out", str(tmp_path / "full"))


def test_round_kinds_hooks(tmp_path):
    data = {"type": "procedural", "length": 2, "seed": 1, "height": 32, "width": 32}
    config = SimulationConfig(
        data=data, out=tmp_path / "a", rounds=1, images_per_round=2, steps=0,
        round_kinds=("prefill",),
    )  # fmt: skip
    seen = []

    def prefill(ctx):
        seen.append((ctx.number, ctx.kind, len(ctx.images), ctx.client.get("/api/me").json()))
        return []

    report = run_simulation(config, round_hooks={"prefill": prefill})
    assert seen == [(1, "prefill", 2, {"annotator": "sim-r01", "admin": False})]
    (row,) = report["rounds"]
    assert row["stage"] == 2 and row["masks"] == 0 and "retrain" not in row
    with pytest.raises(ValueError, match="unknown round kinds"):
        run_simulation(
            SimulationConfig(data=data, out=tmp_path / "b", round_kinds=("x",), rounds=1)
        )


def test_schedule_parser_and_cli_schedule_errors(tmp_path):
    assert parse_schedule("manual:3,prefill:1,auto:1") == (
        "manual", "manual", "manual", "prefill", "auto",
    )  # fmt: skip
    assert parse_schedule(" manual : 2 , auto ") == ("manual", "manual", "auto")
    for bad, message in [
        ("", "empty"),
        ("manual:3,stage2:1", "'stage2:1': unknown round kind"),
        ("manual:0", "count must be an integer >= 1"),
        ("manual:x", "count must be an integer >= 1"),
        ("manual:3,", "'': unknown round kind"),
    ]:
        with pytest.raises(ValueError, match=message) as info:
            parse_schedule(bad)
        assert "KIND:N" in str(info.value)
    out = str(tmp_path / "o")
    with pytest.raises(UsageError, match="--schedule: .*unknown round kind"):
        run_cli("--data", "procedural:4", "--out", out, "--schedule", "manual:1,semi:1")
    with pytest.raises(UsageError, match="not both"):
        run_cli("--data", "procedural:4", "--out", out, "--schedule", "auto", "--rounds", "1")
    with pytest.raises(UsageError, match="has 4 images"):  # 5 rounds x 1 image
        run_cli(
            "--data", "procedural:4", "--out", out, "--schedule", "manual:3,prefill,auto",
            "--images-per-round", "1",
        )  # fmt: skip
    with pytest.raises(ValueError, match="prefill method"):
        check_config(SimulationConfig(data="procedural:4", out=tmp_path, prefill_method="x"))


def _best_ious(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``(N, K)`` IoU of every stored mask with every non-empty true mask, one pair at a
    time (not the code under test's matrix)."""
    truth = [t for t in truth if t.any()]
    return np.array([[float(mask_iou(p, t)) for t in truth] for p in pred]).reshape(
        len(pred), len(truth)
    )


def test_prefill_and_auto_rounds_recompute_from_the_store(tmp_path):
    from segany.data.datasets import open_dataset

    config_file = tmp_path / "fast.toml"
    config_file.write_text(FAST_CONFIG)
    data = {"type": "procedural", "length": 6, "seed": 2, "height": 64, "width": 64}
    config = SimulationConfig(
        data=data, out=tmp_path / "sim", rounds=3, images_per_round=2, click_budget=3,
        masks_per_image=2, steps=1, retrain_config=str(config_file), eval_masks_per_image=1,
        holdout=0.3, round_kinds=("manual", "prefill", "auto"), prefill_method="auto",
        prefill_min_score=0.5, points_per_side=8, device="cpu",
    )  # fmt: skip
    report = run_simulation(config)
    manual, pre, auto = report["rounds"]
    assert [r["stage"] for r in report["rounds"]] == [1, 2, 3]
    # a retrain follows manual and prefill rounds, not auto rounds
    assert "retrain" in manual and "retrain" in pre and "retrain" not in auto
    dataset = open_dataset(data)
    lines = [json.loads(x) for x in (tmp_path / "sim" / "masks.jsonl").read_text().splitlines()]
    reviews = [x for x in lines if x.get("review")]
    with Project.open(tmp_path / "sim" / "project") as p:
        stats = p.stats()
        # stage 2: proposals stored, every one reviewed by the round's annotator
        assert pre["prefill"]["proposals"] > 0
        assert stats["prefill"]["proposals"] == pre["prefill"]["proposals"] == len(reviews)
        assert stats["prefill"]["pending"] == 0
        accepts = [e for e in p.list_events(kind="accept_prefill") if e.annotator == "sim-r02"]
        rejects = [e for e in p.list_events(kind="reject_prefill") if e.annotator == "sim-r02"]
        assert len(accepts) == pre["prefill"]["accepted"] == stats["prefill"]["accepted"]
        assert len(rejects) == pre["prefill"]["rejected"] == stats["prefill"]["rejected"]
        assert len(accepts) + len(rejects) == pre["prefill"]["proposals"]
        assert sum(e.elapsed_ms for e in accepts + rejects) == pytest.approx(
            1000 * pre["prefill"]["review_seconds"]
        )
        # the masks made by clicks: the annotator's prompt and accept events
        n_prompts = sum(e.annotator == "sim-r02" for e in p.list_events(kind="prompt"))
        clicked = [e for e in p.list_events(kind="accept") if e.annotator == "sim-r02"]
        assert pre["clicks"] == n_prompts and pre["clicked_masks"] == len(clicked)
        assert all(e.stage == 2 for e in clicked)
        if clicked:
            assert pre["clicks_per_mask"] == pytest.approx(n_prompts / len(clicked))
            assert pre["event_log"]["clicks_per_mask"] == pytest.approx(pre["clicks_per_mask"])
            assert pre["seconds_per_mask"] == pytest.approx(pre["event_log"]["seconds_per_mask"])
        assert pre["masks"] == pre["clicked_masks"] + pre["prefill"]["accepted"]
        with_prefill = stats["prefill"]["with_prefill"]
        assert with_prefill["images"] == 2
        assert pre["masks_per_image"] == pytest.approx(with_prefill["masks_per_image"])
        # an accepted proposal matches a true mask at the target; it keeps source prefill
        pre_images = dict(pre["image_ids"])
        for e in accepts:
            m = p.get_mask(e.mask_id)
            assert m.source == "prefill" and m.annotator == "sim-r02"
            truth = np.asarray(dataset[pre_images[m.image_id]].masks, bool)
            best = _best_ious(decode_coco_rle(m.segmentation)[None], truth).max()
            assert best >= config.iou_target
        # stage 3: automatic masks stored as source auto; recall and precision recomputed
        true_n = covered = covered_t = auto_n = precise = 0
        for image_id, index in auto["image_ids"]:
            stored = [m for m in p.list_masks(image_id) if m.source == "auto"]
            assert all(m.stage == 3 and m.annotator is None for m in stored)
            assert p.get_image(image_id).status == "done"
            truth = np.asarray(dataset[index].masks, bool)
            ious = _best_ious(np.array([decode_coco_rle(m.segmentation) for m in stored]), truth)
            true_n += ious.shape[1]
            auto_n += ious.shape[0]
            if ious.shape[0]:
                covered += int((ious.max(axis=0) >= 0.5).sum())
                covered_t += int((ious.max(axis=0) >= config.iou_target).sum())
                precise += int((ious.max(axis=1) >= 0.5).sum())
        assert auto_n == auto["masks"] > 0 and auto["auto"]["masks_added"] == auto_n
        assert auto["auto"]["recall_50"] == pytest.approx(covered / true_n)
        assert auto["auto"]["recall_target"] == pytest.approx(covered_t / true_n)
        assert auto["auto"]["precision"] == pytest.approx(precise / auto_n)
        assert auto["clicks"] == 0 and auto["clicks_per_mask"] is None
    table = (tmp_path / "sim" / "report.md").read_text()
    assert "| stage |" in table and "auto precision" in table


def test_weak_model_has_a_new_decoder_and_the_same_encoder(tmp_path):
    from safetensors.torch import load_file

    from segany.build import bundled_model_path, load_model
    from segany.engine.simulate import make_weak_model

    path = make_weak_model(tmp_path / "weak", steps=0, seed=3)
    weak, base = load_file(str(path)), load_file(str(bundled_model_path()))
    assert weak.keys() == base.keys()
    enc = [k for k in base if k.startswith("image_encoder.")]
    dec = [k for k in base if k.startswith("mask_decoder.") and k.endswith(".weight")]
    assert all(np.array_equal(weak[k].float().numpy(), base[k].float().numpy()) for k in enc)
    assert any(not np.allclose(weak[k].float().numpy(), base[k].float().numpy()) for k in dec)
    load_model(str(path), device="cpu")  # a loadable model
    with pytest.raises(ValueError, match="weak steps"):
        make_weak_model(tmp_path / "w2", steps=-1)
    with pytest.raises(ValueError, match="weak keep"):
        make_weak_model(tmp_path / "w3", keep=1.0)
    # keep: the base decoder's share of each weight, the rest random (same seed)
    half = load_file(str(make_weak_model(tmp_path / "half", keep=0.5, seed=3)))
    for k in dec:
        blend = 0.5 * weak[k].float().numpy() + 0.5 * base[k].float().numpy()
        assert np.allclose(half[k].float().numpy(), blend, atol=1e-6)
