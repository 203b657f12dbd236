"""A deterministic sample image for demos and smoke tests (no files, no network)."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


@dataclass(frozen=True)
class SampleObject:
    """One drawn object: its name, a point inside it (x, y) and its XYXY box (pixels)."""

    name: str
    point: tuple[float, float]
    box: tuple[float, float, float, float]


def sample_image(
    width: int = 1024, height: int = 768, seed: int = 0
) -> tuple[np.ndarray, list[SampleObject]]:
    """Draw a scene of a few solid and nested objects on a textured background.

    Returns ``(image (H, W, 3) uint8 RGB, objects)``; coordinates are (x, y) pixels.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 90 + 25 * np.sin(xx / 37.0) * np.cos(yy / 53.0) + rng.normal(0, 6, (height, width))
    bg = np.stack([base * 0.9, base, base * 1.1], axis=-1).clip(0, 255).astype(np.uint8)
    im = Image.fromarray(bg)
    d = ImageDraw.Draw(im)
    s = min(width, height) / 768
    objects = []

    def box(cx: float, cy: float, rx: float, ry: float) -> tuple[float, float, float, float]:
        return (cx - rx, cy - ry, cx + rx, cy + ry)

    b = box(0.27 * width, 0.42 * height, 150 * s, 110 * s)
    d.ellipse(b, fill=(220, 70, 60))
    inner = box(0.27 * width, 0.42 * height, 60 * s, 45 * s)
    d.ellipse(inner, fill=(250, 210, 80))
    objects.append(
        SampleObject("red disc (with a yellow core)", (0.27 * width - 100 * s, 0.42 * height), b)
    )
    objects.append(SampleObject("yellow core", (0.27 * width, 0.42 * height), inner))
    b = box(0.68 * width, 0.32 * height, 170 * s, 95 * s)
    d.rectangle(b, fill=(60, 120, 210))
    objects.append(SampleObject("blue panel", (0.68 * width, 0.32 * height), b))
    tri = [
        (0.55 * width, 0.9 * height),
        (0.8 * width, 0.9 * height),
        (0.675 * width, 0.58 * height),
    ]
    d.polygon(tri, fill=(70, 190, 110))
    objects.append(
        SampleObject(
            "green triangle",
            (0.675 * width, 0.8 * height),
            (0.55 * width, 0.58 * height, 0.8 * width, 0.9 * height),
        )
    )
    return np.asarray(im).copy(), objects


#: Image sizes (height, width) of :func:`write_samples`' procedural scenes; the last one is a
#: large photo-sized image (for trying pan and zoom).
SAMPLE_SIZES = ((480, 640), (600, 800), (768, 1024), (720, 1280), (3000, 4000))


def write_samples(folder: str | os.PathLike, count: int = 8, seed: int = 0) -> list[Path]:
    """Write ``count`` generated images into ``folder`` (created): the :func:`sample_image`
    scene, then procedural scenes (:class:`segany.data.scenes.ProceduralScenes`) of the sizes in
    :data:`SAMPLE_SIZES`, the large one once. PNG, written atomically; returns their paths.
    Deterministic for a ``seed``."""
    from ..io.files import write_bytes_atomic
    from .scenes import ProceduralScenes

    if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
        raise ValueError(f"count must be a positive integer; got {count!r}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    images = [sample_image(seed=seed)[0]]
    small = SAMPLE_SIZES[:-1]
    for i in range(1, count):
        sizes = SAMPLE_SIZES[-1:] if i == count - 1 and count >= 4 else small[i % len(small) :][:1]
        images.append(ProceduralScenes(1, seed=seed * 1000 + i, sizes=sizes)[0].image)
    paths = []
    for i, image in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "PNG", compress_level=3)
        path = out / f"sample_{i:02d}.png"
        write_bytes_atomic(path, buf.getvalue())
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m segany.data.sample FOLDER [--count N] [--seed S]``: write sample images."""
    import argparse

    parser = argparse.ArgumentParser(description="Write generated sample images (PNG).")
    parser.add_argument("folder")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.count <= 0:
        parser.error(f"--count must be positive; got {args.count}")
    for path in write_samples(args.folder, args.count, args.seed):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
