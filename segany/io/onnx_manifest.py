"""The ONNX export folder: its file names, the models' input and output names, and
``manifest.json``, shared by the exporter (:mod:`segany.export`) and the runtime
(:mod:`segany.runtime`). Imports neither torch nor onnx.

A folder written by :func:`segany.export.export_onnx` holds ``decoder.onnx``, usually
``encoder.onnx``, with ``quantize`` also ``decoder.int8.onnx``/``encoder.int8.onnx`` and
``quantization_report.json``, and ``manifest.json``: format and version, the model (name,
fingerprint, sizes, pixel statistics, mask threshold), the export options and, under
``"files"``, one entry per model file (keys ``decoder``, ``encoder``, ``decoder_int8``,
``encoder_int8``, ``decoder_text`` for a model with a text path, ``decoder_image`` and
``decoder_prompt``) with its precision, size, sha256 and input/output specs.
``decoder_text.onnx`` is the text flavour: the official inputs plus ``text_embedding (1, D)``,
the text/region embedding whose token is prepended to the point tokens (``decoder.onnx`` keeps
exactly the official interface). ``decoder_image.onnx`` and ``decoder_prompt.onnx`` are the
decoder split in two for clients that decode many prompts per image (the browser tool): the
image half maps ``image_embeddings`` to :data:`DECODER_SPLIT_INPUTS` once per image, the prompt
half takes :data:`DECODER_PROMPT_INPUTS` and gives :data:`DECODER_PROMPT_OUTPUTS`, the low-res
outputs of the official decoder (:mod:`segany.export.onnx_model`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .files import write_json_atomic

__all__ = [
    "DECODER_FILE",
    "DECODER_IMAGE_FILE",
    "DECODER_INPUTS",
    "DECODER_INT8_FILE",
    "DECODER_OUTPUTS",
    "DECODER_PROMPT_FILE",
    "DECODER_PROMPT_INPUTS",
    "DECODER_PROMPT_OUTPUTS",
    "DECODER_SPLIT_INPUTS",
    "DECODER_TEXT_FILE",
    "DECODER_TEXT_INPUT",
    "ENCODER_FILE",
    "ENCODER_IMAGE_INPUT",
    "ENCODER_INT8_FILE",
    "ENCODER_OUTPUT",
    "ENCODER_TENSOR_INPUT",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "REPORT_FILE",
    "read_manifest",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "segany-onnx"
MANIFEST_VERSION = 1
DECODER_FILE = "decoder.onnx"
ENCODER_FILE = "encoder.onnx"
DECODER_INT8_FILE = "decoder.int8.onnx"
DECODER_TEXT_FILE = "decoder_text.onnx"
DECODER_IMAGE_FILE = "decoder_image.onnx"
DECODER_PROMPT_FILE = "decoder_prompt.onnx"
ENCODER_INT8_FILE = "encoder.int8.onnx"
REPORT_FILE = "quantization_report.json"

#: Inputs of ``decoder.onnx``, in order: the official ``SamOnnxModel`` interface.
DECODER_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
#: The extra last input of ``decoder_text.onnx``: a ``(1, D)`` float text/region embedding.
DECODER_TEXT_INPUT = "text_embedding"
#: Outputs of ``decoder_image.onnx``, the last inputs of ``decoder_prompt.onnx``: the image
#: tokens with the no-mask embedding, float ``(1, He*We, C)`` channels-last, and the first
#: decoder layer's projections of them, each float ``(H, He*We, d)``.
DECODER_SPLIT_INPUTS = ("image_tokens", "image_keys", "image_values", "image_queries")
#: Inputs of ``decoder_prompt.onnx``: the official prompt inputs, then the image half's outputs.
DECODER_PROMPT_INPUTS = (*DECODER_INPUTS[1:5], *DECODER_SPLIT_INPUTS)
#: Outputs of ``decoder_prompt.onnx``: ``decoder.onnx``'s, without the upscaled ``masks``.
DECODER_PROMPT_OUTPUTS = DECODER_OUTPUTS[1:]
ENCODER_IMAGE_INPUT = "image"  # uint8 (H, W, 3), with preprocessing in the graph
ENCODER_TENSOR_INPUT = "images"  # float32 (1, 3, S, S), normalized and padded
ENCODER_OUTPUT = "image_embeddings"


def read_manifest(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``manifest.json`` of an export folder; FileNotFoundError/ValueError if it is not
    one."""
    path = Path(model_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{model_dir} is not an ONNX export folder (no {MANIFEST_NAME}); create one with "
            f"'segany export-onnx --model M --out DIR'"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a segany ONNX manifest")
    return manifest


def write_manifest(out_dir: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` as ``out_dir/manifest.json`` (indented JSON), atomically; returns
    its path."""
    path = Path(out_dir) / MANIFEST_NAME
    write_json_atomic(path, manifest, indent=2, newline=True)
    return path
