"""A small CLIP-style pair of our own, trainable on a CPU in minutes: a closed-vocabulary text
tower and a region encoder over the mask's crop, trained with a symmetric InfoNCE loss.

* :class:`Vocabulary`: lower-case words split on anything that is not a letter or digit, with
  the special ids ``PAD = 0``, ``UNK = 1`` and ``EOS = 2``; saved in the model file.
* :class:`SmallClipConfig`: the sizes, the vocabulary words and the region crop.
* :class:`RegionEncoder`: a small CNN over the crop (RGB and the crop mask as a 4th channel),
  :func:`~segany.text.region.masked_pool` over the crop mask, then a projection.
* :class:`TextTower`: token and positional embeddings, a pre-norm transformer encoder, the mean
  over the non-pad tokens (EOS included), then a projection.
* :class:`SmallClip`: both towers and the learned logit scale; a
  :class:`~segany.text.encoder.TextEncoder`.
* :func:`contrastive_loss`, :func:`caption_positives`, :func:`train_small_clip`,
  :func:`save_small_clip`, :func:`load_small_clip`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..io.files import atomic_write
from .encoder import TextEncoder, validate_texts
from .region import RegionCropConfig, crop_regions, masked_pool

__all__ = [
    "RegionEncoder",
    "SmallClip",
    "SmallClipConfig",
    "TextTower",
    "Vocabulary",
    "caption_positives",
    "contrastive_loss",
    "load_small_clip",
    "save_small_clip",
    "train_small_clip",
]

_WORD = re.compile(r"[a-z0-9]+")
_FORMAT = "segany.small_clip"
_FORMAT_VERSION = 1
#: Pixel normalisation of the region encoder's RGB input: ``(x / 255 - 0.5) / 0.25``.
_PIXEL_MEAN, _PIXEL_STD = 0.5, 0.25


def _words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class Vocabulary:
    """A closed word vocabulary: ids ``0 = PAD``, ``1 = UNK``, ``2 = EOS``, then ``words``.

    Words are lower-cased runs of letters and digits (``[a-z0-9]+``); anything else separates
    them. Unknown words map to UNK.
    """

    PAD = 0
    UNK = 1
    EOS = 2
    SPECIALS = ("<pad>", "<unk>", "<eos>")

    def __init__(self, words: Sequence[str]) -> None:
        if isinstance(words, str):
            raise ValueError("words must be a sequence of words, not one str")
        seen: dict[str, None] = {}
        for word in words:
            if not isinstance(word, str) or _WORD.fullmatch(word.lower()) is None:
                raise ValueError(f"vocabulary words must match [a-z0-9]+ (any case), got {word!r}")
            seen.setdefault(word.lower(), None)
        #: The words in id order, from id 3.
        self.words: tuple[str, ...] = tuple(seen)
        self._ids = {w: i + len(self.SPECIALS) for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.SPECIALS) + len(self.words)

    def ids(self, text: str) -> list[int]:
        """The word ids of ``text`` (UNK for words not in the vocabulary), without EOS."""
        return [self._ids.get(w, self.UNK) for w in _words_of(text)]

    def encode(self, texts: Sequence[str], max_tokens: int) -> torch.Tensor:
        """``(N, max_tokens)`` int64 token ids: each text's word ids, cut to ``max_tokens - 1``,
        then EOS, then PAD."""
        out = torch.full((len(texts), max_tokens), self.PAD, dtype=torch.int64)
        for row, text in enumerate(texts):
            ids = self.ids(text)[: max_tokens - 1] + [self.EOS]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return out


@dataclass(frozen=True, kw_only=True)
class SmallClipConfig:
    """Sizes of a :class:`SmallClip`.

    ``image_size`` is the side of the region crop (``crop.size``; ``crop`` defaults to
    ``RegionCropConfig(size=image_size)``); ``widths`` the channels of the CNN's stride-2
    stages; ``text_width`` / ``text_layers`` / ``text_heads`` the text transformer;
    ``max_tokens`` the text length with EOS; ``words`` the vocabulary (without the specials);
    ``spatial_pool`` the side of a grid the region encoder also pools its mask-weighted last
    feature map to, so that the embedding sees where in the crop the mask lies (its shape) and
    not only the mean inside it (0: the masked mean alone).
    """

    embed_dim: int = 128
    image_size: int = 64
    widths: tuple[int, ...] = (32, 64, 128)
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    max_tokens: int = 16
    words: tuple[str, ...] = ()
    spatial_pool: int = 0
    crop: RegionCropConfig | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "words", tuple(self.words))
        for name in ("embed_dim", "image_size", "text_width", "text_layers", "text_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if (
            isinstance(self.spatial_pool, bool)
            or not isinstance(self.spatial_pool, int)
            or self.spatial_pool < 0
        ):
            raise ValueError(f"spatial_pool must be an int >= 0, got {self.spatial_pool!r}")
        if not self.widths or any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ValueError(f"widths must be positive ints, got {self.widths!r}")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width {self.text_width} must divide by text_heads")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 2:
            raise ValueError(
                f"max_tokens must be an int >= 2 (a word and EOS), got {self.max_tokens!r}"
            )
        Vocabulary(self.words)  # validates the words
        if self.crop is None:
            object.__setattr__(self, "crop", RegionCropConfig(size=self.image_size))
        elif self.crop.size != self.image_size:
            raise ValueError(f"crop.size {self.crop.size} must equal image_size {self.image_size}")

    def to_json(self) -> str:
        """The config as JSON (the model file's metadata)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SmallClipConfig:
        """The config written by :meth:`to_json`."""
        data = json.loads(text)
        crop = data.pop("crop")
        crop["train_scale"] = tuple(crop["train_scale"])
        return cls(**data, crop=RegionCropConfig(**crop))


class RegionEncoder(nn.Module):
    """Region crops ``(B, 4, S, S)`` float (normalised RGB and the 0/1 crop mask) and the crop
    masks ``(B, S, S)`` bool -> ``(B, embed_dim)`` (not normalised).

    Stride-2 3x3 convolutions with GroupNorm and GELU (one stage per ``widths`` entry), the
    :func:`masked_pool` of the last feature map over the crop mask (with ``spatial_pool = g >
    0``, concatenated with that map, weighted by the mask resized to it by area, average-pooled
    to ``g x g`` and flattened), LayerNorm and a linear map. Nothing outside the mask reaches
    the last layer's pooling.
    """

    def __init__(self, config: SmallClipConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 4
        for width in config.widths:
            layers += [
                nn.Conv2d(channels, width, 3, stride=2, padding=1),
                nn.GroupNorm(math.gcd(8, width), width),
                nn.GELU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.GroupNorm(math.gcd(8, width), width),
                nn.GELU(),
            ]
            channels = width
        self.stages = nn.Sequential(*layers)
        self.spatial_pool = config.spatial_pool
        features = channels * (1 + self.spatial_pool**2)
        self.norm = nn.LayerNorm(features)
        self.proj = nn.Linear(features, config.embed_dim)

    def forward(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        feats = self.stages(x)
        pooled = masked_pool(feats, masks)
        if self.spatial_pool:
            # Only inside the mask, like the masked mean, but keeping where in the crop.
            inside = F.interpolate(masks[:, None].to(feats.dtype), feats.shape[-2:], mode="area")
            grid = F.adaptive_avg_pool2d(feats * inside, self.spatial_pool).flatten(1)
            pooled = torch.cat([pooled, grid], dim=1)
        return self.proj(self.norm(pooled))


class TextTower(nn.Module):
    """Token ids ``(B, T)`` int64 (PAD = 0) -> ``(B, embed_dim)`` (not normalised).

    Token plus learned positional embeddings, a pre-norm transformer encoder without dropout
    (pad tokens masked out of attention), LayerNorm, the mean over the non-pad tokens, and a
    linear map.
    """

    def __init__(self, config: SmallClipConfig, vocab_size: int) -> None:
        super().__init__()
        width = config.text_width
        self.token_embedding = nn.Embedding(vocab_size, width, padding_idx=Vocabulary.PAD)
        self.positional_embedding = nn.Parameter(torch.randn(config.max_tokens, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, config.text_heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(
            layer, config.text_layers, enable_nested_tensor=False
        )
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, config.embed_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pad = tokens == Vocabulary.PAD
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        x = self.norm(self.transformer(x, src_key_padding_mask=pad))
        keep = (~pad).to(x.dtype)[..., None]
        return self.proj((x * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0))


class SmallClip(nn.Module, TextEncoder):
    """The small CLIP pair: :class:`RegionEncoder`, :class:`TextTower` and a learned
    ``logit_scale`` (log of the inverse temperature, initialised to ``log(1 / 0.07)``).

    As a :class:`~segany.text.encoder.TextEncoder` it embeds on the device of its parameters and
    returns float32 CPU rows; as an ``nn.Module`` :meth:`embed_crops` and :meth:`embed_tokens`
    give the unnormalised, differentiable embeddings used in training.
    """

    def __init__(self, config: SmallClipConfig) -> None:
        if not isinstance(config, SmallClipConfig):
            raise ValueError(f"config must be a SmallClipConfig, got {type(config).__name__}")
        super().__init__()
        self.config = config
        self.vocabulary = Vocabulary(config.words)
        self.embed_dim = config.embed_dim
        self.crop = config.crop
        self.region = RegionEncoder(config)
        self.text = TextTower(config, len(self.vocabulary))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """``(N, max_tokens)`` int64 token ids of ``texts`` (see :meth:`Vocabulary.encode`)."""
        return self.vocabulary.encode(validate_texts(texts), self.config.max_tokens)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` text embeddings (not normalised) of ``tokens (N, T)`` int64."""
        return self.text(tokens.to(self.device))

    def embed_crops(self, crops: np.ndarray, crop_masks: np.ndarray) -> torch.Tensor:
        """``(K, D)`` region embeddings (not normalised) of ``crops (K, S, S, 3) uint8`` and
        ``crop_masks (K, S, S) bool``."""
        rgb = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device)
        masks = torch.from_numpy(np.ascontiguousarray(crop_masks)).to(self.device)
        rgb = (rgb.permute(0, 3, 1, 2).float() / 255 - _PIXEL_MEAN) / _PIXEL_STD
        x = torch.cat([rgb, masks[:, None].float()], dim=1)
        return self.region(x, masks)

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.embed_tokens(self.vocabulary.encode(texts, self.config.max_tokens))

    def _encode_crops(self, crops: np.ndarray, crop_masks: np.ndarray) -> torch.Tensor:
        return self.embed_crops(crops, crop_masks)


def caption_positives(captions: Sequence[str]) -> torch.Tensor:
    """``(N, N)`` bool: ``[i, j]`` when captions ``i`` and ``j`` are the same words (compared as
    lower-case word lists), so that duplicates are positives of each other."""
    keys = [tuple(_words_of(c)) for c in captions]
    return torch.tensor([[a == b for b in keys] for a in keys], dtype=torch.bool)


def attribute_positives(
    captions: Sequence[str],
    region_attributes: Sequence[dict[str, str]],
    caption_attributes: Sequence[dict[str, str] | None],
) -> torch.Tensor:
    """``(N, N)`` bool: ``[i, j]`` when region ``i`` fits caption ``j``: the same words
    (:func:`caption_positives`), or every attribute caption ``j`` names
    (``caption_attributes[j]``, e.g. ``{"shape": "star"}``) equals region ``i``'s
    (``region_attributes[i]``). A caption naming something scene-relative (size, position)
    has ``None`` there and matches by its words only. "The star" then has every star of the
    batch as a positive rather than pushing the other stars away."""
    n = len(captions)
    if not len(region_attributes) == len(caption_attributes) == n:
        raise ValueError("captions, region_attributes and caption_attributes differ in length")
    p = caption_positives(captions)
    for j, named in enumerate(caption_attributes):
        if not named:
            continue
        for i, region in enumerate(region_attributes):
            if all(region.get(k) == v for k, v in named.items()):
                p[i, j] = True
    return p


def contrastive_loss(
    region_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """The symmetric InfoNCE loss of paired ``region_emb (N, D)`` and ``text_emb (N, D)``.

    Both are l2-normalised here; the logits are ``exp(logit_scale) * region @ text.T`` with
    ``logit_scale`` clamped to at most ``log(100)``. ``positives (N, N)`` bool (default the
    identity; see :func:`caption_positives` and :func:`attribute_positives`), ``[i, j]`` for
    region ``i`` and text ``j``, marks the pairs that match: several positives give
    multi-positive targets, each row's (and, region-to-text, each column's) target spread
    evenly over its positives, so that a match is never pushed away as a negative. The loss is the mean of the region-to-text
    and text-to-region cross-entropies (a scalar).
    """
    if region_emb.ndim != 2 or region_emb.shape != text_emb.shape:
        raise ValueError(
            f"region_emb and text_emb must both be (N, D), got {tuple(region_emb.shape)} "
            f"and {tuple(text_emb.shape)}"
        )
    n = region_emb.shape[0]
    if positives is None:
        positives = torch.eye(n, dtype=torch.bool)
    if (
        positives.dtype != torch.bool
        or positives.shape != (n, n)
        or not bool(positives.diagonal().all())
    ):
        raise ValueError(f"positives must be ({n}, {n}) bool with a true diagonal")
    positives = positives.to(region_emb.device)
    scale = logit_scale.clamp(max=math.log(100.0)).exp()
    logits = scale * F.normalize(region_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    target = positives.float()
    to_text = target / target.sum(dim=1, keepdim=True)
    to_region = target.T / target.T.sum(dim=1, keepdim=True)
    to_text = -(to_text * logits.log_softmax(dim=1)).sum(dim=1).mean()
    to_region = -(to_region * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
    return (to_text + to_region) / 2


#: ``(image, mask, caption)``, or with ``(region attributes, caption attributes or None)``
#: after it for :func:`attribute_positives`.
Pair = tuple[Any, ...]


def train_small_clip(
    pairs_fn: Callable[[int, np.random.Generator], Sequence[Pair]],
    *,
    config: SmallClipConfig,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: str | torch.device = "cpu",
    weight_decay: float = 0.01,
    log_every: int = 0,
) -> tuple[SmallClip, list[dict[str, float]]]:
    """Train a new :class:`SmallClip` with :func:`contrastive_loss`.

    ``pairs_fn(step, rng)`` returns some ``(image (H, W, 3) uint8, mask (H, W) bool, caption)``
    pairs (one scene's regions, say), optionally followed by the region's attributes and the
    ones its caption names (see :func:`attribute_positives`); it is called until
    ``batch_size`` pairs are gathered (surplus pairs are dropped). Each region is cropped for
    training (:meth:`RegionCropConfig.draw` with ``rng``); duplicate captions in a batch are
    positives of each other (:func:`caption_positives`) and, with attributes, so is every
    region a caption fits. ``seed`` fixes the initial weights
    (without touching torch's global generator) and ``rng = np.random.default_rng(seed)``. The
    optimizer is AdamW with constant ``lr``.

    Returns ``(model, history)``: the model in eval mode, and one ``{"step", "loss",
    "logit_scale"}`` per step. ``log_every > 0`` prints every ``log_every`` steps.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if batch_size < 2:
        raise ValueError("batch_size must be >= 2: a contrastive loss needs negatives")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be > 0, got {lr!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallClip(config)
    model.to(device).train()
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    history: list[dict[str, float]] = []
    for step in range(steps):
        crops, crop_masks, captions, facts = _training_batch(
            pairs_fn, step, rng, batch_size, config
        )
        region = model.embed_crops(crops, crop_masks)
        text = model.embed_tokens(model.tokenize(captions))
        if facts is None:
            positives = caption_positives(captions)
        else:
            positives = attribute_positives(captions, *zip(*facts, strict=True))
        loss = contrastive_loss(region, text, model.logit_scale, positives=positives)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        record = {
            "step": step,
            "loss": float(loss.detach()),
            "logit_scale": float(model.logit_scale.detach()),
        }
        history.append(record)
        if log_every > 0 and (step % log_every == 0 or step == steps - 1):
            print(
                f"step {step}: loss {record['loss']:.4f}, logit_scale {record['logit_scale']:.3f}"
            )
    return model.eval(), history


def _training_batch(
    pairs_fn: Callable[[int, np.random.Generator], Sequence[Pair]],
    step: int,
    rng: np.random.Generator,
    batch_size: int,
    config: SmallClipConfig,
) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[Any, Any]] | None]:
    crops: list[np.ndarray] = []
    crop_masks: list[np.ndarray] = []
    captions: list[str] = []
    facts: list[tuple[Any, Any]] = []
    while len(captions) < batch_size:
        pairs = list(pairs_fn(step, rng))
        if not pairs:
            raise ValueError(f"pairs_fn returned no pairs at step {step}")
        for pair in pairs[: batch_size - len(captions)]:
            if len(pair) not in (3, 5):
                raise ValueError(
                    "pairs_fn must return (image, mask, caption) or (image, mask, caption, "
                    f"region attributes, caption attributes) tuples; got {len(pair)} items"
                )
            image, mask, caption = pair[:3]
            crop, crop_mask = crop_regions(
                image, mask[None], config.crop, train=True, generator=rng
            )
            crops.append(crop[0])
            crop_masks.append(crop_mask[0])
            captions.append(caption)
            if len(pair) == 5:
                facts.append((pair[3], pair[4]))
    validate_texts(captions)
    if facts and len(facts) != len(captions):
        raise ValueError("pairs_fn mixed pairs with and without attributes")
    return np.stack(crops), np.stack(crop_masks), captions, facts or None


def save_small_clip(model: SmallClip, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` as safetensors (float32 weights) with its config and
    vocabulary as JSON metadata, atomically."""
    if not isinstance(model, SmallClip):
        raise ValueError(f"model must be a SmallClip, got {type(model).__name__}")
    tensors = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()
    }
    metadata = {
        "format": _FORMAT,
        "format_version": str(_FORMAT_VERSION),
        "config": model.config.to_json(),
    }
    with atomic_write(path) as tmp:
        save_file(tensors, os.fspath(tmp), metadata=metadata)


def load_small_clip(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> SmallClip:
    """The :class:`SmallClip` written by :func:`save_small_clip`, in eval mode on ``device``.

    Raises ValueError when ``path`` is not such a file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"no small CLIP file at {path}")
    try:
        with safe_open(path, framework="pt") as f:
            metadata: dict[str, Any] = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as e:
        raise ValueError(f"{path} is not a safetensors file: {e}") from None
    if metadata.get("format") != _FORMAT:
        raise ValueError(
            f"{path} is not a small CLIP file (metadata format {metadata.get('format')!r})"
        )
    if metadata.get("format_version") != str(_FORMAT_VERSION):
        raise ValueError(
            f"{path} has small CLIP format version {metadata.get('format_version')!r}; "
            f"this segany reads version {_FORMAT_VERSION}"
        )
    try:
        config = SmallClipConfig.from_json(metadata["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} has no readable small CLIP config: {e}") from None
    model = SmallClip(config)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match its config: missing {missing}, unexpected {unexpected}"
        )
    return model.to(device).eval()
