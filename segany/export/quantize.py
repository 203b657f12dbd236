"""Dynamic int8 quantization of exported models, and what it costs in accuracy.

:func:`quantize_file` applies ONNX Runtime's dynamic quantization: the weights of ``MatMul`` and
``Conv`` nodes (and of the ``Gemm`` nodes the quantizer turns into ``MatMul``) become int8 with
one scale per output channel, activations are quantized to uint8 at run time. Products of two
activations (attention scores), normalizations, the mask upscaling and the in-graph image
resizing stay in float.

:func:`quantization_report` measures int8 against fp32 on generated scenes
(:func:`segany.data.sample.sample_image`): the IoU between int8 and fp32 masks, the error of the
predicted IoU scores and the relative error of the low-res logits, for the whole int8 pipeline
and for each int8 part alone. With untrained (random) weights the logits hover around the
threshold (|logit| < 1 nearly everywhere), so mask IoU there is a pessimistic figure; the logit
error does not depend on it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..masks import mask_iou
from .files import external_locations, save_model

#: Generated scenes (width, height, seed) used by :func:`quantization_report`.
REPORT_SCENES = ((1024, 768, 0), (800, 600, 1), (600, 900, 2))


def quantize_file(src: str | os.PathLike, dst: str | os.PathLike) -> list[Path]:
    """Dynamic int8 quantization of ``src`` into ``dst``; returns the files written. The
    quantizer writes into a temporary folder beside ``dst``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    external = bool(external_locations(onnx.load(str(src), load_external_data=False)))
    with tempfile.TemporaryDirectory(prefix=f".{dst.name}.", dir=dst.parent) as tmp:
        staged = Path(tmp) / dst.name
        # the quantizer logs a pre-processing hint on the root logger
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(
                src,
                staged,
                op_types_to_quantize=["MatMul", "Conv"],
                per_channel=True,
                # 7-bit weights: ONNX Runtime's u8 x s8 kernels can saturate on x86 CPUs without
                # VNNI (AVX2, AVX512 without VNNI); the full range halved the tiny test model's
                # int8 mask IoU on an AVX2 machine (0.632 vs 0.907 with the reduced range).
                reduce_range=True,
                weight_type=QuantType.QInt8,
                use_external_data_format=external,
                extra_options={"EnableSubgraph": False},
            )
        finally:
            root.setLevel(level)
        proto = onnx.load(str(staged), load_external_data=True)
    # The quantizer re-sorts nodes without counting the outer-scope values that Loop/If bodies
    # read; ONNX Runtime does not mind, but the ONNX checker (and other runtimes) do. The model
    # is then written as every other file (atomically; external data only when needed).
    toposort(proto.graph)
    return save_model(proto, dst)


