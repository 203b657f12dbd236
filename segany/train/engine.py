"""One training step of SAM: encode the images once, then simulate interactive prompting.

Per mask, ``rounds`` (11) rounds: a first prompt (a uniform foreground point or a noisy box),
``point_rounds`` (8) rounds that each add a point sampled from the previous prediction's error
region, and the remaining (2) rounds that add no point; every round after the first feeds the
previous low-res logits back as the mask prompt. A single point asks for the three
ambiguity-aware masks (the min-loss one is trained; the one with the highest predicted IoU is
passed on to the next round, as in the paper, unless ``next_mask = "min_loss"``); more than one
prompt uses the single-mask token. Every round's loss counts (mean over rounds).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling import Sam
from . import clicks
from .config import TrainConfig
from .losses import sam_loss

#: What :meth:`InteractiveSam.forward` returns (same keys on every process, for all-reduce).
STAT_KEYS = ("loss", "focal", "dice", "iou_mse", "iou_first", "iou_last", "num_masks")


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
        emb = emb.float()
        # Prompts live in the batch's input frame; a smaller frame than the model's
        # (progressive resizing) is mapped onto the model's frame pixel-centre to pixel-centre.
        scale = sam.image_encoder.img_size / images.shape[-1]
        pe = sam.prompt_encoder.pe_layer(tuple(emb.shape[-2:])).unsqueeze(0)  # (1, C, He, We)
        valid = valid_img[index]  # (N, S, S)
        use_box = torch.rand(n, generator=gen, device=dev) < cfg.box_probability
        skip = clicks.no_point_rounds(cfg.rounds, cfg.point_rounds, gen) if n_rounds > 1 else set()
        graded = clicks.gradient_rounds(n_rounds, cfg.grad_rounds, gen)

        groups = []
        for is_box in (False, True):
            rows = torch.nonzero(use_box == is_box)[:, 0]
            if len(rows) == 0:
                continue
            g: dict[str, Any] = {"rows": rows, "box": None, "is_box": is_box}
            t = targets[rows]
            if is_box:
                g["box"] = clicks.noisy_boxes(
                    t,
                    noise=cfg.box_noise,
                    max_noise_px=cfg.box_noise_max_px / scale,
                    frame=None,
                    generator=gen,
                )
                g["points"] = None
            else:
                g["points"] = clicks.sample_points_in_masks(t, gen)
            groups.append(g)

        totals = {"loss": 0.0, "focal": 0.0, "dice": 0.0, "iou_mse": 0.0}
        iou_first = iou_last = None
        for r in range(n_rounds):
            round_iou = torch.zeros(n, device=dev)
            with torch.set_grad_enabled(torch.is_grad_enabled() and r in graded):
                self._round(r, groups, emb, pe, targets, valid, index, skip, gen, scale)
            for g in groups:
                round_iou[g["rows"]] = g["out"]["iou"]
                if r in graded:
                    share = len(g["rows"]) / n / len(graded)
                    totals["loss"] = totals["loss"] + g["out"]["loss"] * share
                    for k in ("focal", "dice", "iou_mse"):
                        totals[k] += float(g["out"][k]) * share
            if r == 0:
                iou_first = round_iou.mean()
            iou_last = round_iou.mean()
        return {
            "loss": totals["loss"],
            "focal": torch.tensor(totals["focal"]),
            "dice": torch.tensor(totals["dice"]),
            "iou_mse": torch.tensor(totals["iou_mse"]),
            "iou_first": iou_first.detach().cpu(),
            "iou_last": iou_last.detach().cpu(),
            "num_masks": torch.tensor(float(n)),
        }

    def _round(
        self,
        r: int,
        groups: list[dict[str, Any]],
        emb: torch.Tensor,
        pe: torch.Tensor,
        targets: torch.Tensor,
        valid: torch.Tensor,
        index: torch.Tensor,
        skip: set[int],
        gen: torch.Generator,
        scale: float,
    ) -> None:
        """Round ``r`` for every prompt group: add its click (rounds after the first that are
        not in ``skip``), decode with the previous low-res logits as mask prompt, and store in
        each group ``out`` (:func:`sam_loss`'s dict, with ``iou`` the true IoU of the mask passed
        on), ``logits`` (the low-res mask passed on, detached: see ``next_mask``) and ``pred``
        (its binary input-frame mask, for the next click). ``scale`` = model input size / batch
        input size (1 except under progressive resizing)."""
        cfg, sam, s = self.config, self.sam, targets.shape[-1]
        for g in groups:
            rows = g["rows"]
            t = targets[rows]
            v = valid[rows]
            if r > 0 and r not in skip:
                p, lab = clicks.sample_error_points(g["pred"], t, v, gen)
                if g["points"] is None:
                    g["points"] = (p, lab)
                else:
                    g["points"] = (
                        torch.cat([g["points"][0], p], 1),
                        torch.cat([g["points"][1], lab], 1),
                    )
            mask_in = g.get("logits") if r > 0 else None
            points, box = g["points"], g["box"]
            if scale != 1:
                if points is not None:
                    points = (clicks.rescale_coords(points[0], scale), points[1])
                if box is not None:
                    box = clicks.rescale_coords(box, scale)
            sparse, dense = sam.prompt_encoder(points, box, mask_in)
            if dense.shape[-2:] != emb.shape[-2:]:  # the no-mask embedding is constant: crop it
                dense = dense[..., : emb.shape[-2], : emb.shape[-1]]
            multimask = r == 0 and not g["is_box"]
            low, iou_pred = sam.mask_decoder(
                image_embeddings=emb[index[rows]],
                image_pe=pe,
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
            sel = torch.arange(len(rows), device=targets.device)
            pick = out["selected"]
            if multimask and cfg.next_mask == "predicted":  # the paper: most confident mask
                pick = iou_pred.detach().argmax(dim=1)
            out["iou"] = out["true_iou"][sel, pick]  # of the mask passed on
            chosen = low[sel, pick][:, None].detach()
            g["logits"] = chosen
            up = F.interpolate(chosen, (s, s), mode="bilinear", align_corners=False)
            g["pred"] = up[:, 0] > sam.mask_threshold
            g["out"] = out
