"""What every ONNX graph edgeppt writes declares: one opset for the search's latency probes, the exporter, the
floor's microbenchmarks and the bundle tools, so a latency measured in the search is of the graph that ships; and
where a graph from outside may keep its weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import EdgepptError

OPSET = 20  # TensorRT 10 and onnxruntime >= 1.17 parse it; int8/fp16 conversions keep it
# The IR version of graphs built with onnx.helper: the oldest that declares OPSET. onnx.helper's default is the
# installed onnx package's newest IR, which an older onnxruntime refuses ("Unsupported model IR version: 14, max
# supported IR version: 13", seen with onnx 1.23 beside onnxruntime 1.30 on a GPU machine).
IR_VERSION = 9


def external_files(path: Path, root: Path) -> list[Path]:
    """The files a graph keeps its weights in beside it (ONNX external data), each checked to lie inside `root`:
    a location that is absolute or climbs out of it (`../../etc/passwd`) is refused before any runtime reads it."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf and onnx raise assorted types on a bad file
        raise EdgepptError(f"{path}: not an ONNX graph ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})"
                           ) from None
    found: dict[Path, None] = {}
    graphs = [model.graph, *(_FunctionBody(f) for f in model.functions)]
    for t in (t for g in graphs for t in _tensors(g)):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        where = {e.key: e.value for e in t.external_data}.get("location", "")
        f = (path.parent / where).resolve()
        if not where or Path(where).is_absolute() or not f.is_relative_to(root.resolve()):
            raise EdgepptError(f"{path}: tensor {t.name!r} keeps its data at {where!r}, outside {root}")
        found[f] = None
    return list(found)


class _FunctionBody:
    """A model-local function's nodes, walked as a graph without initializers of its own."""

    def __init__(self, function: Any) -> None:
        self.node = function.node
        self.initializer: list[Any] = []
        self.sparse_initializer: list[Any] = []


def _tensors(graph: Any) -> Iterator[Any]:
    """Every tensor a graph holds: initializers (dense, and the values and indices of sparse ones), constants in
    node attributes, and those of subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield from (attr.sparse_tensor.values, attr.sparse_tensor.indices)
            for sparse in attr.sparse_tensors:
                yield from (sparse.values, sparse.indices)
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub)
