"""The `onnx_graph` family: a trainable torch network rebuilt from an ONNX classifier graph.

This is how a source bundle's classifier C becomes a model that fine-tuning can train (`--method ft`, `l2sp`,
`tred`) without unpickling anything: `from_onnx` reads the graph with `onnx` (a protobuf, no code), keeps the
nodes that compute C's features, and returns a frozen architecture (JSON: nodes, attributes, parameter
shapes, small constants, C's input normalisation) plus the weights. `create_model` rebuilds the network from
that JSON like any other family, so transfer's model.pt, export and the device runner treat it as usual; the
linear head over the features is new (the target classes differ from C's).

The operators covered are those of the usual exported CNNs (below, `OPS`); anything else is a one-line error
naming the operator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EdgepptError
from .base import ClassifierNet
from .registry import register_family

Tensor = torch.Tensor
Op = Callable[[list[Any], dict[str, Any]], Any]


class _Ints(list):
    """A small integer vector (a shape, axes, pads) kept in Python, not in a tensor: torch.export traces it as
    constants (or symbolic sizes), where reading a tensor's values would be data-dependent."""

    def __init__(self, values, scalar: bool = False):
        super().__init__(values)
        self.scalar = scalar

    def tolist(self) -> list:
        return list(self)


def _pads2d(x: Tensor, a: dict[str, Any], value: float = 0.0) -> tuple[Tensor, tuple[int, int]]:
    """ONNX pads [top, left, bottom, right]: symmetric ones go to the op, others to an explicit F.pad."""
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise EdgepptError(f"auto_pad={a['auto_pad']} is not supported; export the classifier with explicit pads")
    t, left, b, r = a.get("pads", [0, 0, 0, 0]) if a.get("auto_pad", "NOTSET") == "NOTSET" else [0, 0, 0, 0]
    if (t, left) == (b, r):
        return x, (t, left)
    return F.pad(x, (left, r, t, b), value=value), (0, 0)


def _conv(i: list[Any], a: dict[str, Any]) -> Tensor:
    if len(a.get("kernel_shape", i[1].shape[2:])) != 2:
        raise EdgepptError("only 2-D Conv is supported")
    x, pad = _pads2d(i[0], a)
    return F.conv2d(x, i[1], i[2] if len(i) > 2 else None, a.get("strides", [1, 1]), pad,
                    a.get("dilations", [1, 1]), a.get("group", 1))


def _gemm(i: list[Any], a: dict[str, Any]) -> Tensor:
    A = i[0].transpose(0, 1) if a.get("transA", 0) else i[0]
    B = i[1].transpose(0, 1) if a.get("transB", 0) else i[1]
    out = a.get("alpha", 1.0) * (A @ B)
    return out + a.get("beta", 1.0) * i[2] if len(i) > 2 and i[2] is not None else out


def _pool(kind: str) -> Op:
    def op(i: list[Any], a: dict[str, Any]) -> Tensor:
        x, pad = _pads2d(i[0], a, -math.inf if kind == "max" else 0.0)
        k, s = a["kernel_shape"], a.get("strides", [1, 1])
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "max":
            return F.max_pool2d(x, k, s, pad, a.get("dilations", [1, 1]), ceil_mode=ceil)
        return F.avg_pool2d(x, k, s, pad, ceil_mode=ceil, count_include_pad=bool(a.get("count_include_pad", 0)))
    return op


def _axes(i: list[Any], a: dict[str, Any]) -> list[int] | None:
    """Reduce/Squeeze/Unsqueeze axes: an attribute before opset 13/18, an input after."""
    if len(i) > 1 and i[1] is not None:
        return list(i[1].tolist())
    return a.get("axes")


def _reduce(fn: Callable[..., Tensor]) -> Op:
    def op(i: list[Any], a: dict[str, Any]) -> Tensor:
        axes = _axes(i, a)
        if axes is None:
            axes = list(range(i[0].dim())) if not a.get("noop_with_empty_axes", 0) else []
        return fn(i[0], dim=axes, keepdim=bool(a.get("keepdims", 1))) if axes else i[0]
    return op


