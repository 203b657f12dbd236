"""Export a SAM model to ONNX: ``encoder.onnx``, ``decoder.onnx`` and ``manifest.json``.

``decoder.onnx`` has the official decoder interface (``segment_anything.utils.onnx``), so clients
written for the official export (the web demo, annotation tools) use it unchanged; see
:mod:`segany.export.onnx_model` for the inputs and outputs. The mask upscaling to
``orig_im_size`` is written as plain ONNX nodes after the traced decoder: only the low-res
rows/columns the un-padded crop reads are upsampled, and the final resize is skipped (an ``If``)
when the input frame already has the original size.

``encoder.onnx`` maps an image to its embedding. With ``preprocess=True`` (default) it takes raw
pixels, ``image`` uint8 ``(H, W, 3)`` RGB of any size, and does inside the graph what
:class:`segany.SamPredictor` does before the encoder: resize so the longest side is ``img_size``
(a re-implementation of Pillow's bilinear, antialiased 8-bit resampling: same coefficients, same
fixed-point rounding, so the resized pixels are bit-identical to ``ResizeLongestSide.apply_image``),
normalize by the pixel mean/std and zero-pad to ``img_size`` square. Without it the input is
``images`` float32 ``(1, 3, S, S)`` already normalized and padded (``Sam.preprocess``).

Models whose weights exceed ~2 GB (vit_h's encoder) are saved with their tensors in one external
data file next to the ``.onnx`` (``encoder.onnx.data``), as ONNX requires.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from .. import __version__
from ..modeling import Sam
from .onnx_model import DecoderOnnxModel, EncoderOnnxModel, use_tanh_gelu

MIN_OPSET = 14
MAX_OPSET = 20  # the highest opset torch's TorchScript exporter writes
DEFAULT_OPSET = 17

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "segany-onnx"
MANIFEST_VERSION = 1
DECODER_FILE = "decoder.onnx"
ENCODER_FILE = "encoder.onnx"
DECODER_INT8_FILE = "decoder.int8.onnx"
ENCODER_INT8_FILE = "encoder.int8.onnx"
REPORT_FILE = "quantization_report.json"

DECODER_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
ENCODER_IMAGE_INPUT = "image"  # uint8 (H, W, 3), with preprocessing in the graph
ENCODER_TENSOR_INPUT = "images"  # float32 (1, 3, S, S), normalized and padded
ENCODER_OUTPUT = "image_embeddings"

#: Weight bytes above which a model is written with external data (protobuf caps at 2 GiB).
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**27

PILLOW_PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit resampling (32 - 8 - 2)

Status = Callable[[str], None]


def _no_status(message: str) -> None:
    pass


# ---------------------------------------------------------------------------- graph building


class _Builder:
    """Appends ONNX nodes with unique, prefixed tensor names."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, value: Any, dtype: Any, hint: str = "const") -> str:
        arr = np.asarray(value, dtype=dtype)
        name = self._name(hint)
        self.nodes.append(
            helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name))
        )
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, **attrs: Any) -> str:
        out = self._name(hint or op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [out], name=out + "_node", **attrs)
        )
        return out

    def op_to(self, op_type: str, inputs: Sequence[str], output: str, **attrs: Any) -> str:
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [output], name=self._name(op_type), **attrs)
        )
        return output


