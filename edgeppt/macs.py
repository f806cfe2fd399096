"""Multiply-accumulates of an ONNX graph, counted from the graph itself (export's floor column, and the search's
costs of a network that exists only as a graph, such as the source classifier)."""

from __future__ import annotations

import math
from pathlib import Path

import onnx


def onnx_macs(path: str | Path) -> int:
    """Multiply-accumulates of one image through the graph's Conv, Gemm and MatMul nodes (batch dimension 1)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    shapes: dict[str, list[int]] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        shapes[vi.name] = [d.dim_value if d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim]
    for t in g.initializer:
        shapes[t.name] = list(t.dims)
    total = 0
    for node in g.node:
        out = shapes.get(node.output[0])
        if out is None:
            continue
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            w = shapes.get(node.input[3 if node.op_type == "QLinearConv" else 1])
            if w:
                total += math.prod(out) * math.prod(w[1:])
        elif node.op_type in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
            a = shapes.get(node.input[0])
            if a:
                total += math.prod(out) * a[-1]
    return int(total)
