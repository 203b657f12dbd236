"""One simulated annotator that talks HTTP to the annotation server, with a hidden truth.

For each target mask it clicks as the interactive protocol of :mod:`segany.eval.interactive`
does (its :func:`~segany.eval.interactive.first_click` and
:func:`~segany.eval.interactive.next_click`, not a second implementation):

* click 1: foreground, at the pixel of the true mask farthest from its boundary, sent with
  ``multimask: true``; the mask of highest ``predicted_iou`` is kept;
* click k+1: at the centre (the point farthest from the boundary) of the larger error region
  of the kept mask: foreground in a false negative, background in a false positive; sent with
  every click so far, ``multimask: false`` and the previous prediction's ``mask_input`` token.

It stops when the IoU of the kept mask with the truth (:func:`segany.masks.mask_iou`, both
``(H, W)`` bool at the image's resolution) reaches ``iou_target``, when the click budget is
spent (standing for the SAM paper's rule of moving on after 30 s), or when the mask equals the
truth; then it accepts the mask. With ``brush_seconds`` set, a mask that missed the target is
first corrected by hand, as the paper's annotators did with brush and eraser: the stored mask is
the truth and the brush time is added; then it accepts the mask (``POST /api/images/{id}/masks`` with ``elapsed_ms`` = the
simulated time, clicks x ``seconds_per_click`` plus the measured server latency, and its
``prompts``). A kept mask that is empty cannot be stored: it is discarded (a ``discard``
event). Every click is a ``POST /api/images/{id}/predict``, so the server's ``prompt`` and
``accept`` events hold everything: :meth:`Project.stats` recomputes clicks and seconds per
mask. Coordinates are ``(x, y)`` pixels of the original image.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ...eval.interactive import first_click, next_click
from ...formats import decode_coco_rle, encode_coco_rle
from ...masks import mask_iou

__all__ = ["MaskOutcome", "SimulatedAnnotator", "SimulationError"]


class SimulationError(RuntimeError):
    """The server answered a simulated annotator's request with an error."""