def _reshape(i: list[Any], a: dict[str, Any]) -> Any:
    if isinstance(i[0], _Ints):  # a shape vector reshaped (to 1-D): still a shape vector
        return _Ints(i[0])
    shape = list(i[1].tolist())
    if not a.get("allowzero", 0):
        shape = [i[0].shape[d] if v == 0 else v for d, v in enumerate(shape)]
    return i[0].reshape(shape)


def _flatten(i: list[Any], a: dict[str, Any]) -> Tensor:
    axis = a.get("axis", 1) % max(i[0].dim(), 1)
    return i[0].reshape(math.prod(i[0].shape[:axis]), -1) if axis else i[0].reshape(1, -1)


def _clip(i: list[Any], a: dict[str, Any]) -> Tensor:
    lo = i[1] if len(i) > 1 and i[1] is not None else a.get("min")
    hi = i[2] if len(i) > 2 and i[2] is not None else a.get("max")
    return torch.clamp(i[0], None if lo is None else float(lo), None if hi is None else float(hi))


def _unsqueeze(i: list[Any], a: dict[str, Any]) -> Any:
    x = i[0]
    if isinstance(x, _Ints):
        return _Ints(x)
    for ax in sorted(d % (x.dim() + 1) for d in _axes(i, a) or []):
        x = x.unsqueeze(ax)
    return x


def _squeeze(i: list[Any], a: dict[str, Any]) -> Any:
    if isinstance(i[0], _Ints):
        return _Ints(i[0], scalar=len(i[0]) == 1)
    axes = _axes(i, a)
    return i[0].squeeze() if axes is None else i[0].squeeze(tuple(axes))


def _batchnorm(i: list[Any], a: dict[str, Any]) -> Tensor:
    x, scale, bias, mean, var = i[:5]
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=a.get("epsilon", 1e-5))


def _pad(i: list[Any], a: dict[str, Any]) -> Tensor:
    if a.get("mode", "constant") != "constant":
        raise EdgepptError(f"Pad mode {a['mode']!r} is not supported")
    pads = [int(v) for v in (i[1].tolist() if len(i) > 1 else a["pads"])]
    n = len(pads) // 2
    torch_pads: list[int] = []
    for d in reversed(range(n)):
        torch_pads += [pads[d], pads[d + n]]
    value = float(i[2]) if len(i) > 2 and i[2] is not None else 0.0
    return F.pad(i[0], torch_pads, value=value)


# ONNX TensorProto element types -> torch dtypes (Cast's `to`)
_DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64}


def _shape(i: list[Any], a: dict[str, Any]) -> _Ints:
    return _Ints(list(i[0].shape)[a.get("start", 0):a.get("end", None)])


def _gather(i: list[Any], a: dict[str, Any]) -> Any:
    if isinstance(i[0], _Ints):  # picking sizes out of a shape
        picks = i[1] if isinstance(i[1], _Ints) else _Ints(i[1].reshape(-1).tolist(), i[1].dim() == 0)
        return _Ints([i[0][k] for k in picks], scalar=picks.scalar)
    if isinstance(i[1], _Ints):
        i = [i[0], torch.tensor(i[1]) if not i[1].scalar else torch.tensor(i[1][0])]
    data, idx, axis = i[0], i[1].long(), a.get("axis", 0) % i[0].dim()
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    out = data.index_select(axis, idx.reshape(-1))
    return out.reshape([*data.shape[:axis], *idx.shape, *data.shape[axis + 1:]])


def _slice(i: list[Any], a: dict[str, Any]) -> Any:
    x = i[0]
    starts, ends = list(i[1].tolist()), list(i[2].tolist())
    axes = list(i[3].tolist()) if len(i) > 3 and i[3] is not None else list(range(len(starts)))
    steps = list(i[4].tolist()) if len(i) > 4 and i[4] is not None else [1] * len(starts)
    if isinstance(x, _Ints):
        return _Ints(x[slice(starts[0], min(ends[0], len(x)), steps[0])])
    index = [slice(None)] * x.dim()
    for s0, e0, ax, st in zip(starts, ends, axes, steps):
        if st != 1:
            raise EdgepptError("Slice with steps other than 1 is not supported")
        n = x.shape[ax]
        index[ax % x.dim()] = slice(max(-n, min(s0, n)), max(-n, min(e0, n)))
    return x[tuple(index)]