def _pillow_axis(g: _Builder, n: str, m: str) -> tuple[str, str, str]:
    """Coefficients of Pillow's bilinear (triangle-filter, antialiased) resampling of one axis
    from ``n`` to ``m`` samples (0-d int64 tensors), computed as Pillow's ``precompute_coeffs``
    and ``normalize_coeffs_8bpc`` do, in double precision.

    Returns ``idx (m, k)`` int64 source positions, ``kk (m, k)`` fixed-point weights (integers
    stored as double, zero past each output's support) and ``k`` (0-d int64, the taps)."""
    d = TensorProto.DOUBLE
    n_d = g.op("Cast", [n], to=d)
    m_d = g.op("Cast", [m], to=d)
    zero = g.const(0.0, np.float64)
    half = g.const(0.5, np.float64)
    one = g.const(1.0, np.float64)
    scale = g.op("Div", [n_d, m_d], "scale")
    filterscale = g.op("Max", [scale, one], "filterscale")  # support = 1.0 * filterscale
    two_i = g.const(2, np.int64)
    one_i = g.const(1, np.int64)
    zero_i = g.const(0, np.int64)
    ksize = g.op(
        "Add",
        [
            g.op("Mul", [g.op("Cast", [g.op("Ceil", [filterscale])], to=TensorProto.INT64), two_i]),
            one_i,
        ],
        "ksize",
    )
    xx = g.op("Cast", [g.op("Range", [zero_i, m, one_i])], to=d)
    center = g.op("Mul", [g.op("Add", [xx, half]), scale], "center")
    inv = g.op("Div", [one, filterscale], "ss")
    xmin = g.op(
        "Max", [g.op("Floor", [g.op("Add", [g.op("Sub", [center, filterscale]), half])]), zero]
    )
    xend = g.op(
        "Min", [g.op("Floor", [g.op("Add", [g.op("Add", [center, filterscale]), half])]), n_d]
    )
    count = g.op("Sub", [xend, xmin], "xmax")
    taps = g.op("Cast", [g.op("Range", [zero_i, ksize, one_i])], to=d)
    ax0 = g.const([0], np.int64)
    ax1 = g.const([1], np.int64)
    taps_row = g.op("Unsqueeze", [taps, ax0])  # (1, k)
    pos = g.op("Add", [g.op("Unsqueeze", [xmin, ax1]), taps_row], "pos")  # x + xmin, (m, k)
    arg = g.op(
        "Mul",
        [g.op("Add", [g.op("Sub", [pos, g.op("Unsqueeze", [center, ax1])]), half]), inv],
    )
    a = g.op("Abs", [arg])
    w = g.op("Where", [g.op("Less", [a, one]), g.op("Sub", [one, a]), zero])  # triangle filter
    w = g.op("Where", [g.op("Less", [taps_row, g.op("Unsqueeze", [count, ax1])]), w, zero])
    # Pillow sums the weights left to right; a cumulative sum keeps that order exactly.
    total = g.op(
        "Gather", [g.op("CumSum", [w, g.const(1, np.int64)]), g.op("Sub", [ksize, one_i])], axis=1
    )
    total = g.op("Unsqueeze", [total, ax1])
    w = g.op("Where", [g.op("Equal", [total, zero]), w, g.op("Div", [w, total])])
    kk = g.op(
        "Floor",
        [
            g.op(
                "Add",
                [g.op("Mul", [w, g.const(float(1 << PILLOW_PRECISION_BITS), np.float64)]), half],
            )
        ],
        "kk",
    )
    idx = g.op("Cast", [g.op("Min", [pos, g.op("Sub", [n_d, one])])], to=TensorProto.INT64)
    return idx, kk, ksize


