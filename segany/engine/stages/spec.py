"""What the automatic stage runs on each image, wherever it runs: the presets, the picklable
generator spec a worker builds its generator from, and the per-image result (SA-1B mask
records in JSON, so that in-process and Ray results are the same bytes)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ...formats.segmentation import as_coco_rle
from ...formats.values import plain

__all__ = [
    "PRESETS",
    "AutoPreset",
    "GeneratorSpec",
    "ImageResult",
    "read_and_segment",
    "segment_image",
    "torch_threads",
]


@dataclass(frozen=True)
class AutoPreset:
    """Settings of :class:`segany.amg.SamAutomaticMaskGenerator` for the automatic stage.

    ``points_per_side`` is the grid on the full image; crop layer ``i`` (1..``crop_n_layers``)
    splits the image into ``2**i x 2**i`` zoomed-in crops with a grid of ``points_per_side //
    crop_n_points_downscale_factor**i`` per side. Masks with predicted IoU at most
    ``pred_iou_thresh`` or stability below ``stability_score_thresh`` are dropped, as are masks
    covering at least ``max_area_fraction`` of the image; holes and islands under
    ``min_mask_region_area`` pixels are cleaned. The defaults are the generator's own.
    """

    name: str = "default"
    points_per_side: int = 32
    crop_n_layers: int = 0
    crop_n_points_downscale_factor: int = 1
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    max_area_fraction: float = 1.0
    min_mask_region_area: int = 0

    def generator_kwargs(self) -> dict[str, Any]:
        """The generator's keyword arguments (every field but ``name``)."""
        kwargs = asdict(self)
        del kwargs["name"]
        return kwargs


#: ``default``: the official generator defaults. ``sa1b``: the SAM paper's fully automatic
#: stage (a 32x32 grid on the full image, 2x2 crops with 16x16 grids and 4x4 crops with 8x8
#: grids, predicted IoU >= 0.88, stability >= 0.95, masks covering >= 95 % of the image
#: dropped, holes and islands under 100 px cleaned).
PRESETS: dict[str, AutoPreset] = {
    "default": AutoPreset(),
    "sa1b": AutoPreset(
        name="sa1b",
        points_per_side=32,
        crop_n_layers=2,
        crop_n_points_downscale_factor=2,
        pred_iou_thresh=0.88,
        stability_score_thresh=0.95,
        max_area_fraction=0.95,
        min_mask_region_area=100,
    ),
}


@dataclass(frozen=True)
class GeneratorSpec:
    """What a worker needs to build the generator: the model (a variant name or checkpoint
    path), its device and precision, and the generator ``settings`` (keyword arguments of
    :class:`segany.amg.SamAutomaticMaskGenerator`; ``output_mode`` is always COCO RLE).
    Picklable, so that Ray actors build their own generator from it.

    ``threads`` is the number of torch threads each generator computes with (default: torch's
    own in-process; on Ray, what Ray gives the actor, one thread for a fraction of a CPU). The
    output is bit-identical wherever it runs for the same ``threads``; with other thread
    counts, CPU reductions may change scores in their last float32 digit."""

    model: str = "segany_tiny"
    device: str | None = None
    precision: str = "auto"
    settings: Mapping[str, Any] = field(default_factory=dict)
    preset: str = "custom"
    threads: int | None = None

    @classmethod
    def from_preset(
        cls,
        preset: AutoPreset,
        *,
        model: str = "segany_tiny",
        device: str | None = None,
        precision: str = "auto",
        threads: int | None = None,
        **overrides: Any,
    ) -> GeneratorSpec:
        """A spec with ``preset``'s settings, changed by ``overrides`` (generator keywords)."""
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer; got {threads!r}")
        settings = {**preset.generator_kwargs(), **overrides}
        return cls(model, device, precision, settings, preset.name, threads)

    def build(self) -> Any:
        """Load the model and return the SamAutomaticMaskGenerator (COCO RLE output)."""
        from ...amg import SamAutomaticMaskGenerator
        from ...build import load_model

        model = load_model(self.model, precision=self.precision, device=self.device)
        return SamAutomaticMaskGenerator(model, output_mode="coco_rle", **dict(self.settings))

    def identity(self) -> dict[str, Any]:
        """What the output depends on (stored in the index; a resumed run must match it)."""
        return {"preset": self.preset, "model": self.model, "generator": dict(self.settings)}


@dataclass(frozen=True)
class ImageResult:
    """The generator's output for one image: ``annotations`` as a JSON list of SA-1B mask
    records (COCO RLE; plain numbers), the image size in pixels, or an ``error`` message
    when the image could not be read."""

    width: int = 0
    height: int = 0
    annotations: str = "[]"
    error: str | None = None


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch threads (unchanged when None), then restore."""
    if threads is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def segment_image(generator: Any, image: Any) -> ImageResult:
    """Run ``generator`` (a SamAutomaticMaskGenerator) on ``image`` (``(H, W, 3)`` uint8 RGB)
    and return its records as SA-1B annotations in JSON (COCO RLE segmentations; boxes XYWH)."""
    h, w = image.shape[:2]
    records = generator.generate(image)
    anns = []
    for r in records:
        rec = {k: plain(v) for k, v in r.items() if k != "segmentation"}
        rec["segmentation"] = as_coco_rle(r["segmentation"], h, w)
        anns.append(rec)
    return ImageResult(width=w, height=h, annotations=json.dumps(anns))


def read_and_segment(generator: Any, path: str | os.PathLike) -> ImageResult:
    """:func:`segment_image` on the image file ``path``; an unreadable file gives an
    ImageResult with its ``error``."""
    from ...io.image import load_image

    try:
        image = load_image(path)
    except (ValueError, FileNotFoundError) as e:
        return ImageResult(error=str(e))
    return segment_image(generator, image)