def _outer_refs(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads from enclosing scopes."""
    produced = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        produced.update(node.output)
        used.update(i for i in node.input if i)
        for sub in _subgraphs(node):
            used |= _outer_refs(sub)
    return used - produced


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    out = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            out.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            out.extend(attr.graphs)
    return out


def toposort(graph: onnx.GraphProto) -> None:
    """Order ``graph.node`` topologically, counting subgraph reads of outer values as inputs
    (stable: nodes keep their relative order where the dependencies allow)."""
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    deps = []
    for node in graph.node:
        need = set(node.input)
        for sub in _subgraphs(node):
            need |= _outer_refs(sub)
        deps.append(need)
    pending = list(range(len(graph.node)))
    order: list[int] = []
    while pending:
        rest = []
        for i in pending:
            if deps[i] <= available:
                order.append(i)
                available.update(graph.node[i].output)
            else:
                rest.append(i)
        if len(rest) == len(pending):
            raise ValueError("graph has a cycle or reads undefined values")
        pending = rest
    nodes = [onnx.NodeProto() for _ in order]
    for dst, i in zip(nodes, order, strict=True):
        dst.CopyFrom(graph.node[i])
    del graph.node[:]
    graph.node.extend(nodes)


def _prompts(objects: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for obj in objects:
        out.append(
            (
                f"point on {obj.name}",
                {
                    "point_coords": np.array([obj.point]),
                    "point_labels": np.array([1]),
                    "multimask_output": True,
                },
            )
        )
        out.append((f"box of {obj.name}", {"box": np.array(obj.box), "multimask_output": False}))
    return out


def _stats(ious: list[float], errs: list[float], logit_err: list[float]) -> dict[str, Any]:
    return {
        "mean_mask_iou": float(np.mean(ious)),
        "min_mask_iou": float(np.min(ious)),
        "mean_abs_iou_score_error": float(np.mean(errs)),
        "max_abs_iou_score_error": float(np.max(errs)),
        "mean_relative_logit_error": float(np.mean(logit_err)),
        "masks": len(ious),
    }


def quantization_report(out_dir: str | os.PathLike, model: Any = None) -> dict[str, Any]:
    """Compare the int8 files of an export folder with the fp32 ones.

    For every scene and every object in it, a point prompt (3 masks) and a box prompt (1 mask)
    are run through: fp32 encoder + fp32 decoder (the reference), int8 encoder + int8 decoder
    (``int8``), fp32 encoder + int8 decoder (``decoder_int8``) and int8 encoder + fp32 decoder
    (``encoder_int8``). Without an exported encoder, ``model`` (a torch ``Sam``) computes the
    fp32 embeddings and only the decoder is compared.
    """
    from ..data.sample import sample_image
    from ..runtime.onnx_predictor import OnnxPredictor

    fp = OnnxPredictor(out_dir)
    q = OnnxPredictor(out_dir, quantized=True)
    both = fp.has_encoder and q.has_encoder
    combos = ["int8", "decoder_int8", "encoder_int8"] if both else ["decoder_int8"]
    ious: dict[str, list[float]] = {c: [] for c in combos}
    errs: dict[str, list[float]] = {c: [] for c in combos}
    logit_errs: dict[str, list[float]] = {c: [] for c in combos}
    logit_scale: list[float] = []
    torch_predictor = None
    if not fp.has_encoder:
        if model is None:
            raise ValueError("an export without encoder needs the torch model for the report")
        from ..predictor import SamPredictor

        torch_predictor = SamPredictor(model)
    for width, height, seed in REPORT_SCENES:
        image, objects = sample_image(width, height, seed)
        if torch_predictor is not None:
            torch_predictor.set_image(image)
            feats_fp = torch_predictor.get_image_embedding().float().cpu().numpy()
            feats_q = None
        else:
            fp.set_image(image)
            feats_fp = fp.get_image_embedding()
            feats_q = None
            if both:
                q.set_image(image)
                feats_q = q.get_image_embedding()
        size = image.shape[:2]
        runs = {
            "reference": (fp, feats_fp),
            "int8": (q, feats_q),
            "decoder_int8": (q, feats_fp),
            "encoder_int8": (fp, feats_q),
        }
        for _, kwargs in _prompts(objects):
            results = {}
            for combo in ["reference", *combos]:
                predictor, feats = runs[combo]
                predictor.set_embedding(feats, size)
                results[combo] = predictor.predict(**kwargs, return_logits=True)
            ref_masks, ref_scores, ref_low = results["reference"]
            logit_scale.append(float(np.abs(ref_low).mean()))
            for combo in combos:
                masks, scores, low = results[combo]
                ious[combo].extend(
                    float(mask_iou(a > 0, b > 0)) for a, b in zip(masks, ref_masks, strict=True)
                )
                errs[combo].extend(np.abs(scores - ref_scores).tolist())
                rms = np.sqrt(((low - ref_low) ** 2).mean(axis=(1, 2)))
                logit_errs[combo].extend(
                    (rms / np.maximum(np.sqrt((ref_low**2).mean(axis=(1, 2))), 1e-12)).tolist()
                )
    parts = {c: _stats(ious[c], errs[c], logit_errs[c]) for c in combos}
    headline = parts["int8" if both else "decoder_int8"]
    return {
        "summary": {
            "compared": "int8 encoder + int8 decoder" if both else "int8 decoder",
            "mean_mask_iou": headline["mean_mask_iou"],
            "mean_abs_iou_score_error": headline["mean_abs_iou_score_error"],
            "mean_relative_logit_error": headline["mean_relative_logit_error"],
        },
        "fp32_mean_abs_low_res_logit": float(np.mean(logit_scale)),
        "parts": parts,
        "scenes": [{"width": w, "height": h, "seed": s} for w, h, s in REPORT_SCENES],
        "prompts": "per object: one foreground point (3 masks) and its box (1 mask)",
        "quantization": "onnxruntime dynamic: MatMul/Conv weights int8 per output channel, "
        "activations uint8 at run time",
        "model_fingerprint": fp.model_fingerprint,
    }
