"""Training batches: datasets → resized, padded tensors, exactly as inference prepares images.

A batch is a pure function of ``(config.seed, step, rank)``: which images (an epoch-wise seeded
permutation of the concatenated datasets), which of their masks, and — in the engine — which
prompts (the streams of :mod:`segany.train.seeds`). That is what makes resume-from-checkpoint
exact without saving loader state.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import cv2
import numpy as np
import torch

from ..transforms import ResizeLongestSide, normalize_and_pad
from .config import TrainConfig
from .seeds import Stream, step_rng


class SampleLike(Protocol):
    image: np.ndarray  # (H, W, 3) uint8 RGB
    masks: np.ndarray  # (K, H, W) bool


class TextPromptSource(Protocol):
    """Where a batch's per-mask text embeddings come from (see :mod:`segany.train.text`)."""

    def embeddings(
        self,
        dataset: Any,
        index: int,
        sample: SampleLike,
        keep: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class ConcatSamples:
    """Several map-style datasets of samples back to back."""

    def __init__(self, parts: Sequence[Any]) -> None:
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> SampleLike:
        part, j = self.locate(i)
        return part[j]

    def locate(self, i: int) -> tuple[Any, int]:
        """The dataset holding item ``i`` and the item's index in it."""
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.parts[k], i - int(self.offsets[k])


def open_training_data(specs: Sequence[Any]) -> ConcatSamples:
    """Open every dataset spec of the config (see :func:`segany.data.datasets.open_dataset`)."""
    from ..data.datasets import open_dataset

    data = ConcatSamples([open_dataset(s) for s in specs])
    if len(data) == 0:
        raise ValueError(f"the training data {list(specs)} contain no images")
    return data


def _arrays(sample: SampleLike) -> tuple[np.ndarray, np.ndarray]:
    image, masks = np.asarray(sample.image), np.asarray(sample.masks, dtype=bool)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"sample image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(f"sample masks must be (K, H, W) matching the image, got {masks.shape}")
    return image, masks


def choose_masks(
    sample: SampleLike, rng: np.random.Generator, *, max_masks: int, max_mask_fraction: float
) -> np.ndarray:
    """Indices (sorted, int64) of the sample's masks a step trains on: at most ``max_masks``
    drawn from those that are non-empty and cover at most ``max_mask_fraction`` of the image."""
    image, masks = _arrays(sample)
    area = masks.reshape(len(masks), -1).mean(axis=1) if len(masks) else np.zeros(0)
    keep = np.nonzero((area > 0) & (area <= max_mask_fraction))[0]
    if len(keep) > max_masks:
        keep = np.sort(rng.choice(keep, max_masks, replace=False))
    return keep


def prepare_sample(
    sample: SampleLike,
    img_size: int,
    rng: np.random.Generator,
    *,
    max_masks: int,
    max_mask_fraction: float,
    keep: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Resize one sample to the input frame (longest side ``img_size``, as
    :class:`~segany.transforms.ResizeLongestSide` does for inference) and pick its masks.

    Returns ``image (h, w, 3) uint8`` and ``masks (k, h, w) bool``: the masks
    :func:`choose_masks` picks with ``rng``, or those at the indices ``keep`` when given.
    """
    if keep is None:
        keep = choose_masks(sample, rng, max_masks=max_masks, max_mask_fraction=max_mask_fraction)
    image, masks = _arrays(sample)
    h0, w0 = image.shape[:2]
    masks = masks[keep]
    resize = ResizeLongestSide(img_size)
    h, w = resize.get_preprocess_shape(h0, w0, img_size)
    if (h, w) != (h0, w0):
        image = resize.apply_image(image)
        masks = (
            np.stack(
                [
                    cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
                    for m in masks
                ]
            )
            if len(masks)
            else np.zeros((0, h, w), bool)
        )
    return image, masks


def collate(
    prepared: Sequence[tuple[np.ndarray, np.ndarray]],
    img_size: int,
    pixel_mean: torch.Tensor,
    pixel_std: torch.Tensor,
    text: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:
    """Stack prepared samples into a batch.

    Returns ``images (B, 3, S, S)`` float32 normalized and zero-padded, ``targets (N, S, S)``
    bool (all masks of all images), ``image_index (N,)`` int64 (which image each mask is on)
    and ``valid (B, S, S)`` bool (the unpadded image area). With ``text`` (per image, the
    ``(k, D)`` float32 embeddings of its ``k`` masks and a ``(k,)`` bool of which have one),
    also ``text (N, D)`` and ``has_text (N,)``.
    """
    s = img_size
    images, targets, index = [], [], []
    valid = torch.zeros(len(prepared), s, s, dtype=torch.bool)
    for b, (img, masks) in enumerate(prepared):
        h, w = img.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
        images.append(normalize_and_pad(x, pixel_mean, pixel_std, s)[0])
        valid[b, :h, :w] = True
        t = torch.zeros(len(masks), s, s, dtype=torch.bool)
        t[:, :h, :w] = torch.from_numpy(masks)
        targets.append(t)
        index.append(torch.full((len(masks),), b, dtype=torch.int64))
    out = {
        "images": torch.stack(images),
        "targets": torch.cat(targets) if targets else torch.zeros(0, s, s, dtype=torch.bool),
        "image_index": torch.cat(index) if index else torch.zeros(0, dtype=torch.int64),
        "valid": valid,
    }
    if text is not None:
        if len(text) != len(prepared) or any(
            len(e) != len(m) or len(h) != len(m)
            for (e, h), (_, m) in zip(text, prepared, strict=True)
        ):
            raise ValueError("text needs one (embeddings, has_text) per image, one row per mask")
        out["text"] = torch.cat([e.float() for e, _ in text])
        out["has_text"] = torch.cat([h.bool() for _, h in text])
    return out


class StepBatches(torch.utils.data.IterableDataset):
    """Yields ``(step, batch)`` for ``step`` in ``[start_step, config.steps)``.

    Image ``j`` of process ``rank``'s batch at ``step`` is position
    ``(step * world + rank) * B + j`` of an endless stream made of seeded per-epoch
    permutations of the dataset. With ``num_workers`` loader workers, worker ``w`` builds steps
    ``start + w, start + w + W, ...``, which the loader returns in order.
    """

    def __init__(
        self,
        dataset: Any,
        config: TrainConfig,
        *,
        img_size: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
        text: TextPromptSource | None = None,
    ) -> None:
        self.dataset = dataset
        self.text = text
        self.config = config
        self.img_size = img_size
        self.pixel_mean = torch.tensor(pixel_mean, dtype=torch.float32)
        self.pixel_std = torch.tensor(pixel_std, dtype=torch.float32)
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size
        self._perm: tuple[int, np.ndarray] | None = None

    def image_indices(self, step: int) -> list[int]:
        """Dataset indices of this process's images at ``step``."""
        n, b = len(self.dataset), self.config.images_per_step
        out = []
        for j in range(b):
            pos = (step * self.world_size + self.rank) * b + j
            epoch = pos // n
            if self._perm is None or self._perm[0] != epoch:
                perm = step_rng(Stream.IMAGE_ORDER, self.config.seed, epoch).permutation(n)
                self._perm = (epoch, perm)
            out.append(int(self._perm[1][pos % n]))
        return out

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """This process's batch at ``step`` (see :func:`collate`)."""
        cfg = self.config
        rng = step_rng(Stream.MASK_CHOICE, cfg.seed, step, self.rank)
        size = cfg.input_size(step, self.img_size)
        limits = {"max_masks": cfg.max_masks_per_image, "max_mask_fraction": cfg.max_mask_fraction}
        prepared, text = [], []
        text_rng = step_rng(Stream.TEXT, cfg.seed, step, self.rank) if self.text else None
        for i in self.image_indices(step):
            sample = self.dataset[i]
            keep = choose_masks(sample, rng, **limits)
            prepared.append(prepare_sample(sample, size, rng, keep=keep, **limits))
            if self.text is not None:
                text.append(self.text.embeddings(self.dataset, i, sample, keep, text_rng))
        return collate(prepared, size, self.pixel_mean, self.pixel_std, text if self.text else None)

    def __iter__(self) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        for step in range(self.start_step + wid, self.config.steps, nw):
            yield step, self.batch(step)
