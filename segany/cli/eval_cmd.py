"""``segany eval DATA [DATA ...] [--clicks 1,2,3,5,9] [--out DIR]``: the SAM paper's interactive
point evaluation on one or several datasets (averaged), with NoC@85 and NoC@90. A bad DATA
spec or an unreadable image or annotation file is bad input (exit code 2)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import (
    EXIT_OK,
    CheckedSamples,
    add_model_args,
    attach_text_encoder,
    bad_input,
    check_out_dir,
    load_predictor,
    make_dir,
    positive_int,
    status,
)

#: Same as :data:`segany.eval.DEFAULT_CLICKS` (not imported: keeps ``segany --help`` free of
#: OpenCV and the evaluation code).
DEFAULT_CLICKS = (1, 2, 3, 5, 9)
OUTPUT_FILES = ("eval.json", "eval.md", "eval.png")


def parse_clicks(text: str) -> tuple[int, ...]:
    """``"1,2,3,5,9"`` -> ``(1, 2, 3, 5, 9)`` (positive integers, sorted, unique)."""
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid clicks {text!r}: expected positive integers separated by commas, "
            f"e.g. 1,2,3,5,9"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"invalid clicks {text!r}: expected positive integers separated by commas, "
            f"e.g. 1,2,3,5,9"
        )
    return tuple(sorted(set(values)))


def register(sub: Any) -> None:
    """Add ``segany eval`` to the subparsers ``sub``."""
    default = ",".join(str(k) for k in DEFAULT_CLICKS)
    p = sub.add_parser(
        "eval",
        help="interactive point evaluation (mIoU after 1, 2, 3, 5, 9 clicks)",
        description=(
            "Simulate a user clicking on every ground-truth mask of DATA (SAM paper protocol: "
            "first click farthest from the mask boundary, each next click in the largest "
            "error region) and report the mean IoU after each number of clicks, for the "
            "'top' track (mask of highest predicted IoU, then single-mask refinement with the "
            "previous logits) and the 'oracle' track (best of 3 masks against the ground "
            "truth). Prints a Markdown table; with --out also writes "
            + ", ".join(OUTPUT_FILES)
            + "."
        ),
    )
    p.add_argument(
        "data",
        metavar="DATA",
        nargs="+",
        help=(
            "an SA-1B folder (<stem>.jpg|png + <stem>.json), a COCO instances .json (images "
            "next to it or under images/), or procedural:N[:SEED] (N generated scenes); "
            "several DATA are evaluated one by one and averaged (each dataset weighs the same)"
        ),
    )
    p.add_argument(
        "--clicks",
        metavar="K,K,...",
        type=parse_clicks,
        default=DEFAULT_CLICKS,
        help=f"click counts to report; clicks run up to the largest (default: {default})",
    )
    p.add_argument(
        "--max-masks-per-image",
        metavar="N",
        type=positive_int,
        default=None,
        help="evaluate at most N masks per image, chosen reproducibly (default: all)",
    )
    p.add_argument(
        "--max-images",
        metavar="N",
        type=positive_int,
        default=None,
        help="evaluate only the first N images (default: all)",
    )
    p.add_argument(
        "--seed",
        metavar="S",
        type=int,
        default=0,
        help="seed of the per-image mask choice with --max-masks-per-image (default: 0)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="also write " + ", ".join(OUTPUT_FILES) + " into DIR (created if needed)",
    )
    p.add_argument(
        "--noc",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run 20 clicks to report NoC@85 and NoC@90 (clicks to reach that IoU, capped at "
        "20) beside the mIoU (default: on; --no-noc runs only up to the largest --clicks)",
    )
    p.add_argument(
        "--text",
        action="store_true",
        help=(
            "evaluate text prompts instead (captioned scenes, procedural-text:N[:SEED]): mIoU "
            "from text alone, text + 1 point, 1 point and the region-embedding upper bound, "
            "and text -> region retrieval, for seen and held-out attribute combinations"
        ),
    )
    p.add_argument(
        "--text-encoder",
        metavar="SPEC",
        default=None,
        help="text encoder for --text (default: the one shipped with the model)",
    )
    p.add_argument(
        "--figure",
        metavar="PNG",
        default=None,
        help="with --text: also draw the first scene with at least 3 captions, one panel per "
        "caption (up to 4) with its text-prompt mask, to PNG",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_args(p)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    """``segany eval``: print the mIoU table; with ``--out`` also write the result files."""
    from ..data.datasets import open_dataset
    from ..eval.interactive import evaluate_interactive

    out = Path(args.out) if args.out else None
    if out is not None:
        check_out_dir(out)
    datasets = []
    with bad_input():  # bad DATA fails before the model loads
        for spec in args.data:
            datasets.append(open_dataset(spec))
            status(f"dataset {spec}: {len(datasets[-1])} image(s)")
    predictor = load_predictor(args)
    if args.text:
        return _eval_text(args, predictor, datasets, out)
    results = []
    for spec, dataset in zip(args.data, datasets, strict=True):
        result = evaluate_interactive(
            predictor,
            CheckedSamples(dataset),
            clicks=args.clicks,
            max_masks_per_image=args.max_masks_per_image,
            max_images=args.max_images,
            seed=args.seed,
            progress=not args.quiet,
            noc=args.noc,
        )
        status(f"{spec}: {result.summary()}")
        results.append(result)
    settings = {
        "model": str(args.model),
        "precision": args.precision,
        "max_masks_per_image": args.max_masks_per_image,
        "max_images": args.max_images,
        "seed": args.seed,
    }
    if len(results) == 1:
        print(results[0].table())
        if out is not None:
            make_dir(out, "--out")
            results[0].write_json(out / "eval.json", extra={"data": str(args.data[0]), **settings})
            results[0].write_markdown(out / "eval.md")
            results[0].plot(out / "eval.png")
            status(f"wrote {', '.join(OUTPUT_FILES)} to {out}")
        return EXIT_OK
    _write_several(args.data, results, out, settings)
    return EXIT_OK


def _eval_text(
    args: argparse.Namespace, predictor: Any, datasets: list[Any], out: Path | None
) -> int:
    """``segany eval --text``: the text-prompt table of each dataset (and ``eval_text.json``)."""
    from ..eval.text import evaluate_text
    from ..io.files import write_json_atomic

    attach_text_encoder(predictor, args)
    if args.figure is not None:
        _text_figure(predictor, datasets[0], Path(args.figure))
    records = []
    for spec, dataset in zip(args.data, datasets, strict=True):
        with bad_input():
            result = evaluate_text(
                predictor,
                dataset,
                predictor.text_encoder,
                max_images=args.max_images,
                progress=not args.quiet,
            )
        print(f"{spec}\n\n{result.table()}\n")
        records.append({"data": str(spec), **result.to_dict()})
    if out is not None:
        make_dir(out, "--out")
        write_json_atomic(out / "eval_text.json", {"model": str(args.model), "results": records})
        status(f"wrote eval_text.json to {out}")
    return EXIT_OK


def _text_figure(predictor: Any, dataset: Any, path: Path) -> None:
    """``--figure``: the first scene of ``dataset`` with 3 or more captions, drawn by
    :func:`segany.eval.text.text_figure` with up to 4 of them."""
    from ..data.captions import caption_objects
    from ..eval.text import text_figure
    from ..viz import save_image_png

    with bad_input():
        if not callable(getattr(dataset, "scene", None)):
            raise ValueError("--figure needs a captioned dataset (procedural-text:N[:SEED])")
        for i in range(len(dataset)):
            scene = dataset.scene(i)
            caps = caption_objects(scene)
            if len(caps) >= 3:
                break
        else:
            raise ValueError("--figure: no scene of the dataset has 3 captions")
    save_image_png(path, text_figure(predictor, scene.image, [c.text for c in caps[:4]]))
    status(f"wrote the text figure of scene {i} to {path}")


def _write_several(
    names: list[str], results: list[Any], out: Path | None, settings: dict[str, Any]
) -> None:
    """Print (and with ``out`` write) the table of several datasets and their average."""
    from ..eval.interactive import average_results, datasets_table, plot_datasets
    from ..io.files import write_json_atomic, write_text_atomic

    table = datasets_table(names, results)
    print(table)
    if out is None:
        return
    make_dir(out, "--out")
    write_json_atomic(
        out / "eval.json",
        {
            "protocol": "sam-interactive-points",
            "datasets": [{"data": n, **r.to_dict()} for n, r in zip(names, results, strict=True)],
            "average": average_results(results),
            **settings,
        },
    )
    parts = [f"Interactive points on {len(results)} datasets (top track)\n\n{table}\n"]
    for name, r in zip(names, results, strict=True):
        parts.append(f"\n## {name}\n\n{r.summary()}\n\n{r.table()}\n")
    write_text_atomic(out / "eval.md", "".join(parts))
    plot_datasets(names, results, out / "eval.png")
    status(f"wrote {', '.join(OUTPUT_FILES)} to {out}")
