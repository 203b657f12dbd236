"""Export a SAM model to ONNX: ``encoder.onnx``, ``decoder.onnx`` and ``manifest.json``.

``decoder.onnx`` has the official decoder interface (``segment_anything.utils.onnx``), so clients
written for the official export (the web demo, annotation tools) use it unchanged; see
:mod:`segany.export.onnx_model` for the inputs and outputs. The mask upscaling to
``orig_im_size`` is written as plain ONNX nodes after the traced decoder
(:func:`segany.export.graph.mask_postprocess_nodes`): only the low-res rows/columns the
un-padded crop reads are upsampled, and the final resize is skipped (an ``If``) when the input
frame already has the original size.

``encoder.onnx`` maps an image to its embedding. With ``preprocess=True`` (default) it takes raw
pixels, ``image`` uint8 ``(H, W, 3)`` RGB of any size, and does inside the graph what
:class:`segany.SamPredictor` does before the encoder: resize so the longest side is ``img_size``
exactly as Pillow does (:mod:`segany.export.resize`), normalize by the pixel mean/std and
zero-pad to ``img_size`` square. Without it the input is ``images`` float32 ``(1, 3, S, S)``
already normalized and padded (``Sam.preprocess``).

The folder layout and the manifest are described in :mod:`segany.io.onnx_manifest`; the files
are written by :mod:`segany.export.files`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import TensorProto

from .. import __version__
from ..io.embedding import model_fingerprint
from ..io.files import write_json_atomic
from ..io.onnx_manifest import (
    DECODER_FILE,
    DECODER_IMAGE_FILE,
    DECODER_INPUTS,
    DECODER_INT8_FILE,
    DECODER_OUTPUTS,
    DECODER_PROMPT_FILE,
    DECODER_PROMPT_INPUTS,
    DECODER_PROMPT_OUTPUTS,
    DECODER_SPLIT_INPUTS,
    DECODER_TEXT_FILE,
    DECODER_TEXT_INPUT,
    ENCODER_FILE,
    ENCODER_IMAGE_INPUT,
    ENCODER_INT8_FILE,
    ENCODER_OUTPUT,
    ENCODER_TENSOR_INPUT,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    REPORT_FILE,
    write_manifest,
)
from ..modeling import Sam
from .files import file_entry, save_model
from .graph import (
    DEFAULT_OPSET,
    MAX_OPSET,
    MIN_OPSET,
    GraphBuilder,
    check_opset,
    mask_postprocess_nodes,
    squeeze_unit_gathers,
    value_info,
)
from .onnx_model import (
    DecoderImageOnnxModel,
    DecoderOnnxModel,
    DecoderPromptOnnxModel,
    EncoderOnnxModel,
    use_tanh_gelu,
)
from .resize import preprocess_nodes

__all__ = [
    "DEFAULT_OPSET",
    "MAX_OPSET",
    "MIN_OPSET",
    "build_decoder",
    "build_encoder",
    "check_opset",
    "export_copy",
    "export_onnx",
]


Status = Callable[[str], None]


def _no_status(message: str) -> None:
    pass


# ---------------------------------------------------------------------------- tracing


@contextlib.contextmanager
def export_copy(model: Sam, gelu_approximate: bool = False) -> Iterator[Sam]:
    """The model in fp32 on the CPU with the reference encoder attention computed in blocks of
    queries (the ``"blocked"`` attention backend: the graph never holds a full global score
    tensor), for tracing.

    A copy is made only when something must change (precision, int8 layers, device, GELU);
    attention backends switched on ``model`` itself are restored afterwards."""
    from ..quantize import dequantize_encoder, is_quantized

    params = list(model.parameters())
    int8 = is_quantized(model)
    needs_copy = (
        gelu_approximate
        or int8
        or any(p.dtype != torch.float32 or p.device.type != "cpu" for p in params)
    )
    m = copy.deepcopy(model) if needs_copy else model
    if int8:
        dequantize_encoder(m)
    m = m.float().cpu() if needs_copy else m
    if gelu_approximate:
        use_tanh_gelu(m)
    blocks = list(m.image_encoder.blocks)
    saved = [blk.attn.backend for blk in blocks]
    try:
        m.image_encoder.set_attention_backend("blocked")
        yield m
    finally:
        for blk, backend in zip(blocks, saved, strict=True):
            blk.attn.backend = backend


def _trace(module: torch.nn.Module, args: tuple, opset: int, **kwargs: Any) -> onnx.ModelProto:
    """Trace with torch's TorchScript-based exporter (the one the official export script uses;
    it writes any opset 14..20 natively) and return the ModelProto, weights included."""
    with tempfile.TemporaryDirectory(prefix="segany_onnx_") as tmp, warnings.catch_warnings():
        # The TorchScript exporter's deprecation notice and tracer warnings about Python values
        # (sizes that are constant for a given model) would only alarm users.
        warnings.simplefilter("ignore")
        path = Path(tmp) / "model.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=False,
                opset_version=opset,
                do_constant_folding=True,
                **kwargs,
            )
        return onnx.load(str(path), load_external_data=True)


def build_decoder(
    model: Sam,
    *,
    opset: int = DEFAULT_OPSET,
    return_single_mask: bool = False,
    fast: bool = True,
    text: bool = False,
) -> onnx.ModelProto:
    """The decoder graph with the official interface (``model`` must be fp32 on the CPU); with
    ``text`` the text flavour, which also takes ``text_embedding (1, D)`` last."""
    pe = model.prompt_encoder
    c = pe.embed_dim
    he, we = pe.image_embedding_size
    low_h, low_w = pe.mask_input_size
    img_size = model.image_encoder.img_size
    if low_h != low_w:
        raise ValueError(f"non-square low-res masks {low_h}x{low_w} are not supported")
    wrapper = DecoderOnnxModel(
        model, return_single_mask=return_single_mask, fast=fast, text=text
    ).eval()
    args: tuple[torch.Tensor, ...] = (torch.randn(1, c, he, we), *_prompt_args(model))
    names = list(DECODER_INPUTS[:5])
    inputs = list(DECODER_INPUTS)
    if text:
        args = (*args, torch.randn(1, int(pe.text_embed_dim)))
        names.append(DECODER_TEXT_INPUT)
        inputs.append(DECODER_TEXT_INPUT)
    proto = _trace(
        wrapper,
        args,
        opset,
        input_names=names,
        output_names=["low_res_masks", "iou_predictions"],
        dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
    )
    squeeze_unit_gathers(proto)
    graph = proto.graph
    num_masks = 1 if return_single_mask else model.mask_decoder.num_mask_tokens
    g = GraphBuilder("segany_post/")
    mask_postprocess_nodes(g, "low_res_masks", "orig_im_size", "masks", img_size, low_h)
    graph.node.extend(g.nodes)
    shapes = {
        "image_embeddings": [1, c, he, we],
        **_prompt_shapes(model, num_masks),
        "orig_im_size": [2],
        DECODER_TEXT_INPUT: [1, pe.text_embed_dim],
        "masks": [1, num_masks, "orig_height", "orig_width"],
    }
    _set_io(graph, inputs, DECODER_OUTPUTS, shapes)
    graph.name = "segany_decoder_text" if text else "segany_decoder"
    _set_metadata(proto, model, "decoder")
    return proto


def _prompt_args(model: Sam) -> tuple[torch.Tensor, ...]:
    """Example ``point_coords``, ``point_labels``, ``mask_input``, ``has_mask_input`` to trace
    a decoder with: 5 points (a box among them), a mask."""
    low_h, low_w = model.prompt_encoder.mask_input_size
    return (
        torch.randint(0, model.image_encoder.img_size, (1, 5, 2), dtype=torch.float),
        torch.tensor([[1.0, 0.0, 2.0, 3.0, -1.0]]),
        torch.randn(1, 1, low_h, low_w),
        torch.tensor([1.0]),
    )


def _prompt_shapes(model: Sam, num_masks: int | None = None) -> dict[str, list[Any]]:
    """The declared shapes of the decoder's prompt inputs and low-res outputs."""
    low_h, low_w = model.prompt_encoder.mask_input_size
    m = model.mask_decoder.num_mask_tokens if num_masks is None else num_masks
    return {
        "point_coords": [1, "num_points", 2],
        "point_labels": [1, "num_points"],
        "mask_input": [1, 1, low_h, low_w],
        "has_mask_input": [1],
        "iou_predictions": [1, m],
        "low_res_masks": [1, m, low_h, low_w],
    }


