"""Procedural training scenes: textured objects with nested parts on cluttered backgrounds.

Each scene is an RGB image plus instance masks at three levels — object (0), part (1) and
sub-part (2) — so a single point inside a sub-part is genuinely ambiguous (sub-part / part /
whole object), which is what SAM's three-mask output learns. Objects overlap (later ones occlude
earlier ones; masks are the *visible* pixels). Everything is numpy + OpenCV, seeded and
reproducible: scene ``i`` of a :class:`ProceduralScenes` set depends only on ``(seed, i)``.

Every region records what it was drawn as (:class:`RegionAttributes`: shape, texture, size,
centre and, with ``SceneConfig(palette=True)``, a colour name from :data:`PALETTE`), which
:mod:`segany.data.captions` turns into phrases that pick out one object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

OBJECT, PART, SUBPART = 0, 1, 2
SHAPES = ("ellipse", "rectangle", "polygon", "star", "blob")
TEXTURES = ("solid", "stripes", "checker", "gradient", "spots", "noise")
# The named colours of ``SceneConfig(palette=True)``: RGB centres, jittered per region.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (240, 135, 25),
    "yellow": (235, 215, 40),
    "green": (40, 160, 55),
    "blue": (35, 75, 215),
    "purple": (135, 55, 185),
    "pink": (245, 135, 195),
    "brown": (120, 75, 35),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of the generator. Sizes are fractions of the image's shorter side."""

    height: int = 256
    width: int = 256
    min_objects: int = 3
    max_objects: int = 7
    min_radius: float = 0.08
    max_radius: float = 0.26
    part_probability: float = 0.5  # an object gets a part with this probability
    subpart_probability: float = 0.5  # a part gets a sub-part with this probability
    part_scale: tuple[float, float] = (0.35, 0.6)  # part radius / parent radius
    min_area_fraction: float = 0.003  # masks smaller than this (visible) are dropped
    clutter_shapes: tuple[int, int] = (4, 12)  # faint background shapes (not annotated)
    noise_sigma: tuple[float, float] = (2.0, 8.0)
    blur_probability: float = 0.5
    # Named colours: every region's base colour is a PALETTE entry plus uniform jitter of up to
    # ``palette_jitter`` per channel (off: uniform random RGB, the original scenes).
    palette: bool = False
    palette_jitter: float = 18.0
    # (colour, shape) pairs never drawn for an object, e.g. (("blue", "star"),), to hold them
    # out of training; needs ``palette``.
    excluded_combinations: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for pair in self.excluded_combinations:
            if (
                not isinstance(pair, tuple | list)
                or len(pair) != 2
                or pair[0] not in PALETTE
                or pair[1] not in SHAPES
            ):
                raise ValueError(
                    f"excluded_combinations entries are (colour, shape) pairs with a colour in "
                    f"{sorted(PALETTE)} and a shape in {list(SHAPES)}; got {pair!r}"
                )
        if self.excluded_combinations and not self.palette:
            raise ValueError("excluded_combinations needs palette=True (named colours)")
        if not 0 <= self.palette_jitter <= 60:
            raise ValueError(f"palette_jitter must be in [0, 60]; got {self.palette_jitter}")


@dataclass(frozen=True)
class RegionAttributes:
    """What one annotated region was drawn as.

    Attributes:
        shape: one of :data:`SHAPES`.
        texture: one of :data:`TEXTURES`.
        color: a :data:`PALETTE` name, or None for a uniform random colour (``palette`` off).
        rgb: the base colour ``(r, g, b)``, 0-255 floats, before texture and shading.
        radius: the drawn shape's radius as a fraction of the image's shorter side.
        center: the drawn shape's centre ``(x, y)`` in pixels (it may be occluded).
    """

    shape: str
    texture: str
    color: str | None
    rgb: tuple[float, float, float]
    radius: float
    center: tuple[float, float]


@dataclass
class Scene:
    """One generated scene.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        masks: ``(K, H, W)`` bool, visible pixels of each annotated region.
        levels: ``(K,)`` int, 0 object / 1 part / 2 sub-part.
        parents: ``(K,)`` int, index of the enclosing region in ``masks`` or -1.
        attributes: ``K`` :class:`RegionAttributes`, one per mask (empty if not recorded).
    """

    image: np.ndarray
    masks: np.ndarray
    levels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    parents: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    attributes: tuple[RegionAttributes, ...] = ()


def _rgb(c: np.ndarray) -> tuple[float, float, float]:
    return (float(c[0]), float(c[1]), float(c[2]))


