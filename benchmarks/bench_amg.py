"""Automatic mask generation benchmark: official ``segment-anything`` vs segany.

Same vit_b weights and the same 1024x768 image for every run, each in its own process. Reports
total seconds, seconds in the image encoder and the rest, the number of masks, and whether
segany's fp32 mask set equals the official one (one-to-one, mask IoU >= 0.99, scores 1e-4).

The weights are random unless ``--weights`` gives a checkpoint. Random weights almost never pass
the default ``pred_iou_thresh`` (0.88) nor the stability filter, which would make the benchmark
measure an empty workload; so the hypernetwork outputs are centred and scaled (decisive logits)
and the IoU head's output bias is shifted until about ``--pass-rate`` (default 40 %) of the
(point, mask) candidates pass it, as with a trained model. The same calibrated weights go to
both implementations. Run: ``python benchmarks/bench_amg.py [--crop-n-layers 1]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, add_worker_arguments, run_worker, send_result, write_results


def worker(args: argparse.Namespace) -> dict:
    import torch

    from segany.data.sample import sample_image
    from segany.precision import model_precision

    torch.manual_seed(0)
    image, _ = sample_image(1024, 768)
    knobs = dict(crop_n_layers=args.crop_n_layers)
    if args.impl == "official":
        from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

        model = sam_model_registry["vit_b"](checkpoint=args.weights).eval()
        gen = SamAutomaticMaskGenerator(model, **knobs)
    else:
        import segany
        from segany.amg import SamAutomaticMaskGenerator

        model = segany.build_sam("vit_b", args.weights, precision=args.precision, device="cpu")
        gen = SamAutomaticMaskGenerator(model, **knobs)
    encoder_s = []
    set_image = gen.predictor.set_image

    def timed_set_image(*a, **k):
        t = time.perf_counter()
        set_image(*a, **k)
        encoder_s.append(time.perf_counter() - t)

    gen.predictor.set_image = timed_set_image
    t = time.perf_counter()
    records = gen.generate(image)
    total = time.perf_counter() - t
    from pycocotools import mask as mask_utils

    rles = [
        mask_utils.encode(np.asfortranarray(r["segmentation"].astype(np.uint8))) for r in records
    ]
    for r in rles:
        r["counts"] = r["counts"].decode()
    out = {
        "impl": args.impl,
        "precision": args.precision if args.impl == "segany" else "fp32",
        "runs_in": model_precision(model) if args.impl == "segany" else "fp32",
        "total_s": total,
        "encoder_s": sum(encoder_s),
        "masks": len(records),
        "records": [
            {"rle": rle, "predicted_iou": r["predicted_iou"], "bbox": r["bbox"]}
            for rle, r in zip(rles, records, strict=True)
        ],
    }
    return out


def calibrated_random_weights(pass_rate: float) -> dict:
    """Random vit_b weights whose IoU head passes ``pass_rate`` of the grid candidates."""
    import torch

    import segany
    from segany.data.sample import sample_image
    from segany.utils.amg import build_point_grid

    torch.manual_seed(0)
    model = segany.build_sam_model(segany.get_config("vit_b")).eval()
    sd = model.state_dict()
    for k in sd:  # decisive, image-dependent logits (as tests/conftest.py make_amg_pair)
        if k.startswith("mask_decoder.output_hypernetworks_mlps.") and ".layers.2." in k:
            sd[k] = (sd[k] - sd[k].mean(0, keepdim=True)) * 1000.0
    model.load_state_dict(sd)
    predictor = segany.SamPredictor(model)
    image, _ = sample_image(1024, 768)
    predictor.set_image(image)
    points = build_point_grid(16) * np.array([[1024, 768]])
    coords = torch.as_tensor(predictor.transform.apply_coords(points, (768, 1024))).float()
    _, iou = predictor.predict_low_res(coords[:, None], torch.ones(len(points), 1, dtype=torch.int))
    shift = 0.88 - float(torch.quantile(iou.flatten(), 1.0 - pass_rate))
    sd = model.state_dict()
    sd["mask_decoder.iou_prediction_head.layers.2.bias"] += shift
    print(
        f"calibrated IoU head bias by {shift:+.3f} for a {pass_rate:.0%} pass rate", file=sys.stderr
    )
    return sd


def same_masks(a: list[dict], b: list[dict]) -> bool:
    from pycocotools import mask as mask_utils

    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        iou = mask_utils.iou([x["rle"]], [y["rle"]], [0])[0][0] if x["rle"] else 1.0
        if iou < 0.99 or abs(x["predicted_iou"] - y["predicted_iou"]) > 1e-4:
            return False
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--crop-n-layers", type=int, default=0)
    p.add_argument("--weights", help="checkpoint (default: random vit_b weights)")
    p.add_argument("--skip-official", action="store_true")
    p.add_argument(
        "--pass-rate",
        type=float,
        default=0.4,
        help="fraction of candidates above pred_iou_thresh with random weights",
    )
    p.add_argument("--out", default=str(RESULTS))
    add_worker_arguments(p, impl="segany", precision="auto")
    args = p.parse_args()
    if args.worker:
        send_result(worker(args))
        return
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if weights is None:
            weights = str(Path(tmp) / "random_vit_b.pth")
            torch.save(calibrated_random_weights(args.pass_rate), weights)
        runs = [] if args.skip_official else [("official", "fp32")]
        runs += [("segany", "fp32"), ("segany", "auto"), ("segany", "int8")]
        results = []
        for impl, precision in runs:
            options = [
                *("--impl", impl, "--precision", precision, "--weights", weights),
                *("--crop-n-layers", str(args.crop_n_layers)),
            ]
            results.append(run_worker(__file__, options, f"{impl} {precision}"))
    base = None if args.skip_official else results[0]
    print(
        f"\nautomatic masks, vit_b, 1024x768 image, crop_n_layers={args.crop_n_layers}, "
        f"default knobs, {'calibrated random' if args.weights is None else args.weights} weights\n"
    )
    print(
        "| implementation | precision | total (s) | speed-up | encoder (s) | rest (s) "
        "| rest speed-up | masks | same masks as official |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        rest = r["total_s"] - r["encoder_s"]
        if base:
            b_rest = base["total_s"] - base["encoder_s"]
            sp = f"{base['total_s'] / r['total_s']:.1f}x"
            rsp = f"{b_rest / rest:.1f}x"
            same = (
                "—" if r is base else ("yes" if same_masks(base["records"], r["records"]) else "no")
            )
        else:
            sp = rsp = same = ""
        print(
            f"| {r['impl']} | {r['precision']} ({r['runs_in']}) | {r['total_s']:.1f} | {sp} | {r['encoder_s']:.1f} "
            f"| {rest:.1f} | {rsp} | {r['masks']} | {same} |"
        )
    for r in results:
        r.pop("records")
    write_results(
        args.out,
        f"amg_vit_b_crops{args.crop_n_layers}",
        {"crop_n_layers": args.crop_n_layers, "results": results},
    )


if __name__ == "__main__":
    main()