def _constant_of_shape(i: list[Any], a: dict[str, Any]) -> Tensor:
    value = a.get("value", [0.0])
    return torch.full(list(i[0].tolist()), float(np.asarray(value).reshape(-1)[0]))


OPS: dict[str, Op] = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": lambda i, a: i[0] @ i[1],
    "Add": lambda i, a: i[0] + i[1],
    "Sub": lambda i, a: i[0] - i[1],
    "Mul": lambda i, a: i[0] * i[1],
    "Div": lambda i, a: i[0] / i[1],
    "Relu": lambda i, a: F.relu(i[0]),
    "LeakyRelu": lambda i, a: F.leaky_relu(i[0], a.get("alpha", 0.01)),
    "Sigmoid": lambda i, a: torch.sigmoid(i[0]),
    "Tanh": lambda i, a: torch.tanh(i[0]),
    "HardSigmoid": lambda i, a: torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0, 1),
    "HardSwish": lambda i, a: F.hardswish(i[0]),
    "Elu": lambda i, a: F.elu(i[0], a.get("alpha", 1.0)),
    "Clip": _clip,
    "BatchNormalization": _batchnorm,
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": lambda i, a: i[0].mean((2, 3), keepdim=True),
    "GlobalMaxPool": lambda i, a: i[0].amax((2, 3), keepdim=True),
    "ReduceMean": _reduce(torch.mean),
    "ReduceMax": _reduce(torch.amax),
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Transpose": lambda i, a: i[0].permute(a["perm"]) if "perm" in a else i[0].permute(*reversed(range(i[0].dim()))),
    "Concat": lambda i, a: _Ints([v for t in i for v in t]) if all(isinstance(t, _Ints) for t in i)
    else torch.cat([t for t in i if t is not None], a["axis"]),
    "Softmax": lambda i, a: torch.softmax(i[0], a.get("axis", -1)),
    "Identity": lambda i, a: i[0],
    "Dropout": lambda i, a: i[0],
    "Pad": _pad,
    # shape arithmetic, as unoptimised dynamic-batch exports emit it
    "Shape": _shape,
    "Gather": _gather,
    "Slice": _slice,
    "Expand": lambda i, a: i[0].expand(torch.broadcast_shapes(i[0].shape, tuple(i[1].tolist()))),
    "Cast": lambda i, a: i[0] if isinstance(i[0], _Ints) else i[0].to(_DTYPES[a["to"]]),
    "CastLike": lambda i, a: i[0] if isinstance(i[0], _Ints) else i[0].to(i[1].dtype),
    "ConstantOfShape": _constant_of_shape,
}
# Ops that read small integer vectors (shapes, axes, pads) as such; any other op gets them as tensors.
_TAKES_INTS = {"Reshape", "Expand", "ConstantOfShape", "Slice", "Gather", "Concat", "Unsqueeze", "Squeeze", "Cast",
               "CastLike", "ReduceMean", "ReduceMax", "Pad", "Clip"}
# Float initializers at these input positions are statistics, not weights: kept as buffers, never trained.
_FROZEN_INPUTS = {"BatchNormalization": {3, 4}}