def _pillow_pass(
    b: _Builder, src: str, idx: str, kk: str, ksize: str, out_shape: str, tag: str
) -> str:
    """One separable pass of Pillow's 8-bit resampling along axis 0 of a ``(n, X, 3)`` uint8
    tensor (rows are gathered whole, so both passes resample the leading axis): a loop over the
    ``ksize`` taps accumulating ``pixel * weight`` in int32 (exact: at most about 2**30), then
    Pillow's rounding ``(acc + 2**21) >> 22`` clipped to 255."""
    i32 = TensorProto.INT32
    body = _Builder(b.prefix + f"{tag}_")
    it, cond_in, acc_in = (b.prefix + f"{tag}_{s}" for s in ("iter", "cond", "acc"))
    sel = body.op("Gather", [idx, it], axis=1)  # (m,) source rows of tap `it`
    pixels = body.op("Cast", [body.op("Gather", [src, sel], axis=0)], to=i32)
    weight = body.op("Gather", [kk, it], axis=1)  # (m,)
    weight = body.op("Unsqueeze", [weight, body.const([1, 2], np.int64)])
    acc_out = body.op("Add", [acc_in, body.op("Mul", [pixels, weight])])
    cond_out = body.op("Identity", [cond_in])
    graph = helper.make_graph(
        body.nodes,
        f"pillow_{tag}",
        [
            helper.make_tensor_value_info(it, TensorProto.INT64, []),
            helper.make_tensor_value_info(cond_in, TensorProto.BOOL, []),
            helper.make_tensor_value_info(acc_in, i32, [None, None, None]),
        ],
        [
            helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
            helper.make_tensor_value_info(acc_out, i32, [None, None, None]),
        ],
    )
    acc0 = b.op("Expand", [b.const(1 << (PILLOW_PRECISION_BITS - 1), np.int32), out_shape])
    acc = b.op("Loop", [ksize, "", acc0], f"{tag}_loop", body=graph)
    acc = b.op("Div", [acc, b.const(1 << PILLOW_PRECISION_BITS, np.int32)])  # >= 0: floor
    acc = b.op("Min", [acc, b.const(255, np.int32)])
    return b.op("Cast", [acc], to=TensorProto.UINT8)


def _pillow_resample(g: _Builder, src: str, n: str, m: str, other: str, horizontal: bool) -> str:
    """Resample one axis of ``src`` ``(H, W, 3)`` uint8 from ``n`` to ``m`` samples (rows, or
    columns when ``horizontal``) as Pillow does; an ``If`` skips the pass when ``n == m`` (it
    is the identity, and Pillow skips it too). ``other`` is the size of the other axis."""
    idx, kk, ksize = _pillow_axis(g, n, m)
    kk = g.op("Cast", [kk], to=TensorProto.INT32)
    tag = "h" if horizontal else "v"
    ax0 = g.const([0], np.int64)
    shape = g.op(
        "Concat",
        [g.op("Unsqueeze", [m, ax0]), g.op("Unsqueeze", [other, ax0]), g.const([3], np.int64)],
        axis=0,
    )
    same = _Builder(g.prefix + f"{tag}same_")
    same_out = same.op("Identity", [src])
    work = _Builder(g.prefix + f"{tag}pass_")
    if horizontal:
        x = work.op("Transpose", [src], perm=[1, 0, 2])  # (W, H, 3): columns become rows
        x = _pillow_pass(work, x, idx, kk, ksize, shape, tag)
        work_out = work.op("Transpose", [x], perm=[1, 0, 2])
    else:
        work_out = _pillow_pass(work, src, idx, kk, ksize, shape, tag)
    branches = {}
    for key, builder, out in (("then", same, same_out), ("else", work, work_out)):
        branches[key + "_branch"] = helper.make_graph(
            builder.nodes,
            f"{tag}_{key}",
            [],
            [helper.make_tensor_value_info(out, TensorProto.UINT8, [None, None, None])],
        )
    return g.op("If", [g.op("Equal", [n, m])], f"{tag}_resampled", **branches)