def _set_io(graph: onnx.GraphProto, inputs, outputs, shapes: dict[str, list[Any]]) -> None:
    """Declare ``graph``'s float inputs and outputs, in these orders, with ``shapes``."""
    del graph.input[:]
    graph.input.extend(value_info(n, TensorProto.FLOAT, shapes[n]) for n in inputs)
    del graph.output[:]
    graph.output.extend(value_info(n, TensorProto.FLOAT, shapes[n]) for n in outputs)
    del graph.value_info[:]


def build_decoder_image(model: Sam, *, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The image half of the split decoder (``decoder_image.onnx``): ``image_embeddings
    (1, C, He, We)`` -> :data:`~segany.io.onnx_manifest.DECODER_SPLIT_INPUTS`, for
    :func:`build_decoder_prompt`."""
    pe = model.prompt_encoder
    c = pe.embed_dim
    he, we = pe.image_embedding_size
    wrapper = DecoderImageOnnxModel(model).eval()
    emb = torch.randn(1, c, he, we)
    outputs = wrapper(emb)
    proto = _trace(
        wrapper,
        (emb,),
        opset,
        input_names=[DECODER_INPUTS[0]],
        output_names=list(DECODER_SPLIT_INPUTS),
    )
    shapes = {n: list(t.shape) for n, t in zip(DECODER_SPLIT_INPUTS, outputs, strict=True)}
    shapes[DECODER_INPUTS[0]] = [1, c, he, we]
    _set_io(proto.graph, DECODER_INPUTS[:1], DECODER_SPLIT_INPUTS, shapes)
    proto.graph.name = "segany_decoder_image"
    _set_metadata(proto, model, "decoder_image")
    return proto


def build_decoder_prompt(
    model: Sam, *, opset: int = DEFAULT_OPSET, return_single_mask: bool = False
) -> onnx.ModelProto:
    """The prompt half of the split decoder (``decoder_prompt.onnx``):
    :data:`~segany.io.onnx_manifest.DECODER_PROMPT_INPUTS` (the official prompt inputs, then
    :func:`build_decoder_image`'s outputs) ->
    :data:`~segany.io.onnx_manifest.DECODER_PROMPT_OUTPUTS` (``decoder.onnx``'s
    ``iou_predictions`` and ``low_res_masks``)."""
    c = model.prompt_encoder.embed_dim
    he, we = model.prompt_encoder.image_embedding_size
    wrapper = DecoderPromptOnnxModel(model, return_single_mask=return_single_mask).eval()
    split = DecoderImageOnnxModel(model)(torch.randn(1, c, he, we))
    proto = _trace(
        wrapper,
        (*_prompt_args(model), *split),
        opset,
        input_names=list(DECODER_PROMPT_INPUTS),
        output_names=["low_res_masks", "iou_predictions"],
        dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
    )
    squeeze_unit_gathers(proto)
    shapes = _prompt_shapes(model, 1 if return_single_mask else None)
    shapes.update((n, list(t.shape)) for n, t in zip(DECODER_SPLIT_INPUTS, split, strict=True))
    _set_io(proto.graph, DECODER_PROMPT_INPUTS, DECODER_PROMPT_OUTPUTS, shapes)
    proto.graph.name = "segany_decoder_prompt"
    _set_metadata(proto, model, "decoder_prompt")
    return proto


def build_encoder(
    model: Sam, *, opset: int = DEFAULT_OPSET, preprocess: bool = True
) -> onnx.ModelProto:
    """The image-encoder graph (``model`` fp32 on the CPU, inside :func:`export_copy`)."""
    s = model.image_encoder.img_size
    c = model.prompt_encoder.embed_dim
    he, we = model.prompt_encoder.image_embedding_size
    proto = _trace(
        EncoderOnnxModel(model).eval(),
        (torch.randn(1, 3, s, s),),
        opset,
        input_names=[ENCODER_TENSOR_INPUT],
        output_names=[ENCODER_OUTPUT],
    )
    graph = proto.graph
    del graph.output[:]
    graph.output.append(value_info(ENCODER_OUTPUT, TensorProto.FLOAT, [1, c, he, we]))
    if preprocess:
        g = GraphBuilder("segany_pre/")
        preprocess_nodes(
            g,
            ENCODER_IMAGE_INPUT,
            ENCODER_TENSOR_INPUT,
            s,
            model.pixel_mean.flatten().tolist(),
            model.pixel_std.flatten().tolist(),
        )
        nodes = list(g.nodes) + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
        del graph.input[:]
        graph.input.append(
            value_info(ENCODER_IMAGE_INPUT, TensorProto.UINT8, ["height", "width", 3])
        )
    else:
        del graph.input[:]
        graph.input.append(value_info(ENCODER_TENSOR_INPUT, TensorProto.FLOAT, [1, 3, s, s]))
    graph.name = "segany_encoder"
    _set_metadata(proto, model, "encoder")
    return proto


def _set_metadata(proto: onnx.ModelProto, model: Sam, part: str) -> None:
    proto.producer_name = "segany"
    proto.producer_version = __version__
    proto.doc_string = f"segany {part} (Segment Anything), img_size {model.image_encoder.img_size}"


def _guess_name(model: Sam) -> str:
    from ..config import VARIANTS

    enc = model.image_encoder
    for name, cfg in VARIANTS.items():
        e = cfg.image_encoder
        if (
            enc.img_size == e.img_size
            and len(enc.blocks) == e.depth
            and enc.patch_embed.proj.out_channels == e.embed_dim
        ):
            return name
    return "custom"


# ---------------------------------------------------------------------------- entry point


def export_onnx(
    model: Sam,
    out_dir: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    quantize: bool = False,
    return_single_mask: bool = False,
    gelu_approximate: bool = False,
    encoder: bool = True,
    encoder_preprocess: bool = True,
    name: str | None = None,
    status: Status | None = None,
) -> Path:
    """Export ``model`` to ``out_dir`` and return the path of its ``manifest.json``.

    Writes ``decoder.onnx`` (official decoder interface), ``decoder_image.onnx`` and
    ``decoder_prompt.onnx`` (the same decoder split in two: per image, then per prompt; see
    :mod:`segany.export.onnx_model`), for a model with a text path also
    ``decoder_text.onnx`` (the same plus ``text_embedding (1, D)``), ``encoder.onnx`` (unless
    ``encoder=False``; raw uint8 pixels in unless ``encoder_preprocess=False``), with
    ``quantize`` also ``decoder.int8.onnx``/``encoder.int8.onnx`` (dynamic int8 quantization)
    and ``quantization_report.json`` (int8 vs fp32 on generated images), and ``manifest.json``
    (sizes, pixel statistics, opset, per-file precision, sha256, input/output names, model
    fingerprint). ``model`` may be in any precision or device: an fp32 CPU copy is exported.

    Args:
        opset: ONNX opset, 14..20 (17, as the official export script).
        return_single_mask: the decoder returns only the mask the official
            ``return_single_mask`` logic picks, instead of every mask token.
        gelu_approximate: use the tanh approximation of GELU (for runtimes without ``Erf``).
        name: model name recorded in the manifest (default: the variant the sizes match, else
            ``"custom"``).
        status: called with progress lines (default: silent).
    """
    check_opset(opset)
    say = status or _no_status
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    for stale in (
        DECODER_INT8_FILE,
        ENCODER_INT8_FILE,
        REPORT_FILE,
        ENCODER_FILE,
        DECODER_TEXT_FILE,
    ):
        (out / stale).unlink(missing_ok=True)
        (out / (stale + ".data")).unlink(missing_ok=True)
    files: dict[str, dict[str, Any]] = {}
    with export_copy(model, gelu_approximate) as m:
        pe = m.prompt_encoder
        fingerprint = model_fingerprint(m)
        say(f"exporting decoder (opset {opset}) ...")
        dec = build_decoder(m, opset=opset, return_single_mask=return_single_mask)
        onnx.checker.check_model(dec)
        files["decoder"] = file_entry(save_model(dec, out / DECODER_FILE), dec, "fp32")
        say(f"wrote {out / DECODER_FILE}")
        del dec
        say("exporting the split decoder (image and prompt halves) ...")
        for key, file, proto in (
            ("decoder_image", DECODER_IMAGE_FILE, build_decoder_image(m, opset=opset)),
            (
                "decoder_prompt",
                DECODER_PROMPT_FILE,
                build_decoder_prompt(m, opset=opset, return_single_mask=return_single_mask),
            ),
        ):
            onnx.checker.check_model(proto)
            files[key] = file_entry(save_model(proto, out / file), proto, "fp32")
            say(f"wrote {out / file}")
            del proto
        if pe.has_text:
            say("exporting the text flavour of the decoder ...")
            dec = build_decoder(m, opset=opset, return_single_mask=return_single_mask, text=True)
            onnx.checker.check_model(dec)
            entry = file_entry(save_model(dec, out / DECODER_TEXT_FILE), dec, "fp32")
            files["decoder_text"] = entry
            say(f"wrote {out / DECODER_TEXT_FILE}")
            del dec
        if encoder:
            say(f"exporting image encoder (opset {opset}) ...")
            enc = build_encoder(m, opset=opset, preprocess=encoder_preprocess)
            enc_files = save_model(enc, out / ENCODER_FILE)
            onnx.checker.check_model(str(enc_files[0]))
            files["encoder"] = file_entry(enc_files, enc, "fp32")
            say(f"wrote {out / ENCODER_FILE}")
            del enc
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "model": name or _guess_name(model),
            "segany_version": __version__,
            "model_fingerprint": fingerprint,
            "opset": opset,
            "img_size": int(m.image_encoder.img_size),
            "pixel_mean": [float(v) for v in m.pixel_mean.flatten().tolist()],
            "pixel_std": [float(v) for v in m.pixel_std.flatten().tolist()],
            "mask_threshold": float(m.mask_threshold),
            "embedding_shape": [1, int(pe.embed_dim), *map(int, pe.image_embedding_size)],
            "low_res_mask_size": [int(v) for v in pe.mask_input_size],
            "num_mask_tokens": int(m.mask_decoder.num_mask_tokens),
            "text_embed_dim": None if pe.text_embed_dim is None else int(pe.text_embed_dim),
            "return_single_mask": bool(return_single_mask),
            "gelu_approximate": bool(gelu_approximate),
            "encoder_preprocess": bool(encoder and encoder_preprocess),
            "point_coords_frame": "input",
            "files": files,
        }
        path = write_manifest(out, manifest)
        if quantize:
            from .quantize import quantization_report, quantize_file

            for key, src, dst in (
                ("decoder", DECODER_FILE, DECODER_INT8_FILE),
                ("encoder", ENCODER_FILE, ENCODER_INT8_FILE),
            ):
                if key not in files:
                    continue
                say(f"quantizing {src} to int8 ...")
                written = quantize_file(out / src, out / dst)
                proto = onnx.load(str(written[0]), load_external_data=False)
                files[key + "_int8"] = file_entry(written, proto, "int8")
                say(f"wrote {out / dst}")
            path = write_manifest(out, manifest)
            say("measuring int8 vs fp32 on generated images ...")
            report = quantization_report(out, model=None if encoder else m)
            write_json_atomic(out / REPORT_FILE, report, indent=2, newline=True)
            manifest["quantization_report"] = {"file": REPORT_FILE, **report["summary"]}
            path = write_manifest(out, manifest)
            say(f"wrote {out / REPORT_FILE}")
    return path