class OnnxGraph(nn.Module):
    """Runs the kept nodes in order with torch ops; float weights are parameters, the rest buffers."""

    def __init__(self, nodes: list[dict[str, Any]], inputs: str, output: str, params: list[list[Any]],
                 consts: list[dict[str, Any]]):
        super().__init__()
        self.nodes, self.input, self.output = nodes, inputs, output
        self.names: dict[str, str] = {}  # ONNX tensor name -> attribute name
        for j, (name, shape) in enumerate(params):
            self.register_parameter(f"w{j}", nn.Parameter(torch.zeros(shape)))
            self.names[name] = f"w{j}"
        self.ints: dict[str, _Ints] = {}
        for j, c in enumerate(consts):
            if c["dtype"] == "int64" and len(c["shape"]) <= 1:
                self.ints[c["name"]] = _Ints(c["value"], scalar=not c["shape"])
                continue
            self.register_buffer(f"c{j}", torch.tensor(c["value"], dtype=getattr(torch, c["dtype"]))
                                 .reshape(c["shape"]))
            self.names[c["name"]] = f"c{j}"

    def tensor(self, name: str) -> Any:
        if name in self.ints:
            return self.ints[name]
        return getattr(self, self.names[name])

    def forward(self, x: Tensor) -> Tensor:
        env: dict[str, Any] = {self.input: x, "": None}
        for n in self.nodes:
            args = [env[k] if k in env else self.tensor(k) for k in n["inputs"]]
            if n["op"] not in _TAKES_INTS:
                args = [torch.tensor(v if not v.scalar else v[0]) if isinstance(v, _Ints) else v for v in args]
            out = OPS[n["op"]](args, n["attrs"])
            env[n["outputs"][0]] = out
        return env[self.output]