def preprocess_nodes(
    g: _Builder,
    image: str,
    output: str,
    img_size: int,
    pixel_mean: Sequence[float],
    pixel_std: Sequence[float],
    resized_output: str | None = None,
) -> None:
    """Append nodes mapping ``image`` uint8 ``(H, W, 3)`` to ``output`` float32
    ``(1, 3, S, S)``: resize the longest side to ``S`` exactly as
    :meth:`segany.transforms.ResizeLongestSide.apply_image` (Pillow) does, normalize, zero-pad.
    ``resized_output`` also names the resized uint8 ``(h, w, 3)`` image (for tests)."""
    d = TensorProto.DOUBLE
    shape = g.op("Shape", [image])
    h = g.op("Gather", [shape, g.const(0, np.int64)], "H")
    w = g.op("Gather", [shape, g.const(1, np.int64)], "W")
    h_d, w_d = g.op("Cast", [h], to=d), g.op("Cast", [w], to=d)
    # get_preprocess_shape: scale = S * 1.0 / max(H, W); int(H * scale + 0.5), in double.
    scale = g.op("Div", [g.const(float(img_size), np.float64), g.op("Max", [h_d, w_d])])
    half = g.const(0.5, np.float64)

    def side(v: str) -> str:
        return g.op(
            "Cast",
            [g.op("Floor", [g.op("Add", [g.op("Mul", [v, scale]), half])])],
            to=TensorProto.INT64,
        )

    oh, ow = side(h_d), side(w_d)
    ax0 = g.const([0], np.int64)
    tmp = _pillow_resample(g, image, w, ow, h, horizontal=True)  # Pillow's order: columns first
    resized = _pillow_resample(g, tmp, h, oh, ow, horizontal=False)
    if resized_output is not None:
        g.op_to("Identity", [resized], resized_output)
    x = g.op("Cast", [resized], to=TensorProto.FLOAT)
    x = g.op("Sub", [x, g.const(list(pixel_mean), np.float32, "pixel_mean")])
    x = g.op("Div", [x, g.const(list(pixel_std), np.float32, "pixel_std")])
    x = g.op("Unsqueeze", [g.op("Transpose", [x], perm=[2, 0, 1]), ax0])  # (1, 3, h, w)
    size = g.const(img_size, np.int64)
    pads = g.op(
        "Concat",
        [
            g.const([0, 0, 0, 0, 0, 0], np.int64),
            g.op("Unsqueeze", [g.op("Sub", [size, oh]), ax0]),
            g.op("Unsqueeze", [g.op("Sub", [size, ow]), ax0]),
        ],
        axis=0,
    )
    g.op_to("Pad", [x, pads], output)


def preprocess_model(
    img_size: int,
    pixel_mean: Sequence[float],
    pixel_std: Sequence[float],
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """A standalone model of the encoder's preprocessing: ``image`` uint8 ``(H, W, 3)`` ->
    ``images`` float32 ``(1, 3, S, S)`` and ``resized`` uint8 ``(h, w, 3)`` (to check it against
    the Pillow path)."""
    g = _Builder("pre/")
    preprocess_nodes(g, "image", "images", img_size, pixel_mean, pixel_std, "resized")
    graph = helper.make_graph(
        g.nodes,
        "segany_preprocess",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["height", "width", 3])],
        [
            helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, img_size, img_size]),
            helper.make_tensor_value_info("resized", TensorProto.UINT8, ["h", "w", 3]),
        ],
    )
    return _finish_model(graph, opset)


def _finish_model(graph: onnx.GraphProto, opset: int) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="segany"
    )
    model.ir_version = min(model.ir_version, 8 if opset <= 18 else 9)
    return model


