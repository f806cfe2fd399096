"""The INT8 recipe: static post-training quantization with onnxruntime.quantization to a QDQ graph.

One place for it, because two stages need it: export quantizes the model that ships, and search times each
candidate in the format that will ship (an x86 int8 model can be slower than fp32, and the budget must hold
for what is deployed).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import EdgepptError
from .runs import atomic_write_bytes

if TYPE_CHECKING:
    from .devices import DeviceProfile

PERCENTILE = 99.999
# onnxruntime's fast int8 convolution (MLAS's "ConvSym" kernels, u8 activations x s8 weights) takes only input
# channels in multiples of 4; a 1- or 3-channel stem falls back to im2col and a slow small-K GEMM (docs/export.md).
CHANNEL_ALIGN = 4


@dataclass(frozen=True)
class QuantConfig:
    """One PTQ recipe. Symmetric activations (zero point 0) are what TensorRT accepts; onnxruntime's x86 kernels
    are fastest with asymmetric uint8 activations (see docs/export.md), so CPU-only targets may choose those."""
    method: str = "minmax"
    symmetric_activations: bool = True
    reduce_range: bool = False  # 7-bit weights: avoids int16 saturation in x86 AVX2 int8 kernels (VPMADDUBSW)
    float_nodes: tuple[str, ...] = ()
    # int32 bias Q/DQ: onnxruntime's QLinearConv fusion uses it; TensorRT's DequantizeLinear takes only int8/fp8
    # inputs and quantizes biases itself, so the TensorRT recipe (symmetric activations) keeps biases float.
    quantize_bias: bool | None = None  # None: not for symmetric (TensorRT) recipes, yes otherwise
    pad_channels: bool = True  # asymmetric (x86) recipes: a stem's input channels padded to CHANNEL_ALIGN

    @property
    def bias_quantized(self) -> bool:
        return (not self.symmetric_activations) if self.quantize_bias is None else self.quantize_bias

    def describe(self) -> str:
        parts = [self.method, "symmetric s8 activations" if self.symmetric_activations else "asymmetric u8 activations"]
        if not self.bias_quantized:
            parts.append("float biases")
        if self.reduce_range:
            parts.append("7-bit weights")
        if self.float_nodes:
            parts.append(f"float: {', '.join(self.float_nodes)}")
        return ", ".join(parts)


def tensorrt(profile: DeviceProfile) -> bool:
    """Whether TensorRT builds the device's engines (its runtime, or a tensorrt artifact among its formats)."""
    return profile.runtime == "tensorrt" or "tensorrt" in profile.export.formats


def device_recipe(symmetric_activations: bool, tensorrt: bool) -> QuantConfig:
    """The base recipe a device's export ships (and its search times): symmetric activations where the profile
    says so or TensorRT builds the engine (biases then stay float: TensorRT's DequantizeLinear takes no int32).
    onnxruntime fuses the convolutions into its int8 kernel with float biases too (checked on x86, onnxruntime
    1.32: 15 QLinearConv either way in a searched MobileNet), so symmetric CPU recipes keep the same rule."""
    return QuantConfig(symmetric_activations=symmetric_activations or tensorrt)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol: dicts of input arrays, then None."""

    def __init__(self, name: str, x: np.ndarray, batch: int, static: bool):
        self.name = name
        stop = len(x) - batch + 1 if static else len(x)  # a dynamic batch takes the last, shorter one too
        self.batches = iter([x[i:i + batch] for i in range(0, stop, batch)] or [x[:batch]])

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self.batches, None)
        return None if b is None else {self.name: b}


def preprocess(fp32: str | Path, out: str | Path) -> Path:
    """onnxruntime's recommended pre-processing: symbolic shape inference and graph optimisation (BN folding)."""
    from onnxruntime.quantization import quant_pre_process

    quant_pre_process(str(fp32), str(out))
    return Path(out)


def pad_input_channels(model: onnx.ModelProto, align: int = CHANNEL_ALIGN) -> int:
    """Give each plain convolution that reads the graph input a multiple of `align` input channels: a Pad of the
    input's channels with zeros and zero weights for them, so its outputs are unchanged. The graph input keeps its
    shape. Returns how many convolutions changed."""
    g = model.graph
    name = g.input[0].name
    inits = {t.name: t for t in g.initializer}
    changed = 0
    for node in list(g.node):
        if node.op_type != "Conv" or node.input[0] != name or node.input[1] not in inits \
                or next((a.i for a in node.attribute if a.name == "group"), 1) != 1:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        extra = -w.shape[1] % align
        if not extra:
            continue
        padded = np.concatenate([w, np.zeros((w.shape[0], extra, *w.shape[2:]), w.dtype)], 1)
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(padded, node.input[1]))
        stale = [v for v in g.value_info if v.name == node.input[1]]  # the weight's recorded shape
        for v in stale:
            g.value_info.remove(v)
        base = f"{node.name or 'conv'}_input_channels"
        pads = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, extra, 0, 0], np.int64), f"{base}_pads")
        g.initializer.append(pads)
        g.node.insert(list(g.node).index(node), helper.make_node("Pad", [name, pads.name], [f"{base}_padded"],
                                                                 mode="constant", name=f"{base}_pad"))
        node.input[0] = f"{base}_padded"
        changed += 1
    return changed


def quantize_int8(pre: str | Path, out: str | Path, calib: np.ndarray, cfg: QuantConfig = QuantConfig()) -> Path:
    """Static PTQ to QDQ with per-channel symmetric int8 weights. For onnxruntime's x86 kernels (asymmetric u8
    activations) the stem's input channels are first padded to a multiple of 4 (`pad_input_channels`)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if cfg.method not in methods:
        raise EdgepptError(f"unknown calibration method {cfg.method!r}; choose one of {list(methods)}")
    graph_input = onnx.load(str(pre), load_external_data=False).graph.input[0]
    dim0 = graph_input.type.tensor_type.shape.dim[0]
    static = dim0.HasField("dim_value") and dim0.dim_value > 0
    batch = dim0.dim_value if static else 16  # a static batch stays
    with tempfile.TemporaryDirectory(prefix=".edgeppt-quant-") as tmp:
        q = Path(tmp) / "q.onnx"
        if cfg.pad_channels and not cfg.symmetric_activations:  # TensorRT pads channels itself
            model = onnx.load(str(pre))
            if pad_input_channels(model):
                pre = Path(tmp) / "padded.onnx"
                onnx.save(model, str(pre))
        # onnxruntime's histogram calibrators print their progress ("Collecting tensor data ..."): not the
        # export's output, whose lines say what was chosen
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(pre), str(q), _Reader(graph_input.name, calib, batch, static),
                            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=cfg.reduce_range,
                            activation_type=QuantType.QInt8 if cfg.symmetric_activations else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=methods[cfg.method],
                            nodes_to_exclude=list(cfg.float_nodes),
                            extra_options={"ActivationSymmetric": cfg.symmetric_activations, "WeightSymmetric": True,
                                           "QuantizeBias": cfg.bias_quantized, "CalibPercentile": PERCENTILE})
        return atomic_write_bytes(out, q.read_bytes())
