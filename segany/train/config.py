"""Training configuration: one frozen dataclass, read from a TOML or JSON file.

A config file holds the fields of :class:`TrainConfig` at top level (see ``configs/*.toml``);
``overrides`` like ``["steps=100", "lr=1e-4"]`` (``segany train CONFIG --set k=v``) are applied
on top, parsed as TOML values.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (with the code version and the seed, it fixes the
    result).

    Model:
        model: architecture name (``segany_tiny``, ``vit_b``, ...) used when ``init`` is empty.
        init: optional checkpoint to start from (fine-tuning); its architecture is inferred.
        freeze_image_encoder / freeze_prompt_encoder: train only the rest (decoder-only
            fine-tuning is the common cheap case).
        trainable: parameter-name prefixes (state-dict names, e.g.
            ``"mask_decoder.iou_prediction_head"``); when given, only parameters under one of
            them train (on top of the freeze flags), e.g. re-fitting the IoU head alone, which
            leaves every mask bit for bit as it was. Empty (the default): everything not frozen.
    Data:
        data: dataset specs (``"procedural:N[:seed]"``, an SA-1B folder, a COCO ``.json``, or
            dicts, see :func:`segany.data.datasets.open_dataset`), concatenated.
        images_per_step: images per optimizer step (per process under ``torchrun``).
        max_masks_per_image: at most this many masks (chosen at random) per image per step.
        max_mask_fraction: masks covering more than this fraction of the image are dropped.
    Prompt simulation:
        rounds: 11 = first prompt + ``point_rounds`` corrective points + mask-only rounds.
        first_prompt_steps: a curriculum (not in the paper, default 0 = off): the first N
            steps train on the first prompt only (1 round, ~10x cheaper per mask), so a model
            trained from scratch learns single-prompt segmentation before the interactive
            rounds start.
        grad_rounds: 0 (the default, every round back-propagates) or ``k`` in ``[1, rounds]``:
            only the first round and ``k - 1`` other rounds drawn at random per step carry
            gradients and loss; the rest run without autograd and only produce the next round's
            clicks and mask prompt (a cheaper interactive step, not in the paper).
        small_input_steps / small_input_size: progressive resizing (not in the paper, default
            0 = off): the first ``small_input_steps`` steps train at input size
            ``small_input_size`` (longest side, padded square; a multiple of the patch size and
            at most the model's ``img_size``) — at half the size a quarter of the tokens, ~2x
            cheaper per step — and the rest at the model's own size, which is the only one the
            finished model is used at (see ``ImageEncoderViT.forward``).
        next_mask: which of the three masks of a single-point round is passed on — fed back
            as the next round's mask prompt and the region the next click corrects:
            ``"predicted"`` (the default, the paper: the one with the highest predicted IoU,
            which is also what a user of the top-scored mask sees) or ``"min_loss"`` (the
            lowest-loss one, i.e. the best of three; not in the paper, the rule stage 1 of the
            bundled model was trained with).
        box_probability: chance that a mask's first prompt is a noisy box (else a point).
        box_noise / box_noise_max_px: box noise std as a fraction of the side, capped in pixels.
    Text prompts (off unless ``text_prompts``; the paper's App. D.5):
        text_prompts: train the prompt encoder's text path; the model gets one (sized to the
            text encoder's embedding) if ``init`` has none.
        text_encoder: the frozen text encoder's file (see :func:`segany.text.load_text_encoder`:
            a small-CLIP ``.safetensors`` or ``open_clip:MODEL[:CHECKPOINT]``).
        text_probability: chance that a mask's first prompt is its text/region embedding
            instead of a point or box; the interactive rounds follow as usual, the text token
            staying in every round.
        text_point_probability: of those text-first masks, the fraction whose first prompt is
            the text together with a uniform foreground point (not in the paper, default 0),
            so that "the thing I named, here" is trained as it is used.
        text_source: ``"region"`` (the paper: the encoder's embedding of the mask's region
            crop, so no captions are needed) or ``"caption"`` (the text embedding of the mask's
            caption, for captioned procedural scenes only; the upper bound to compare with).
            Masks without a caption get no text prompt.
    Loss: focal_weight : dice_weight = 20 : 1, plus iou_weight × IoU-head MSE.
    Optimizer: AdamW(lr, betas, weight_decay), linear warm-up over ``warmup_steps``, then the
        learning rate is multiplied by ``lr_decay_factor`` at each step in ``lr_decay_steps``;
        ``layer_decay`` scales ViT block ``i``'s lr by ``layer_decay ** (depth - i)``;
        ``drop_path`` is the stochastic-depth rate of the last ViT block.
    Validation (off unless ``val_data`` is given):
        val_data: dataset specs (as ``data``) held out from training; every ``val_every``
            steps (0: only at the end of the schedule) the model is evaluated with the
            interactive point protocol of ``segany eval`` (fp32 weights, as trained) on the
            first ``val_images`` images, at most ``val_masks_per_image`` masks each, and
            ``val.jsonl`` gets mIoU after each of ``val_clicks`` clicks (top-scored and oracle
            mask). ``score`` is the mean top mIoU over ``val_clicks``; the best-scoring weights
            are kept as ``model_best.safetensors``. Under ``torchrun`` each process evaluates
            its share of the images.
    Run: steps, seed, precision (``auto``/``bf16``/``fp32``: bf16 autocast where supported),
        grad_checkpointing, grad_clip (0 = off), checkpoint_every, log_every, num_workers, and
        ``out_dir`` (checkpoints, log, curves and the final model).
    """

    model: str = "segany_tiny"
    init: str = ""
    freeze_image_encoder: bool = False
    freeze_prompt_encoder: bool = False
    trainable: tuple[str, ...] = ()

    data: tuple[Any, ...] = ("procedural:100000",)
    images_per_step: int = 4
    max_masks_per_image: int = 16
    max_mask_fraction: float = 0.9

    rounds: int = 11
    point_rounds: int = 8
    first_prompt_steps: int = 0
    grad_rounds: int = 0
    small_input_steps: int = 0
    small_input_size: int = 128
    next_mask: str = "predicted"  # "predicted" (the paper) or "min_loss"
    box_probability: float = 0.5
    box_noise: float = 0.1
    box_noise_max_px: float = 20.0
    text_prompts: bool = False
    text_encoder: str = ""
    text_probability: float = 0.5
    text_point_probability: float = 0.0
    text_source: str = "region"  # "region" (the paper) or "caption"
    loss_resolution: str = "input"  # "input" (S x S, the paper) or "low" (low-res logits)

    focal_weight: float = 20.0
    focal_alpha: float = 0.25  # weight of positives in the focal loss (< 0: no weighting)
    focal_gamma: float = 2.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0

    lr: float = 8e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.1
    warmup_steps: int = 250
    lr_decay_steps: tuple[int, ...] = ()
    lr_decay_factor: float = 0.1
    layer_decay: float = 1.0
    drop_path: float = 0.0

    val_data: tuple[Any, ...] = ()
    val_every: int = 0
    val_images: int = 20
    val_masks_per_image: int = 8
    val_clicks: tuple[int, ...] = (1, 3, 5)

    steps: int = 1000
    seed: int = 0
    precision: str = "auto"
    grad_checkpointing: bool = False
    grad_clip: float = 0.0
    checkpoint_every: int = 250
    log_every: int = 10
    num_workers: int = 0
    out_dir: str = "runs/train"

    def __post_init__(self) -> None:
        errors = []
        if self.steps <= 0:
            errors.append(f"steps must be positive, got {self.steps}")
        if self.images_per_step <= 0:
            errors.append(f"images_per_step must be positive, got {self.images_per_step}")
        if self.max_masks_per_image <= 0:
            errors.append(f"max_masks_per_image must be positive, got {self.max_masks_per_image}")
        if self.first_prompt_steps < 0:
            errors.append(f"first_prompt_steps must be >= 0, got {self.first_prompt_steps}")
        if self.small_input_steps < 0:
            errors.append(f"small_input_steps must be >= 0, got {self.small_input_steps}")
        if self.small_input_size <= 0:
            errors.append(f"small_input_size must be positive, got {self.small_input_size}")
        if self.rounds < 1:
            errors.append(f"rounds must be >= 1, got {self.rounds}")
        if self.rounds > 1 and self.point_rounds > self.rounds - 1:
            errors.append(
                f"point_rounds ({self.point_rounds}) must be <= rounds - 1 ({self.rounds - 1})"
            )
        if not 0 <= self.grad_rounds <= self.rounds:
            errors.append(
                f"grad_rounds must be in [0, rounds={self.rounds}], got {self.grad_rounds}"
            )
        if self.next_mask not in ("predicted", "min_loss"):
            errors.append(f"next_mask must be 'predicted' or 'min_loss', got {self.next_mask!r}")
        if not 0 <= self.box_probability <= 1:
            errors.append(f"box_probability must be in [0, 1], got {self.box_probability}")
        if not 0 <= self.text_probability <= 1:
            errors.append(f"text_probability must be in [0, 1], got {self.text_probability}")
        if not 0 <= self.text_point_probability <= 1:
            errors.append(
                f"text_point_probability must be in [0, 1], got {self.text_point_probability}"
            )
        if self.text_source not in ("region", "caption"):
            errors.append(f"text_source must be 'region' or 'caption', got {self.text_source!r}")
        if self.text_prompts and not self.text_encoder:
            errors.append("text_prompts needs text_encoder (the frozen text encoder's file)")
        if self.loss_resolution not in ("input", "low"):
            errors.append(f"loss_resolution must be 'input' or 'low', got {self.loss_resolution!r}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            errors.append(f"precision must be auto, bf16, fp16 or fp32, got {self.precision!r}")
        if not 0 < self.layer_decay <= 1:
            errors.append(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0 <= self.drop_path < 1:
            errors.append(f"drop_path must be in [0, 1), got {self.drop_path}")
        if not self.data:
            errors.append("data must name at least one dataset")
        if self.val_every < 0:
            errors.append(f"val_every must be >= 0, got {self.val_every}")
        if self.val_images <= 0 or self.val_masks_per_image <= 0:
            errors.append(
                f"val_images and val_masks_per_image must be positive, got {self.val_images} "
                f"and {self.val_masks_per_image}"
            )
        clicks = list(self.val_clicks)
        if not clicks or min(clicks) < 1 or clicks != sorted(set(clicks)):
            errors.append(f"val_clicks must be increasing positive click counts, got {clicks}")
        if errors:
            raise ValueError("invalid training config: " + "; ".join(errors))

    def input_size(self, step: int, img_size: int) -> int:
        """Side of the padded square input at ``step`` for a model of input size
        ``img_size``."""
        return self.small_input_size if step < self.small_input_steps else img_size

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **_coerce(changes))


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown training config field(s) {unknown}; allowed: {sorted(names)}")
    out = {}
    for k, v in values.items():
        out[k] = tuple(v) if isinstance(v, list) else v
        if k in ("data", "val_data", "trainable") and isinstance(v, (str, dict)):
            out[k] = (v,)
    return out


def load_train_config(
    path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Read a TOML (``.toml``) or JSON config, then apply ``key=value`` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"training config not found: {p}")
        text = p.read_text()
        try:
            values = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"cannot parse training config {p}: {e}") from None
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like key=value")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # bare string
        values[key.strip()] = value
    return TrainConfig(**_coerce(values))