def mask_postprocess_nodes(
    g: _Builder, low_res: str, orig_im_size: str, output: str, img_size: int, low_size: int
) -> None:
    """Append nodes mapping low-res logits ``(1, M, L, L)`` to ``output`` ``(1, M, H, W)``
    logits for ``orig_im_size`` ``(H, W)`` float, as ``segany.transforms.postprocess_masks``
    (and the official ``SamOnnxModel.mask_postprocessing``) compute them."""
    d = TensorProto.DOUBLE
    i64 = TensorProto.INT64
    orig_d = g.op("Cast", [orig_im_size], to=d)
    scale = g.op(
        "Div", [g.const(float(img_size), np.float64), g.op("ReduceMax", [orig_d], keepdims=0)]
    )
    input_size = g.op(
        "Cast",
        [g.op("Floor", [g.op("Add", [g.op("Mul", [orig_d, scale]), g.const(0.5, np.float64)])])],
        to=i64,
    )  # (h, w), as get_preprocess_shape
    out_size = g.op("Cast", [orig_im_size], to=i64)
    starts = g.const([0, 0], np.int64)
    axes = g.const([2, 3], np.int64)
    factor = img_size // low_size
    if factor * low_size == img_size:
        # Output pixel o < h reads low-res rows floor((o + .5) / f - .5) and the next one.
        need = g.op(
            "Add",
            [
                g.op(
                    "Div",
                    [
                        g.op("Add", [input_size, g.const(factor - 1, np.int64)]),
                        g.const(factor, np.int64),
                    ],
                ),
                g.const(1, np.int64),
            ],
        )
        need = g.op("Min", [need, g.const(low_size, np.int64)])
        part = g.op("Slice", [low_res, starts, need, axes])
        scales = g.const([1.0, 1.0, float(factor), float(factor)], np.float32)
        up = g.op(
            "Resize",
            [part, "", scales],
            mode="linear",
            coordinate_transformation_mode="pytorch_half_pixel",
        )
    else:
        lead = g.op("Gather", [g.op("Shape", [low_res]), g.const([0, 1], np.int64)])
        sizes = g.op("Concat", [lead, g.const([img_size, img_size], np.int64)], axis=0)
        up = g.op(
            "Resize",
            [low_res, "", "", sizes],
            mode="linear",
            coordinate_transformation_mode="pytorch_half_pixel",
        )
    eq = g.op("Equal", [input_size, out_size])
    same = g.op(
        "And",
        [g.op("Gather", [eq, g.const(0, np.int64)]), g.op("Gather", [eq, g.const(1, np.int64)])],
    )
    # The crop is made inside each branch so that the same-size case writes the output once.
    tb = _Builder(g.prefix + "same_")
    then_out = tb.op("Slice", [up, starts, input_size, axes], "crop")
    then_graph = helper.make_graph(
        tb.nodes,
        "same_size",
        [],
        [helper.make_tensor_value_info(then_out, TensorProto.FLOAT, [None] * 4)],
    )
    eb = _Builder(g.prefix + "resize_")
    crop = eb.op("Slice", [up, starts, input_size, axes], "crop")
    lead = eb.op("Gather", [eb.op("Shape", [crop]), eb.const([0, 1], np.int64)])
    sizes = eb.op("Concat", [lead, out_size], axis=0)
    else_out = eb.op(
        "Resize",
        [crop, "", "", sizes],
        mode="linear",
        coordinate_transformation_mode="pytorch_half_pixel",
    )
    else_graph = helper.make_graph(
        eb.nodes,
        "resize_to_original",
        [],
        [helper.make_tensor_value_info(else_out, TensorProto.FLOAT, [None] * 4)],
    )
    g.nodes.append(
        helper.make_node(
            "If",
            [same],
            [output],
            name=g.prefix + "final_resize",
            then_branch=then_graph,
            else_branch=else_graph,
        )
    )


def squeeze_unit_gathers(proto: onnx.ModelProto) -> int:
    """Replace ``Gather(x, 0, axis=0)`` on an ``x`` whose first dimension is 1 by
    ``Squeeze(x, [0])`` (the tracer writes ``t[0]`` as a copying Gather; ONNX Runtime runs a
    Squeeze without copying). Returns the number of nodes replaced."""
    graph = proto.graph
    try:  # onnxruntime's symbolic inference resolves the traced reshapes; onnx's does not
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(proto, auto_merge=True)
    except Exception:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    first_dim: dict[str, int] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value"):
            first_dim[vi.name] = dims[0].dim_value
    for init in graph.initializer:
        if len(init.dims):
            first_dim[init.name] = init.dims[0]
    zeros = {
        init.name
        for init in graph.initializer
        if not init.dims and numpy_helper.to_array(init) == 0
    }
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            t = node.attribute[0].t
            if not t.dims and t.data_type == TensorProto.INT64 and numpy_helper.to_array(t) == 0:
                zeros.add(node.output[0])
    axes_name = "segany_squeeze_axes0"
    replaced = 0
    for i, node in enumerate(graph.node):
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if (
            node.op_type == "Gather"
            and axis == 0
            and node.input[1] in zeros
            and first_dim.get(node.input[0]) == 1
        ):
            graph.node[i].CopyFrom(
                helper.make_node(
                    "Squeeze", [node.input[0], axes_name], list(node.output), name=node.name
                )
            )
            replaced += 1
    if replaced:
        graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), axes_name))
    return replaced


