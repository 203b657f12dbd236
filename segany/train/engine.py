"""One training step of SAM: encode the images once, then simulate interactive prompting.

Per mask, ``rounds`` (11) rounds: a first prompt (a uniform foreground point or a noisy box),
``point_rounds`` (8) rounds that each add a point sampled from the previous prediction's error
region, and the remaining (2) rounds that add no point; every round after the first feeds the
previous low-res logits back as the mask prompt. A single point asks for the three
ambiguity-aware masks (the min-loss one is trained; the one with the highest predicted IoU is
passed on to the next round, as in the paper, unless ``next_mask = "min_loss"``); more than one
prompt uses the single-mask token. Every round's loss counts (mean over rounds).

With ``text_prompts`` (the paper's App. D.5), a mask that has a text embedding in the batch
starts, with probability ``text_probability``, from that embedding alone instead of a point or
box (with ``text_point_probability``, some of them with a uniform foreground point as well);
it is decoded like a single point (three masks) and keeps its text token in every later round,
beside the corrective clicks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling import Sam
from . import clicks
from .config import TrainConfig
from .losses import sam_loss

#: What :meth:`InteractiveSam.forward` returns (same keys on every process, for all-reduce).
STAT_KEYS = ("loss", "focal", "dice", "iou_mse", "iou_first", "iou_last", "num_masks")
_LOSS_TERMS = ("focal", "dice", "iou_mse")


@dataclass(frozen=True)
class _StepInputs:
    """What every round of one step reads (N masks on B images, input frame ``S x S``).

    Attributes:
        emb: ``(B, C, He, We)`` float32 image embeddings.
        pe: ``(1, C, He, We)`` dense positional encoding of the embedding grid.
        targets: ``(N, S, S)`` bool ground-truth masks.
        valid: ``(N, S, S)`` bool unpadded area of each mask's image (where clicks may land).
        index: ``(N,)`` int64 image of each mask.
        skip: rounds (1-based after the first prompt) that add no click.
        gen: the step's prompt generator.
        scale: model input size / batch input size (1 except under progressive resizing).
    """

    emb: torch.Tensor
    pe: torch.Tensor
    targets: torch.Tensor
    valid: torch.Tensor
    index: torch.Tensor
    skip: set[int]
    gen: torch.Generator
    scale: float


@dataclass
class _PromptGroup:
    """The masks of a step whose first prompt is of one kind (points, boxes or text): their
    prompts so far and what their last round produced, updated round after round (``n`` masks,
    input frame ``S x S``).

    Attributes:
        rows: ``(n,)`` int64 rows of the group's masks among the step's masks.
        is_box: whether the first prompt is a box.
        box: ``(n, 4)`` float XYXY noisy boxes (box groups), else None.
        text: ``(n, D)`` float32 text embeddings (text groups), else None.
        points: ``(n, k, 2)`` float (x, y) and ``(n, k)`` int64 labels of the ``k`` points so
            far, or None (a box or text group before its first click).
        logits: ``(n, 1, h, w)`` low-res logits of the mask passed on (detached, see
            ``next_mask``): the next round's mask prompt. None before the first round.
        pred: ``(n, S, S)`` bool, that mask binarized in the input frame: the region the next
            click corrects. None before the first round.
        losses: :func:`~segany.train.losses.sam_loss`'s dict of the last round.
        iou: ``(n,)`` true IoU of the mask passed on in the last round.
    """

    rows: torch.Tensor
    is_box: bool
    box: torch.Tensor | None = None
    text: torch.Tensor | None = None
    points: tuple[torch.Tensor, torch.Tensor] | None = None
    logits: torch.Tensor | None = None
    pred: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] | None = None
    iou: torch.Tensor | None = None


class InteractiveSam(nn.Module):
    """Wraps a :class:`~segany.modeling.Sam` so that one ``forward`` is one training step's
    loss (the unit DistributedDataParallel wraps). State dict: the wrapped model's, under
    ``sam.``."""

    def __init__(self, sam: Sam, config: TrainConfig) -> None:
        super().__init__()
        if config.small_input_steps > 0:
            full = sam.image_encoder.img_size
            patch = sam.image_encoder.patch_embed.proj.kernel_size[0]
            if config.small_input_size % patch or config.small_input_size > full:
                raise ValueError(
                    f"small_input_size must be a multiple of the patch size {patch} and at most "
                    f"the model's img_size {full}, got {config.small_input_size}"
                )
        self.sam = sam
        self.config = config

    def forward(
        self, batch: dict[str, torch.Tensor], seed: int, rounds: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Loss for one batch (see :func:`segany.train.data.collate`) with prompts drawn from a
        generator seeded by ``seed``; ``rounds`` overrides ``config.rounds`` (1 = first prompt
        only). Returns ``loss`` (scalar with gradient) and detached
        logging scalars: ``focal``, ``dice``, ``iou_mse``, ``iou_first`` / ``iou_last`` (mean
        true IoU after the first and the last round) and ``num_masks``."""
        cfg = self.config
        n_rounds = cfg.rounds if rounds is None else rounds
        if not 1 <= n_rounds <= cfg.rounds:
            raise ValueError(f"rounds must be in [1, {cfg.rounds}], got {rounds}")
        sam = self.sam
        dev = sam.device
        gen = torch.Generator(device=dev).manual_seed(seed)
        images = batch["images"].to(dev)
        targets = batch["targets"].to(dev)
        index = batch["image_index"].to(dev)
        valid_img = batch["valid"].to(dev)
        n = targets.shape[0]
        emb = sam.image_encoder(images)
        if n == 0:  # nothing to supervise: a zero loss that still touches every parameter
            zero = emb.sum() * 0 + sum(p.sum() * 0 for p in self.parameters() if p.requires_grad)
            return {"loss": zero, **{k: torch.tensor(0.0) for k in STAT_KEYS[1:]}}
        # Prompts live in the batch's input frame; a smaller frame than the model's
        # (progressive resizing) is mapped onto the model's frame pixel-centre to pixel-centre.
        scale = sam.image_encoder.img_size / images.shape[-1]
        emb = emb.float()
        use_box = torch.rand(n, generator=gen, device=dev) < cfg.box_probability
        use_text = text_point = None
        if cfg.text_prompts:
            if "text" not in batch:
                raise ValueError("text_prompts needs batches with 'text' and 'has_text'")
            has = batch["has_text"].to(dev)
            use_text = has & (torch.rand(n, generator=gen, device=dev) < cfg.text_probability)
            if cfg.text_point_probability > 0:
                draw = torch.rand(n, generator=gen, device=dev) < cfg.text_point_probability
                text_point = use_text & draw
        skip = clicks.no_point_rounds(cfg.rounds, cfg.point_rounds, gen) if n_rounds > 1 else set()
        graded = clicks.gradient_rounds(n_rounds, cfg.grad_rounds, gen)
        step = _StepInputs(
            emb=emb,
            pe=sam.prompt_encoder.pe_layer(tuple(emb.shape[-2:])).unsqueeze(0),
            targets=targets,
            valid=valid_img[index],
            index=index,
            skip=skip,
            gen=gen,
            scale=scale,
        )
        groups = self._first_prompts(use_box, step)
        if use_text is not None:
            text = batch["text"].to(dev).float()
            groups = self._with_text(groups, use_text, text, text_point, step)

        loss: torch.Tensor | float = 0.0
        terms = dict.fromkeys(_LOSS_TERMS, 0.0)
        iou_first = iou_last = None
        for r in range(n_rounds):
            round_iou = torch.zeros(n, device=dev)
            with torch.set_grad_enabled(torch.is_grad_enabled() and r in graded):
                for g in groups:
                    self._round(r, g, step)
            for g in groups:
                round_iou[g.rows] = g.iou
                if r in graded:
                    share = len(g.rows) / n / len(graded)
                    loss = loss + g.losses["loss"] * share
                    for k in _LOSS_TERMS:
                        terms[k] += float(g.losses[k]) * share
            if r == 0:
                iou_first = round_iou.mean()
            iou_last = round_iou.mean()
        return {
            "loss": loss,
            **{k: torch.tensor(v) for k, v in terms.items()},
            "iou_first": iou_first.detach().cpu(),
            "iou_last": iou_last.detach().cpu(),
            "num_masks": torch.tensor(float(n)),
        }

    def _first_prompts(self, use_box: torch.Tensor, step: _StepInputs) -> list[_PromptGroup]:
        """The point group (a uniform foreground point in each mask), then the box group (a
        noisy box around each), each only if it has masks."""
        cfg = self.config
        groups = []
        for is_box in (False, True):
            rows = torch.nonzero(use_box == is_box)[:, 0]
            if len(rows) == 0:
                continue
            g = _PromptGroup(rows=rows, is_box=is_box)
            t = step.targets[rows]
            if is_box:
                g.box = clicks.noisy_boxes(
                    t,
                    noise=cfg.box_noise,
                    max_noise_px=cfg.box_noise_max_px / step.scale,
                    frame=None,
                    generator=step.gen,
                )
            else:
                g.points = clicks.sample_points_in_masks(t, step.gen)
            groups.append(g)
        return groups

    @staticmethod
    def _with_text(
        groups: list[_PromptGroup],
        use_text: torch.Tensor,
        text: torch.Tensor,
        text_point: torch.Tensor | None,
        step: _StepInputs,
    ) -> list[_PromptGroup]:
        """Move the masks in ``use_text`` out of the point and box groups into a text group
        whose first prompt is their ``(N, D)`` embedding row alone, and those also in
        ``text_point`` into one whose first prompt is that row and a uniform foreground
        point."""
        if not bool(use_text.any()):
            return groups
        out = []
        for g in groups:
            keep = ~use_text[g.rows]
            if bool(keep.all()):
                out.append(g)
                continue
            if not bool(keep.any()):
                continue
            g.rows = g.rows[keep]
            if g.box is not None:
                g.box = g.box[keep]
            if g.points is not None:
                g.points = (g.points[0][keep], g.points[1][keep])
            out.append(g)
        alone = use_text if text_point is None else use_text & ~text_point
        rows = torch.nonzero(alone)[:, 0]
        if len(rows):
            out.append(_PromptGroup(rows=rows, is_box=False, text=text[rows]))
        if text_point is not None and bool(text_point.any()):
            rows = torch.nonzero(text_point)[:, 0]
            g = _PromptGroup(rows=rows, is_box=False, text=text[rows])
            g.points = clicks.sample_points_in_masks(step.targets[rows], step.gen)
            out.append(g)
        return out

    def _round(self, r: int, g: _PromptGroup, step: _StepInputs) -> None:
        """Round ``r`` of group ``g``: add its click (rounds after the first that are not in
        ``step.skip``), decode with the previous low-res logits as mask prompt, and store the
        round's loss terms, the true IoU of the mask passed on, its logits and its binary mask
        in ``g``."""
        cfg, sam = self.config, self.sam
        s = step.targets.shape[-1]
        t = step.targets[g.rows]
        v = step.valid[g.rows]
        if r > 0 and r not in step.skip:
            p, lab = clicks.sample_error_points(g.pred, t, v, step.gen)
            if g.points is None:
                g.points = (p, lab)
            else:
                g.points = (torch.cat([g.points[0], p], 1), torch.cat([g.points[1], lab], 1))
        mask_in = g.logits if r > 0 else None
        points, box = g.points, g.box
        if step.scale != 1:
            if points is not None:
                points = (clicks.rescale_coords(points[0], step.scale), points[1])
            if box is not None:
                box = clicks.rescale_coords(box, step.scale)
        emb = step.emb
        if g.text is None:
            sparse, dense = sam.prompt_encoder(points, box, mask_in)
        else:
            sparse, dense = sam.prompt_encoder(points, box, mask_in, text=g.text)
        if dense.shape[-2:] != emb.shape[-2:]:  # the no-mask embedding is constant: crop it
            dense = dense[..., : emb.shape[-2], : emb.shape[-1]]
        multimask = r == 0 and not g.is_box
        low, iou_pred = sam.mask_decoder(
            image_embeddings=emb[step.index[g.rows]],
            image_pe=step.pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        low = low.float()
        if cfg.loss_resolution == "input":
            logits = F.interpolate(low, (s, s), mode="bilinear", align_corners=False)
            tgt, val = t[:, None], v[:, None]
        else:
            logits = low
            size = low.shape[-2:]
            tgt = F.interpolate(t[:, None].float(), size, mode="area") > 0.5
            val = F.interpolate(v[:, None].float(), size, mode="area") > 0.5
        out = sam_loss(
            logits,
            iou_pred,
            tgt,
            val,
            focal_weight=cfg.focal_weight,
            dice_weight=cfg.dice_weight,
            iou_weight=cfg.iou_weight,
            focal_alpha=cfg.focal_alpha,
            focal_gamma=cfg.focal_gamma,
        )
        sel = torch.arange(len(g.rows), device=step.targets.device)
        pick = out["selected"]
        if multimask and cfg.next_mask == "predicted":  # the paper: most confident mask
            pick = iou_pred.detach().argmax(dim=1)
        g.losses = out
        g.iou = out["true_iou"][sel, pick]
        g.logits = low[sel, pick][:, None].detach()
        up = F.interpolate(g.logits, (s, s), mode="bilinear", align_corners=False)
        g.pred = up[:, 0] > sam.mask_threshold