@dataclass(frozen=True)
class MaskOutcome:
    """One target mask annotated.

    Attributes:
        image_id: the server's image id.
        target: index of the true mask in the image's ``(K, H, W)`` truth.
        clicks: predict requests sent (clicks), ``1 <= clicks <= click_budget``.
        iou: IoU of the final (accepted or discarded) mask with the truth.
        reached: ``iou >= iou_target``.
        accepted: the mask was stored (False: it was empty and discarded).
        brushed: the mask missed the target and was corrected by hand (the truth stored).
        mask_id: the stored mask's id (None when discarded).
        latency_s: measured wall time of the predict requests, seconds.
        elapsed_ms: the simulated time sent with the accept (clicks x seconds per click plus
            the latency), milliseconds.
        points: ``[[x, y], ...]`` the clicks; ``labels``: ``[1 | 0, ...]``.
        ious: the IoU after each click.
    """

    image_id: int
    target: int
    clicks: int
    iou: float
    reached: bool
    accepted: bool
    brushed: bool
    mask_id: int | None
    latency_s: float
    elapsed_ms: int
    points: list[list[int]]
    labels: list[int]
    ious: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SimulatedAnnotator:
    """A simulated annotator on an HTTP client of the annotation server.

    Args:
        client: an ``httpx.Client`` (or ``fastapi.testclient.TestClient``) whose requests carry
            the annotator's token (``Authorization: Bearer TOKEN``); paths are relative.
        click_budget: the most clicks per mask (>= 1).
        iou_target: accept as soon as the IoU with the truth reaches this (in (0, 1]).
        seconds_per_click: simulated time per click (>= 0).
        stage: the data-engine stage the masks are accepted in (1 for these rounds).
        brush_seconds: None (masks are accepted as the model made them), or the simulated
            seconds of correcting by hand a mask that missed the target (the truth is stored).
    """

    def __init__(
        self,
        client: Any,
        *,
        click_budget: int = 20,
        iou_target: float = 0.9,
        seconds_per_click: float = 1.5,
        stage: int = 1,
        brush_seconds: float | None = None,
    ) -> None:
        check_protocol(click_budget, iou_target, seconds_per_click)
        if brush_seconds is not None and not (
            isinstance(brush_seconds, (int, float)) and brush_seconds >= 0
        ):
            raise ValueError(f"brush seconds must be >= 0 or None; got {brush_seconds!r}")
        self.brush_seconds = None if brush_seconds is None else float(brush_seconds)
        self.client = client
        self.click_budget = int(click_budget)
        self.iou_target = float(iou_target)
        self.seconds_per_click = float(seconds_per_click)
        self.stage = int(stage)

    @classmethod
    def for_round(cls, ctx: Any) -> SimulatedAnnotator:
        """The annotator of a round (a :class:`.context.RoundContext`): its client, the
        config's protocol and the stage of the round's kind."""
        from .context import ROUND_KINDS

        cfg = ctx.config
        return cls(
            ctx.client, click_budget=cfg.click_budget, iou_target=cfg.iou_target,
            seconds_per_click=cfg.seconds_per_click, stage=ROUND_KINDS[ctx.kind],
            brush_seconds=cfg.brush_seconds,
        )  # fmt: skip

    # ------------------------------------------------------------------ HTTP

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request as this annotator: the JSON answer (None for an empty one); raises
        SimulationError for an error status."""
        response = self.client.request(method, path, json=body)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            raise SimulationError(f"{method} {path} -> {response.status_code}: {detail}")
        return response.json() if response.content else None

    def _predict(
        self, image_id: int, points: list[list[int]], labels: list[int], token: str | None
    ) -> tuple[np.ndarray, str, float]:
        """One click: the kept ``(H, W)`` bool mask, its ``mask_input`` token and the
        request's wall time in seconds."""
        multimask = token is None
        body = {"points": points, "labels": labels, "multimask": multimask, "mask_input": token}
        t = time.perf_counter()
        out = self.call("POST", f"/api/images/{image_id}/predict", body)
        latency = time.perf_counter() - t
        scores = [m["predicted_iou"] for m in out["masks"]]
        best = out["masks"][int(np.argmax(scores))]
        return np.asarray(decode_coco_rle(best["segmentation"]), bool), best["mask_input"], latency

    # ------------------------------------------------------------------ annotation

    def annotate_mask(self, image_id: int, truth: np.ndarray, target: int = 0) -> MaskOutcome:
        """Click on one true mask ``truth (H, W)`` bool of a leased image until the target
        IoU or the budget, then accept (or discard an empty mask). Raises ValueError for an
        empty truth, SimulationError for a server error."""
        gt = np.asarray(truth, bool)
        x, y = first_click(gt)
        points: list[list[int]] = [[int(x), int(y)]]
        labels: list[int] = [1]
        token: str | None = None
        ious: list[float] = []
        latency = 0.0
        while True:
            pred, token, dt = self._predict(image_id, points, labels, token)
            latency += dt
            if pred.shape != gt.shape:
                raise SimulationError(
                    f"image {image_id}: the server's mask is {pred.shape}, the truth {gt.shape}"
                )
            ious.append(float(mask_iou(pred, gt)))
            if ious[-1] >= self.iou_target or len(points) >= self.click_budget:
                break
            click = next_click(gt, pred)
            if click is None:  # the mask equals the truth
                break
            points.append([int(click[0]), int(click[1])])
            labels.append(int(click[2]))
        clicks = len(points)
        seconds = clicks * self.seconds_per_click + latency
        brushed = ious[-1] < self.iou_target and self.brush_seconds is not None
        prompts: dict[str, Any] = {
            "points": points, "labels": labels, "protocol": "sam-interactive-points",
        }  # fmt: skip
        if brushed:
            pred = gt
            seconds += float(self.brush_seconds or 0.0)
            prompts["brushed"] = True
        elapsed_ms = int(round(seconds * 1000))
        mask_id = None
        if pred.any():
            stored = self.call(
                "POST",
                f"/api/images/{image_id}/masks",
                {
                    "segmentation": encode_coco_rle(pred),
                    "prompts": prompts,
                    "point_coords": points,
                    "source": "manual",
                    "stage": self.stage,
                    "elapsed_ms": elapsed_ms,
                },
            )
            mask_id = int(stored["id"])
        else:
            self.call(
                "POST",
                "/api/events",
                {"kind": "discard", "image_id": image_id, "stage": self.stage,
                 "elapsed_ms": elapsed_ms, "payload": prompts},
            )  # fmt: skip
        return MaskOutcome(
            image_id=int(image_id), target=int(target), clicks=clicks, iou=ious[-1],
            reached=ious[-1] >= self.iou_target, accepted=mask_id is not None, brushed=brushed,
            mask_id=mask_id,
            latency_s=latency, elapsed_ms=elapsed_ms, points=points, labels=labels, ious=ious,
        )  # fmt: skip

    def annotate_image(
        self, image_id: int, truth: np.ndarray, targets: Sequence[int] | None = None
    ) -> list[MaskOutcome]:
        """Lease the image, annotate its true masks ``truth (K, H, W)`` bool (``targets``:
        the indices to annotate, in this order; default every non-empty mask in index order),
        mark the image done. Returns one outcome per target."""
        masks = np.asarray(truth, bool)
        if masks.ndim != 3:
            raise ValueError(f"truth must be (K, H, W) masks; got shape {masks.shape}")
        order = target_order(masks) if targets is None else [int(k) for k in targets]
        self.call("POST", f"/api/images/{image_id}/lease")
        outcomes = [self.annotate_mask(image_id, masks[k], k) for k in order]
        self.call("POST", f"/api/images/{image_id}/status", {"status": "done"})
        return outcomes


def target_order(masks: np.ndarray, limit: int | None = None) -> list[int]:
    """The fixed order of the target masks of ``masks (K, H, W)``: the non-empty ones in index
    order, the first ``limit`` of them when given."""
    nonempty = [int(k) for k in np.flatnonzero(np.asarray(masks, bool).any(axis=(1, 2)))]
    return nonempty if limit is None else nonempty[:limit]


def check_protocol(click_budget: Any, iou_target: Any, seconds_per_click: Any) -> None:
    """ValueError unless ``click_budget`` is an integer >= 1, ``iou_target`` in (0, 1] and
    ``seconds_per_click`` >= 0."""
    if isinstance(click_budget, bool) or not isinstance(click_budget, (int, np.integer)):
        raise ValueError(f"click budget must be an integer >= 1; got {click_budget!r}")
    if click_budget < 1:
        raise ValueError(f"click budget must be an integer >= 1; got {click_budget}")
    if not isinstance(iou_target, (int, float)) or not 0 < iou_target <= 1:
        raise ValueError(f"IoU target must be in (0, 1]; got {iou_target!r}")
    if not isinstance(seconds_per_click, (int, float)) or not seconds_per_click >= 0:
        raise ValueError(f"seconds per click must be >= 0; got {seconds_per_click!r}")