class OnnxGraphNet(ClassifierNet):
    """C's features (with its own input normalisation and size) under a new linear head."""

    mean: Tensor
    std: Tensor

    def __init__(self, num_classes: int, in_chans: int, graph: dict[str, Any], num_features: int,
                 mean: list[float], std: list[float], input_size: int | None = None, source: str = ""):
        super().__init__()
        self.body = OnnxGraph(**graph)  # not "graph": torch.fx's GraphModule has that attribute
        self.num_features, self.input_size = num_features, input_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.head = nn.Linear(num_features, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        if self.input_size is not None and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.body((x - self.mean) / self.std).flatten(1)


@register_family("onnx_graph")
def onnx_graph(num_classes: int = 10, in_chans: int = 1, **config: Any) -> OnnxGraphNet:
    return OnnxGraphNet(num_classes, in_chans, **config)


def from_bundle(bundle: Any) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A source bundle's classifier C as (frozen architecture, weights), with C's own input conventions."""
    if bundle.manifest.runtime != "onnx":
        raise EdgepptError(f"{bundle.path}: training C needs an ONNX source bundle (format 2); convert this one "
                           "with `edgeppt source pack --from-bundle`")
    spec = bundle.manifest.classifier
    if bundle.manifest.channel_order == "bgr":
        raise EdgepptError(f"{bundle.path}: C takes BGR images; ft, l2sp and tred train it on RGB ones (the other "
                           "methods use this bundle as it is)")
    if spec.channels_last:
        raise EdgepptError(f"{bundle.path}: C takes (N, H, W, C) images; ft, l2sp and tred train (N, C, H, W) "
                           "networks only (the other methods use this bundle as it is)")
    # C's own side always (as SourceBundle.classify feeds it): ft at another image_size resizes to it inside
    return from_onnx(bundle.path / spec.file, spec.features, spec.logits, spec.mean, spec.std,
                     spec.input_size or bundle.image_shape[1], spec.input)


def _attrs(node) -> dict[str, Any]:
    import onnx

    out: dict[str, Any] = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = onnx.numpy_helper.to_array(v).tolist()
        elif isinstance(v, list | tuple):
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        elif not isinstance(v, int | float | str):
            raise EdgepptError(f"{node.op_type}: attribute {a.name} of an unsupported kind")
        out[a.name] = v
    return out


def _features_name(graph, features: str | None, logits: str) -> tuple[str, int | None]:
    """The features output; for a logits-only classifier, the input of the final Gemm/MatMul(+Add)."""
    if features and features != logits:
        return features, None
    producer = {o: n for n in graph.node for o in n.output}
    node = producer.get(logits)
    if node is not None and node.op_type == "Add":  # MatMul + bias
        node = next((producer[i] for i in node.input if i in producer and producer[i].op_type == "MatMul"), None)
    if node is None or node.op_type not in ("Gemm", "MatMul"):
        raise EdgepptError("the classifier declares no features output and its logits do not come from a final "
                           "Gemm/MatMul; repack it with --features-output naming the penultimate output")
    return node.input[0], None


def from_onnx(path: str | Path, features: str | None, logits: str, mean: list[float], std: list[float],
              input_size: int | None = None, input_name: str | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(frozen architecture, weights) of an ONNX classifier's feature extractor; the head is left out."""
    import onnx
    from onnx import numpy_helper

    try:
        proto = onnx.load(str(path))
    except Exception as e:  # protobuf raises assorted types on a corrupt file
        raise EdgepptError(f"{path}: cannot read the ONNX classifier: {e}") from e
    g = proto.graph
    feat, _ = _features_name(g, features, logits)
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:  # Constant nodes become constants like initializers
        if n.op_type == "Constant":
            a = _attrs(n)
            kinds = ("value", "value_float", "value_floats", "value_int", "value_ints")
            kind = next((k for k in kinds if k in a), None)
            if kind is None:
                raise EdgepptError(f"{path}: a Constant node of an unsupported kind ({sorted(a)})")
            init[n.output[0]] = np.asarray(a[kind], np.float32 if "float" in kind else None)
    producer = {o: n for n in g.node for o in n.output}
    need, keep, seen = [feat], [], set()
    while need:  # the nodes the features depend on
        name = need.pop()
        n = producer.get(name)
        if n is None or id(n) in seen or n.op_type == "Constant":
            continue
        seen.add(id(n))
        keep.append(n)
        need.extend(i for i in n.input if i)
    order = {id(n): k for k, n in enumerate(g.node)}
    keep.sort(key=lambda n: order[id(n)])
    unknown = sorted({n.op_type for n in keep} - set(OPS))
    if unknown:
        raise EdgepptError(f"{path}: the classifier uses ONNX operators {unknown}, which edgeppt cannot train "
                           f"(supported: {', '.join(sorted(OPS))})")
    inp = input_name or next(i.name for i in g.input if i.name not in init)
    params: list[list[Any]] = []
    consts: list[dict[str, Any]] = []
    weights: dict[str, Tensor] = {}
    listed: set[str] = set()
    for n in keep:
        frozen = _FROZEN_INPUTS.get(n.op_type, set())
        for pos, name in enumerate(n.input):
            if name not in init or name in listed:
                continue
            listed.add(name)
            arr = init[name]
            if arr.dtype.kind == "f" and arr.size > 1 and pos not in frozen:
                weights[f"body.w{len(params)}"] = torch.from_numpy(arr.astype(np.float32).copy())
                params.append([name, list(arr.shape)])
            else:
                dtype = "float32" if arr.dtype.kind == "f" else "int64" if arr.dtype.kind in "iu" else "bool"
                consts.append({"name": name, "dtype": dtype, "shape": list(arr.shape),
                               "value": arr.astype(dtype).reshape(-1).tolist()})
    nodes = [{"op": n.op_type, "inputs": list(n.input), "outputs": list(n.output), "attrs": _attrs(n)} for n in keep]
    graph: dict[str, Any] = {"nodes": nodes, "inputs": inp, "output": feat, "params": params, "consts": consts}
    # The number of features: run the graph once on a dummy image of C's input shape.
    shape = [d.dim_value or 1 for d in next(i for i in g.input if i.name == inp).type.tensor_type.shape.dim]
    net = OnnxGraph(**graph)
    net.load_state_dict({k.removeprefix("body."): v for k, v in weights.items()}, strict=False)
    with torch.no_grad():
        num_features = int(net(torch.zeros([1, *shape[1:]])).flatten(1).shape[1])
    config = {"graph": graph, "num_features": num_features, "mean": list(mean), "std": list(std),
              "input_size": input_size, "source": Path(path).name}
    return {"family": "onnx_graph", "config": config}, weights
