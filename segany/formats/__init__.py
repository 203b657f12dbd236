"""Mask formats: RLE (COCO compressed and uncompressed), SA-1B per-image JSON, COCO instances
export and polygons. numpy + pycocotools (+ OpenCV for polygons when installed); no torch.

Conventions:

* masks are ``(H, W)`` or ``(N, H, W)`` bool arrays (integer accepted: non-zero = inside);
* RLE runs are in **column-major (Fortran) order** and start with the run of 0s
  (:mod:`.rle`);
* boxes are **XYWH** ``[x, y, w, h]`` in pixels (COCO/SA-1B), unlike the XYXY prompt boxes of
  :class:`segany.SamPredictor`;
* polygon coordinates are ``(x, y)`` with integers on pixel edges (pixel ``(r, c)`` is the
  square ``[c, c + 1] x [r, r + 1]``), as pycocotools rasterises them (:mod:`.polygons`).
"""

from .coco import DEFAULT_CATEGORIES, CocoWriter
from .polygons import mask_to_polygons, polygons_to_mask, polygons_to_rle
from .rle import (
    RLE,
    as_coco_rle,
    coco_to_uncompressed_rle,
    decode_coco_rle,
    decode_uncompressed_rle,
    encode_coco_rle,
    encode_uncompressed_rle,
    is_coco_rle,
    is_uncompressed_rle,
    rle_area,
    rle_to_bbox,
    uncompressed_to_coco_rle,
)
from .sa1b import (
    SA1B_ANNOTATION_KEYS,
    SA1B_IMAGE_KEYS,
    read_sa1b_json,
    sa1b_masks,
    write_json_atomic,
    write_sa1b_json,
)

__all__ = [
    "DEFAULT_CATEGORIES",
    "RLE",
    "SA1B_ANNOTATION_KEYS",
    "SA1B_IMAGE_KEYS",
    "CocoWriter",
    "as_coco_rle",
    "coco_to_uncompressed_rle",
    "decode_coco_rle",
    "decode_uncompressed_rle",
    "encode_coco_rle",
    "encode_uncompressed_rle",
    "is_coco_rle",
    "is_uncompressed_rle",
    "mask_to_polygons",
    "polygons_to_mask",
    "polygons_to_rle",
    "read_sa1b_json",
    "rle_area",
    "rle_to_bbox",
    "sa1b_masks",
    "uncompressed_to_coco_rle",
    "write_json_atomic",
    "write_sa1b_json",
]