def _random_color(rng: np.random.Generator, avoid: np.ndarray | None = None) -> np.ndarray:
    for _ in range(20):
        c = rng.uniform(0, 255, 3)
        if avoid is None or np.abs(c - avoid).sum() > 120:
            return c
    return c


def _region_color(
    rng: np.random.Generator,
    cfg: SceneConfig,
    avoid: tuple[np.ndarray, str | None] | None = None,
    shape: str | None = None,
) -> tuple[np.ndarray, str | None]:
    """A region's base colour and its palette name (None with ``palette`` off).

    ``avoid`` is the enclosing region's (colour, name): a part differs from it (another name,
    or a distant random colour). ``shape`` is an object's shape, whose excluded combinations
    are never drawn."""
    if not cfg.palette:
        return _random_color(rng, None if avoid is None else avoid[0]), None
    names = [
        n
        for n in PALETTE
        if (avoid is None or n != avoid[1]) and (n, shape) not in cfg.excluded_combinations
    ]
    name = names[int(rng.integers(len(names)))]
    jitter = rng.uniform(-cfg.palette_jitter, cfg.palette_jitter, 3)
    return np.clip(np.array(PALETTE[name], np.float64) + jitter, 0, 255), name


Box = tuple[int, int, int, int]  # (y0, y1, x0, x1): a window of the image, end-exclusive


def _bbox(mask: np.ndarray) -> Box:
    """The tight window around a non-empty ``(H, W)`` mask."""
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8, copy=False))
    return y, y + h, x, x + w