# ---------------------------------------------------------------------------- tracing


@contextlib.contextmanager
def export_copy(model: Sam, gelu_approximate: bool = False) -> Iterator[Sam]:
    """The model in fp32 on the CPU with the reference encoder attention computed in blocks of
    queries (the ``"blocked"`` attention backend: the graph never holds a full global score
    tensor), for tracing.

    A copy is made only when something must change (precision, device, GELU); attention
    backends switched on ``model`` itself are restored afterwards."""
    params = list(model.parameters())
    needs_copy = gelu_approximate or any(
        p.dtype != torch.float32 or p.device.type != "cpu" for p in params
    )
    m = copy.deepcopy(model).float().cpu() if needs_copy else model
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


def _value_info(name: str, elem: int, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def build_decoder(
    model: Sam, *, opset: int = DEFAULT_OPSET, return_single_mask: bool = False, fast: bool = True
) -> onnx.ModelProto:
    """The decoder graph with the official interface (``model`` must be fp32 on the CPU)."""
    pe = model.prompt_encoder
    c = pe.embed_dim
    he, we = pe.image_embedding_size
    low_h, low_w = pe.mask_input_size
    img_size = model.image_encoder.img_size
    if low_h != low_w:
        raise ValueError(f"non-square low-res masks {low_h}x{low_w} are not supported")
    wrapper = DecoderOnnxModel(model, return_single_mask=return_single_mask, fast=fast).eval()
    args = (
        torch.randn(1, c, he, we),
        torch.randint(0, img_size, (1, 5, 2), dtype=torch.float),
        torch.tensor([[1.0, 0.0, 2.0, 3.0, -1.0]]),
        torch.randn(1, 1, low_h, low_w),
        torch.tensor([1.0]),
    )
    names = list(DECODER_INPUTS[:5])
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
    g = _Builder("segany_post/")
    mask_postprocess_nodes(g, "low_res_masks", "orig_im_size", "masks", img_size, low_h)
    graph.node.extend(g.nodes)
    shapes = {
        "image_embeddings": [1, c, he, we],
        "point_coords": [1, "num_points", 2],
        "point_labels": [1, "num_points"],
        "mask_input": [1, 1, low_h, low_w],
        "has_mask_input": [1],
        "orig_im_size": [2],
    }
    del graph.input[:]
    graph.input.extend(_value_info(n, TensorProto.FLOAT, shapes[n]) for n in DECODER_INPUTS)
    del graph.output[:]
    graph.output.extend(
        [
            _value_info("masks", TensorProto.FLOAT, [1, num_masks, "orig_height", "orig_width"]),
            _value_info("iou_predictions", TensorProto.FLOAT, [1, num_masks]),
            _value_info("low_res_masks", TensorProto.FLOAT, [1, num_masks, low_h, low_w]),
        ]
    )
    del graph.value_info[:]
    graph.name = "segany_decoder"
    _set_metadata(proto, model, "decoder")
    return proto


def build_encoder(
    model: Sam, *, opset: int = DEFAULT_OPSET, preprocess: bool = True
) -> onnx.ModelProto:
    """The image-encoder graph (``model`` fp32 on the CPU, eager attention)."""
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
    graph.output.append(_value_info(ENCODER_OUTPUT, TensorProto.FLOAT, [1, c, he, we]))
    if preprocess:
        g = _Builder("segany_pre/")
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
            _value_info(ENCODER_IMAGE_INPUT, TensorProto.UINT8, ["height", "width", 3])
        )
    else:
        del graph.input[:]
        graph.input.append(_value_info(ENCODER_TENSOR_INPUT, TensorProto.FLOAT, [1, 3, s, s]))
    graph.name = "segany_encoder"
    _set_metadata(proto, model, "encoder")
    return proto


