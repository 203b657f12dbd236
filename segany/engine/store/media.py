"""Image files entering a project: user file names made safe metadata, and images validated by
decoding them with Pillow (decompression-bomb guard on, truncated files refused)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from .errors import InvalidInput

__all__ = ["DEFAULT_MAX_PIXELS", "DecodedImage", "clean_file_name", "decode_image"]

#: Pillow's default ``Image.MAX_IMAGE_PIXELS`` (about 89.5 megapixels). Larger images are
#: refused even when the process has switched Pillow's own guard off.
DEFAULT_MAX_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)
#: Longest file name kept (characters).
MAX_NAME = 255
#: File suffix per Pillow format.
_EXT = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp",
        "GIF": ".gif", "PPM": ".ppm"}  # fmt: skip


@dataclass(frozen=True)
class DecodedImage:
    """What a project keeps of a validated image: its size as segany's loader sees it (EXIF
    orientation applied), Pillow's format name and the suffix its file gets."""

    width: int
    height: int
    format: str
    ext: str


def clean_file_name(name: str) -> str:
    """A user's file name as metadata: directories stripped (``/`` and ``\\``), so
    ``../../etc/x.png`` and ``/abs/x.png`` become ``x.png``. Refused (InvalidInput): NUL or
    other control characters, and names that are empty, ``.`` or ``..`` once stripped."""
    if not isinstance(name, str):
        raise InvalidInput(f"a file name must be a string; got {type(name).__name__}")
    if "\x00" in name:
        raise InvalidInput(f"file name {name!r} contains a NUL byte; NUL is not allowed")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidInput(f"file name {name!r} contains control characters; they are not allowed")
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if base in ("", ".", ".."):
        raise InvalidInput(f"file name {name!r} has no name part (after removing folders)")
    return base[:MAX_NAME]


def decode_image(data: bytes, what: str) -> DecodedImage:
    """Validate image bytes by fully decoding them with Pillow; ``what`` names the file in
    errors. Refused (InvalidInput): data that is not an image Pillow reads, a truncated or
    corrupt file, and images over the decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``,
    and never more than :data:`DEFAULT_MAX_PIXELS`; Pillow's DecompressionBombWarning is an
    error here)."""
    limit = DEFAULT_MAX_PIXELS
    if Image.MAX_IMAGE_PIXELS:
        limit = min(limit, int(Image.MAX_IMAGE_PIXELS))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if width * height > limit:
                    raise InvalidInput(_bomb(what, width, height, limit))
                fmt = im.format or ""
                orientation = im.getexif().get(0x0112)
                im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidInput(
            f"{what} is a decompression bomb ({e}); allowed: images up to {limit} pixels"
        ) from None
    except UnidentifiedImageError:
        raise InvalidInput(
            f"{what} is not an image (Pillow cannot identify it); allowed: JPEG, PNG, BMP, "
            "TIFF, WebP, GIF, PPM"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        if isinstance(e, InvalidInput):
            raise
        raise InvalidInput(f"{what} is a corrupt or truncated image ({e})") from None
    if width < 1 or height < 1:
        raise InvalidInput(f"{what} has no pixels ({width}x{height})")
    if orientation in (5, 6, 7, 8):  # EXIF: rotated by 90 degrees
        width, height = height, width
    ext = _EXT.get(fmt, "." + fmt.lower() if fmt.isalnum() else ".img")
    return DecodedImage(width=width, height=height, format=fmt, ext=ext)


def _bomb(what: str, width: int, height: int, limit: int) -> str:
    return (
        f"{what} is {width}x{height} = {width * height} pixels, over the decompression-bomb "
        f"limit of {limit} pixels; allowed: images up to {limit} pixels"
    )