def _texture(
    rng: np.random.Generator,
    h: int,
    w: int,
    base: np.ndarray,
    box: Box | None = None,
    kind: str | None = None,
    keep_hue: bool = False,
) -> np.ndarray:
    """A float texture around colour ``base`` for an ``(h, w)`` image, computed only inside the
    window ``box`` (default: all of it); returns ``(y1 - y0, x1 - x0, 3)``. The values inside
    the window equal those of the full texture, so the window is only a speed-up. ``kind``
    (one of :data:`TEXTURES`) is drawn from ``rng`` when not given. The texture mixes ``base``
    with a second colour: a random shift of it, or with ``keep_hue`` a lighter or darker
    ``base`` (the same shift on every channel, so a named colour stays that colour)."""
    y0, y1, x0, x1 = box or (0, h, 0, w)
    if kind is None:
        kind = _draw(rng, TEXTURES)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    shift = rng.uniform(-70, 70, 3)
    if keep_hue:
        shift = np.full(3, shift.mean() + np.sign(shift.mean()) * 35.0)
    other = np.clip(base + shift, 0, 255)
    if kind == "solid":
        t = np.zeros((y1 - y0, x1 - x0, 1), np.float32)
    elif kind == "stripes":
        a, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
        t = (np.sin((xx * np.cos(a) + yy * np.sin(a)) * 2 * np.pi / period) > 0)[..., None]
    elif kind == "checker":
        s = rng.uniform(4, 14)
        t = (((xx // s) + (yy // s)) % 2)[..., None]
    elif kind == "gradient":
        a = rng.uniform(0, 2 * np.pi)
        g = xx * np.cos(a) + yy * np.sin(a)
        # The extremes of the linear ramp over the whole image lie at its corners.
        cy, cx = (
            np.array([0, 0, h - 1, h - 1], np.float32),
            np.array([0, w - 1, 0, w - 1], np.float32),
        )
        gc = cx * np.cos(a) + cy * np.sin(a)
        t = ((g - gc.min()) / max(float(np.ptp(gc)), 1.0))[..., None]
    elif kind == "spots":
        t = np.zeros((y1 - y0, x1 - x0), np.float32)
        for _ in range(int(rng.integers(5, 25))):
            cv2.circle(
                t,
                (int(rng.integers(w)) - x0, int(rng.integers(h)) - y0),
                int(rng.integers(2, 6)),
                1.0,
                -1,
            )
        t = t[..., None]
    else:  # noise
        t = cv2.resize(rng.uniform(0, 1, (h // 6 + 2, w // 6 + 2)).astype(np.float32), (w, h))
        t = t[y0:y1, x0:x1, None]
    t = t.astype(np.float32)
    return base * (1 - t) + other * t


def _draw(rng: np.random.Generator, kinds: tuple[str, ...]) -> str:
    return kinds[rng.integers(len(kinds))]


def _shape_mask(
    rng: np.random.Generator,
    h: int,
    w: int,
    cx: float,
    cy: float,
    r: float,
    kind: str | None = None,
) -> np.ndarray:
    """A filled shape of radius ~``r`` centred at ``(cx, cy)`` (pixels) as a uint8 mask;
    ``kind`` (one of :data:`SHAPES`) is drawn from ``rng`` when not given."""
    m = np.zeros((h, w), np.uint8)
    if kind is None:
        kind = _draw(rng, SHAPES)
    angle = rng.uniform(0, 2 * np.pi)
    aspect = rng.uniform(0.5, 1.0)
    if kind == "ellipse":
        axes = (max(int(r), 2), max(int(r * aspect), 2))
        cv2.ellipse(m, (int(cx), int(cy)), axes, float(np.degrees(angle)), 0, 360, 1, -1)
        return m
    if kind == "rectangle":
        ts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float32) * [r, r * aspect]
    elif kind == "polygon":
        n = int(rng.integers(3, 9))
        th = np.sort(rng.uniform(0, 2 * np.pi, n)) if n > 4 else np.arange(n) * 2 * np.pi / n
        ts = np.stack([np.cos(th), np.sin(th) * aspect], 1) * r
    elif kind == "star":
        n = int(rng.integers(4, 8))
        th = np.arange(2 * n) * np.pi / n
        rad = np.where(np.arange(2 * n) % 2 == 0, r, r * rng.uniform(0.45, 0.7))
        ts = np.stack([np.cos(th) * rad, np.sin(th) * rad], 1)
    else:  # blob: smooth random radius
        th = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        rad = np.ones_like(th)
        for k in range(1, 4):
            rad += rng.uniform(0, 0.25 / k) * np.cos(k * th + rng.uniform(0, 2 * np.pi))
        ts = np.stack([np.cos(th) * rad * r, np.sin(th) * rad * r * aspect], 1)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = ts @ rot.T + [cx, cy]
    cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    return m


def _inner_shape(
    rng: np.random.Generator, parent: np.ndarray, r_parent: float, scale: tuple[float, float]
) -> tuple[np.ndarray, float, str, tuple[float, float]] | None:
    """A shape placed inside ``parent`` (clipped to it) as ``(mask, radius, shape, centre)``,
    or None if the parent is too thin."""
    h, w = parent.shape
    y0, y1, x0, x1 = _bbox(parent)
    y0, y1, x0, x1 = max(y0 - 1, 0), min(y1 + 1, h), max(x0 - 1, 0), min(x1 + 1, w)
    # The distance to the nearest background pixel, on the parent's window plus a one-pixel
    # margin of background: the same values as on the whole image, a fraction of the work.
    dist = cv2.distanceTransform(parent[y0:y1, x0:x1], cv2.DIST_L2, 3)
    r = r_parent * rng.uniform(*scale)
    ys, xs = np.nonzero(dist >= max(0.6 * r, 2.0))
    if len(xs) == 0:
        return None
    j = rng.integers(len(xs))
    kind = _draw(rng, SHAPES)
    cx, cy = float(xs[j] + x0 + 0.5), float(ys[j] + y0 + 0.5)
    m = _shape_mask(rng, h, w, cx, cy, r, kind) & parent
    return (m, r, kind, (cx, cy)) if m.sum() > 0 else None


def _background(rng: np.random.Generator, h: int, w: int, cfg: SceneConfig) -> np.ndarray:
    img = _texture(rng, h, w, rng.uniform(40, 215, 3))
    low = cv2.resize(rng.normal(0, 1, (h // 32 + 2, w // 32 + 2, 3)).astype(np.float32), (w, h))
    img = img * 0.7 + (img.mean() + 25 * low) * 0.3
    for _ in range(int(rng.integers(*cfg.clutter_shapes))):  # faint, unannotated clutter
        r = rng.uniform(0.03, 0.12) * min(h, w)
        m = _shape_mask(rng, h, w, rng.uniform(0, w), rng.uniform(0, h), r).astype(bool)
        img[m] = img[m] * 0.75 + _random_color(rng) * 0.25
    return img


def generate_scene(seed: int | np.random.Generator, config: SceneConfig | None = None) -> Scene:
    """Generate one scene. ``seed`` is an int or a numpy Generator; same seed, same scene."""
    cfg = config or SceneConfig()
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    h, w = cfg.height, cfg.width
    side = min(h, w)
    img = _background(rng, h, w, cfg)
    regions: list[tuple[np.ndarray, int, int, RegionAttributes]] = []  # mask, level, parent
    for _ in range(int(rng.integers(cfg.min_objects, cfg.max_objects + 1))):
        r = rng.uniform(cfg.min_radius, cfg.max_radius) * side
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        shape = _draw(rng, SHAPES)
        obj = _shape_mask(rng, h, w, cx, cy, r, shape)
        if obj.sum() == 0:
            continue
        base, name = _region_color(rng, cfg, shape=shape)
        box = _bbox(obj)
        texture = _draw(rng, TEXTURES)
        tex = _texture(rng, h, w, base, box, texture, cfg.palette)
        amp = rng.uniform(-25, 25)  # a linear shading ramp along y or x
        ramp = np.mgrid[box[0] : box[1], box[2] : box[3]][rng.integers(2)]
        attrs = RegionAttributes(shape, texture, name, _rgb(base), r / side, (cx, cy))
        draw = [(obj, box, tex + (amp * (ramp / max(h, w) - 0.5))[..., None], OBJECT, -1, attrs)]
        if rng.random() < cfg.part_probability:
            inner = _inner_shape(rng, obj, r, cfg.part_scale)
            if inner is not None:
                part, pr, pshape, pcenter = inner
                (pbase, pname), pbox = _region_color(rng, cfg, avoid=(base, name)), _bbox(part)
                ptex = _draw(rng, TEXTURES)
                pattrs = RegionAttributes(pshape, ptex, pname, _rgb(pbase), pr / side, pcenter)
                draw.append(
                    (
                        part,
                        pbox,
                        _texture(rng, h, w, pbase, pbox, ptex, cfg.palette),
                        PART,
                        0,
                        pattrs,
                    )
                )
                if rng.random() < cfg.subpart_probability:
                    sub = _inner_shape(rng, part, pr, cfg.part_scale)
                    if sub is not None:
                        sbase, sname = _region_color(rng, cfg, avoid=(pbase, pname))
                        sbox, stex = _bbox(sub[0]), _draw(rng, TEXTURES)
                        sattrs = RegionAttributes(
                            sub[2], stex, sname, _rgb(sbase), sub[1] / side, sub[3]
                        )
                        stexture = _texture(rng, h, w, sbase, sbox, stex, cfg.palette)
                        draw.append((sub[0], sbox, stexture, SUBPART, 1, sattrs))
        first = len(regions)
        for m, (y0, y1, x0, x1), t, level, parent, a in draw:
            mb = m[y0:y1, x0:x1].astype(bool)
            img[y0:y1, x0:x1][mb] = t[mb]
            if level == OBJECT:  # occlusion: earlier regions lose what this object covers
                for k in range(first):
                    regions[k][0][y0:y1, x0:x1][mb] = 0
            regions.append((m, level, -1 if parent < 0 else first + parent, a))
    noise = rng.normal(0, rng.uniform(*cfg.noise_sigma), img.shape)
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    if rng.random() < cfg.blur_probability:
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.5, 1.0))
    min_area = cfg.min_area_fraction * h * w
    keep = [i for i, (m, _, _, _) in enumerate(regions) if m.sum() >= min_area]
    index = {old: new for new, old in enumerate(keep)}
    masks = (
        np.stack([regions[i][0].astype(bool) for i in keep]) if keep else np.zeros((0, h, w), bool)
    )
    levels = np.array([regions[i][1] for i in keep], np.int64)
    parents = np.array([index.get(regions[i][2], -1) for i in keep], np.int64)
    attributes = tuple(regions[i][3] for i in keep)
    return Scene(image=img, masks=masks, levels=levels, parents=parents, attributes=attributes)


class ProceduralScenes:
    """A reproducible, map-style set of ``length`` scenes (a ``torch`` Dataset by duck typing).

    ``scenes[i]`` depends only on ``(seed, i)``; ``sizes`` optionally varies the image size per
    scene (``(height, width)`` pairs chosen by the scene's own generator).
    """

    def __init__(
        self,
        length: int,
        seed: int = 0,
        config: SceneConfig | None = None,
        sizes: tuple[tuple[int, int], ...] | None = None,
    ) -> None:
        if length <= 0:
            raise ValueError(f"length must be positive, got {length}")
        self.length = length
        self.seed = seed
        self.config = config or SceneConfig()
        self.sizes = sizes

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Scene:
        if not 0 <= i < self.length:
            raise IndexError(f"scene index {i} out of range [0, {self.length})")
        rng = np.random.default_rng([self.seed, i])
        cfg = self.config
        if self.sizes:
            hh, ww = self.sizes[rng.integers(len(self.sizes))]
            cfg = SceneConfig(**{**cfg.__dict__, "height": hh, "width": ww})
        return generate_scene(rng, cfg)
