"""Mask formats: RLE (COCO compressed and uncompressed), SA-1B per-image JSON, COCO instances
export and polygons. numpy, pycocotools and OpenCV (polygons); no torch.

Conventions:

* masks are ``(H, W)`` or ``(N, H, W)`` bool arrays (integer accepted: non-zero = inside);
* RLE runs are in **column-major (Fortran) order** and start with the run of 0s
  (:mod:`.rle`);
* boxes are **XYWH** ``[x, y, w, h]`` in pixels (COCO/SA-1B), unlike the XYXY prompt boxes of
  :class:`segany.SamPredictor`;
* polygon coordinates are ``(x, y)`` with integers on pixel edges (pixel ``(r, c)`` is the
  square ``[c, c + 1] x [r, r + 1]``), as pycocotools rasterises them (:mod:`.polygons`).
"""

from ..io.files import write_json_atomic
from . import coco, polygons, rle, sa1b, segmentation
from .coco import *  # noqa: F403
from .polygons import *  # noqa: F403
from .rle import *  # noqa: F403
from .sa1b import *  # noqa: F403
from .segmentation import *  # noqa: F403

__all__ = ["write_json_atomic"]
__all__ += coco.__all__
__all__ += polygons.__all__
__all__ += rle.__all__
__all__ += sa1b.__all__
__all__ += segmentation.__all__
