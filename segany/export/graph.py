"""Building ONNX graphs by hand: :class:`GraphBuilder`, the mask upscaling appended to the traced
decoder (:func:`mask_postprocess_nodes`) and a clean-up of traced graphs
(:func:`squeeze_unit_gathers`). The opset range is the one torch's TorchScript exporter writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MIN_OPSET = 14
MAX_OPSET = 20  # the highest opset torch's TorchScript exporter writes
DEFAULT_OPSET = 17


def check_opset(opset: int) -> int:
    """``opset`` if it is an integer in ``MIN_OPSET..MAX_OPSET``; ValueError otherwise."""
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be an integer in {MIN_OPSET}..{MAX_OPSET}, got {opset!r}")
    return opset


class GraphBuilder:
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


def finish_model(graph: onnx.GraphProto, opset: int) -> onnx.ModelProto:
    """A model of ``graph`` at ``opset``, its IR version capped at 8 (opset <= 18) or 9, which
    runtimes of that opset read."""
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="segany"
    )
    model.ir_version = min(model.ir_version, 8 if opset <= 18 else 9)
    return model


def value_info(name: str, elem: int, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    """A tensor input/output ``name`` of element type ``elem`` (a ``TensorProto`` type) and
    ``shape`` (ints, or names of dynamic dimensions)."""
    return helper.make_tensor_value_info(name, elem, list(shape))


def mask_postprocess_nodes(
    g: GraphBuilder, low_res: str, orig_im_size: str, output: str, img_size: int, low_size: int
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
    tb = GraphBuilder(g.prefix + "same_")
    then_out = tb.op("Slice", [up, starts, input_size, axes], "crop")
    then_graph = helper.make_graph(
        tb.nodes,
        "same_size",
        [],
        [helper.make_tensor_value_info(then_out, TensorProto.FLOAT, [None] * 4)],
    )
    eb = GraphBuilder(g.prefix + "resize_")
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
