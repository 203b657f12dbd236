"""``segany zeroshot``: the SAM paper's zero-shot transfer tasks with their metrics.
``edges`` (:mod:`.zeroshot_edges`) is edge detection scored as BSDS500 does; ``proposals``
(:mod:`.zeroshot_proposals`) object proposals scored by mask AR@K; ``instances``
(:mod:`.zeroshot_instances`) instance segmentation from detector boxes scored by COCO mask AP.
Each writes OUT/results.json and OUT/results.md (see :mod:`segany.zeroshot`)."""

from __future__ import annotations

from typing import Any

from . import zeroshot_edges, zeroshot_instances, zeroshot_proposals


def register(sub: Any) -> None:
    """Add ``segany zeroshot`` (actions ``edges``, ``proposals``, ``instances``) to ``sub``."""
    p = sub.add_parser(
        "zeroshot",
        help="zero-shot transfer tasks of the SAM paper: edges, proposals, instances",
        description=(
            "The SAM paper's zero-shot transfer tasks (section 7), with the metrics computed "
            "exactly: edge detection (BSDS500 ODS/OIS/AP/R50), object proposals (mask AR@K) "
            "and instance segmentation from detector boxes (COCO mask AP)."
        ),
    )
    actions = p.add_subparsers(
        dest="action",
        metavar="ACTION",
        required=True,
        help="edges: edge maps and BSDS scores; proposals: mask proposals and AR@K; "
        "instances: masks from detector boxes and mask AP",
    )
    zeroshot_edges.register(actions)
    zeroshot_proposals.register(actions)
    zeroshot_instances.register(actions)
