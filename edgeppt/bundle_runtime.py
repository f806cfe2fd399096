"""Where a source bundle's G and C run: onnxruntime sessions (ONNX graphs, nothing unpickled), or torch.export
programs for trusted version-1 bundles. Both take and return named torch tensors on one device.

On CUDA, onnxruntime's CUDA provider reads the inputs from and writes the outputs to torch's GPU memory
through I/O binding, so generation never copies through the CPU. Where onnxruntime has no CUDA provider (the
plain `onnxruntime` package that edgeppt depends on), the graphs run on the CPU and their outputs move to the GPU:
training on a GPU works with the default install, and `onnxruntime-gpu` only makes generation faster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from .errors import EdgepptError

_DTYPES = {"tensor(float)": torch.float32, "tensor(int64)": torch.int64, "tensor(double)": torch.float64,
           "tensor(float16)": torch.float16, "tensor(int32)": torch.int32}


class Part(Protocol):
    def __call__(self, inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]: ...


def providers_for(device: torch.device) -> list[str]:
    """CUDA's provider for a CUDA device where this onnxruntime has it, else the CPU's."""
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxPart:
    """One ONNX graph in an onnxruntime session; inputs are cast to the graph's declared types and given trailing
    ones up to its declared rank. A graph exported with a fixed batch size (torch.onnx.export's default without
    dynamic axes) runs in chunks of that size."""

    def __init__(self, path: Path, device: torch.device):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()  # share the cores as torch was told to
        opts.log_severity_level = 3
        providers = providers_for(device)
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.inputs = {i.name: _DTYPES.get(i.type, torch.float32) for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.on_gpu = providers[0] == "CUDAExecutionProvider"
        # DCGAN-style inputs, z as (N, size, 1, 1): the bundle's (N, size) gets trailing ones
        self.ranks = {i.name: len(i.shape) for i in self.session.get_inputs()}
        fixed = {i.shape[0] for i in self.session.get_inputs() if i.shape and isinstance(i.shape[0], int)}
        self.batch = fixed.pop() if len(fixed) == 1 else None  # the one number of every input whose batch is fixed

    def __call__(self, inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        missing = set(self.inputs) - set(inputs)
        if missing:
            raise EdgepptError(f"the graph needs inputs {sorted(missing)}; the manifest names {sorted(inputs)}")
        feed = {n: inputs[n].reshape(*inputs[n].shape, *[1] * (self.ranks[n] - inputs[n].dim())) for n in self.inputs}
        n, b = len(next(iter(feed.values()))), self.batch
        if b is None or n == b:
            return self._run(feed, device)
        parts = []
        for i in range(0, n, b):  # the last chunk is padded with copies of its last row, then trimmed
            chunk = {k: v[i:i + b] for k, v in feed.items()}
            m = len(next(iter(chunk.values())))
            chunk = {k: torch.cat([v, v[-1:].expand(b - m, *v.shape[1:])]) for k, v in chunk.items()}
            parts.append({k: o[:m] for k, o in self._run(chunk, device).items()})
        return {k: torch.cat([p[k] for p in parts]) for k in self.outputs}

    def _run(self, inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        if self.on_gpu:
            return self._run_bound({n: t.to(device, self.inputs[n]).contiguous() for n, t in inputs.items()}, device)
        feed = {n: t.to("cpu", self.inputs[n]).contiguous().numpy() for n, t in inputs.items()}
        outs = self.session.run(self.outputs, feed)
        return {n: _float32(torch.from_numpy(np.ascontiguousarray(o)).to(device)) for n, o in zip(self.outputs, outs)}

    def _run_bound(self, feed: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        """GPU to GPU: bind torch's buffers as inputs; outputs stay in onnxruntime's CUDA memory and are
        handed to torch through DLPack, without a host copy."""
        binding = self.session.io_binding()
        index = device.index or 0
        for name, t in feed.items():
            binding.bind_input(name, "cuda", index, _numpy_dtype(t.dtype), tuple(t.shape), t.data_ptr())
        for name in self.outputs:
            binding.bind_output(name, "cuda", index)
        torch.cuda.current_stream(device).synchronize()  # the inputs were written on torch's stream
        self.session.run_with_iobinding(binding)
        return {n: _float32(torch.from_dlpack(v)) for n, v in zip(self.outputs, binding.get_outputs())}


def _float32(t: torch.Tensor) -> torch.Tensor:
    """A graph exported in float16 (or float64) gives images and logits in float32, as every stage computes."""
    return t.float() if t.is_floating_point() and t.dtype != torch.float32 else t


def _numpy_dtype(dtype: torch.dtype) -> type:
    return {torch.float32: np.float32, torch.int64: np.int64, torch.float64: np.float64,
            torch.float16: np.float16, torch.int32: np.int32}[dtype]


class TorchPart:
    """A torch.export program of a version-1 bundle: G(z, p) -> image; C(image) -> (logits, features)."""

    def __init__(self, module: nn.Module, device: torch.device):
        self.module = module.to(device)
        for prm in self.module.parameters():
            prm.requires_grad_(False)

    def __call__(self, inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        args = [t.to(device) for t in inputs.values()]
        out = self.module(*args)
        if isinstance(out, torch.Tensor):
            return {"image": out}
        return dict(zip(("logits", "features"), out))


def load_program(path: Path) -> nn.Module:
    """Load a torch.export program. Its loading unpickles: callers check a trusted signature (or an explicit
    trust_code) first; load_bundle and source pack are the only callers."""
    return torch.export.load(path).module()
