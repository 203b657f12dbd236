"""Opening a text encoder from one string: a small-CLIP file or an open_clip model."""

from __future__ import annotations

import os

from .encoder import TextEncoder

#: Prefix of open_clip specs: ``open_clip:MODEL`` (random weights, for tests) or
#: ``open_clip:MODEL:CHECKPOINT`` (a local file; nothing is downloaded).
OPEN_CLIP_PREFIX = "open_clip:"


def load_text_encoder(spec: str | os.PathLike, *, device: str = "cpu") -> TextEncoder:
    """The text encoder ``spec`` names: a small-CLIP ``.safetensors`` file
    (:func:`~segany.text.load_small_clip`) or ``open_clip:MODEL[:CHECKPOINT]``
    (:class:`~segany.text.OpenClipEncoder`, e.g. ``open_clip:ViT-L-14-336:/models/clip.pt``).

    Raises ValueError (FileNotFoundError for a missing file) saying what is accepted.
    """
    text = os.fspath(spec)
    if not text:
        raise ValueError("no text encoder given: a small-CLIP file or open_clip:MODEL[:FILE]")
    if text.startswith(OPEN_CLIP_PREFIX):
        name, _, ckpt = text[len(OPEN_CLIP_PREFIX) :].partition(":")
        if not name:
            raise ValueError(f"invalid open_clip spec {text!r}: expected open_clip:MODEL[:FILE]")
        from .open_clip_backend import OpenClipEncoder

        return OpenClipEncoder(model_name=name, pretrained=ckpt or None, device=device)
    if not os.path.isfile(text):
        raise FileNotFoundError(
            f"text encoder not found: {text} (a small-CLIP .safetensors file, or "
            f"open_clip:MODEL[:FILE])"
        )
    from .small_clip import load_small_clip

    return load_small_clip(text, device=device)