def _set_metadata(proto: onnx.ModelProto, model: Sam, part: str) -> None:
    proto.producer_name = "segany"
    proto.producer_version = __version__
    proto.doc_string = f"segany {part} (Segment Anything), img_size {model.image_encoder.img_size}"


def _weight_bytes(proto: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) or t.ByteSize() for t in proto.graph.initializer)


def external_locations(proto: onnx.ModelProto) -> set[str]:
    """Files (relative to the model) holding external tensor data of ``proto``."""
    out = set()
    for t in proto.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            out.update(e.value for e in t.external_data if e.key == "location")
    return out


def save_model(proto: onnx.ModelProto, path: Path) -> list[Path]:
    """Write ``proto`` to ``path``; weights over ~2 GB go to one file ``path.data`` next to it.
    Returns the files written (the model first)."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    if _weight_bytes(proto) > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(
            proto,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
        return [path, data]
    onnx.save_model(proto, str(path))
    return [path]


# ---------------------------------------------------------------------------- manifest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _io_spec(values: Sequence[onnx.ValueInfoProto]) -> list[dict[str, Any]]:
    out = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in t.shape.dim]
        out.append(
            {
                "name": v.name,
                "dtype": helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                "shape": shape,
            }
        )
    return out


def _file_entry(files: list[Path], proto: onnx.ModelProto, precision: str) -> dict[str, Any]:
    main = files[0]
    entry: dict[str, Any] = {
        "file": main.name,
        "precision": precision,
        "bytes": main.stat().st_size,
        "sha256": sha256_file(main),
        "inputs": _io_spec(proto.graph.input),
        "outputs": _io_spec(proto.graph.output),
    }
    if len(files) > 1:
        entry["external_data"] = [
            {"file": f.name, "bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in files[1:]
        ]
    return entry


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


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    path = Path(out_dir) / MANIFEST_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def check_opset(opset: int) -> int:
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be an integer in {MIN_OPSET}..{MAX_OPSET}, got {opset!r}")
    return opset


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

    Writes ``decoder.onnx`` (official decoder interface), ``encoder.onnx`` (unless
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
    from ..io.embedding import model_fingerprint

    check_opset(opset)
    say = status or _no_status
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    for stale in (DECODER_INT8_FILE, ENCODER_INT8_FILE, REPORT_FILE, ENCODER_FILE):
        (out / stale).unlink(missing_ok=True)
        (out / (stale + ".data")).unlink(missing_ok=True)
    files: dict[str, dict[str, Any]] = {}
    with export_copy(model, gelu_approximate) as m:
        pe = m.prompt_encoder
        fingerprint = model_fingerprint(m)
        say(f"exporting decoder (opset {opset}) ...")
        dec = build_decoder(m, opset=opset, return_single_mask=return_single_mask)
        onnx.checker.check_model(dec)
        files["decoder"] = _file_entry(save_model(dec, out / DECODER_FILE), dec, "fp32")
        say(f"wrote {out / DECODER_FILE}")
        del dec
        if encoder:
            say(f"exporting image encoder (opset {opset}) ...")
            enc = build_encoder(m, opset=opset, preprocess=encoder_preprocess)
            enc_files = save_model(enc, out / ENCODER_FILE)
            onnx.checker.check_model(str(enc_files[0]))
            files["encoder"] = _file_entry(enc_files, enc, "fp32")
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
                files[key + "_int8"] = _file_entry(written, proto, "int8")
                say(f"wrote {out / dst}")
            path = write_manifest(out, manifest)
            say("measuring int8 vs fp32 on generated images ...")
            report = quantization_report(out, model=None if encoder else m)
            (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            manifest["quantization_report"] = {"file": REPORT_FILE, **report["summary"]}
            path = write_manifest(out, manifest)
            say(f"wrote {out / REPORT_FILE}")
    return path
