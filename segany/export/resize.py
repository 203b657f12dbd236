"""Pillow's bilinear resampling as ONNX nodes: the encoder's in-graph preprocessing.

:func:`preprocess_nodes` maps raw pixels ``image`` uint8 ``(H, W, 3)`` to the encoder input
``(1, 3, S, S)``: resize so the longest side is ``S`` with a re-implementation of Pillow's
bilinear, antialiased 8-bit resampling (same coefficients, same fixed-point rounding, so the
resized pixels are bit-identical to :meth:`segany.transforms.ResizeLongestSide.apply_image`),
normalize by the pixel mean/std and zero-pad.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from .graph import DEFAULT_OPSET, GraphBuilder, finish_model

PILLOW_PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit resampling (32 - 8 - 2)


def _pillow_axis(g: GraphBuilder, n: str, m: str) -> tuple[str, str, str]:
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
    b: GraphBuilder, src: str, idx: str, kk: str, ksize: str, out_shape: str, tag: str
) -> str:
    """One separable pass of Pillow's 8-bit resampling along axis 0 of a ``(n, X, 3)`` uint8
    tensor (rows are gathered whole, so both passes resample the leading axis): a loop over the
    ``ksize`` taps accumulating ``pixel * weight`` in int32 (exact: at most about 2**30), then
    Pillow's rounding ``(acc + 2**21) >> 22`` clipped to 255."""
    i32 = TensorProto.INT32
    body = GraphBuilder(b.prefix + f"{tag}_")
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


def _pillow_resample(
    g: GraphBuilder, src: str, n: str, m: str, other: str, horizontal: bool
) -> str:
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
    same = GraphBuilder(g.prefix + f"{tag}same_")
    same_out = same.op("Identity", [src])
    work = GraphBuilder(g.prefix + f"{tag}pass_")
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
    g: GraphBuilder,
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
    g = GraphBuilder("pre/")
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
    return finish_model(graph, opset)
