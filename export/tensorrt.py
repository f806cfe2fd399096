#!/usr/bin/env python3
"""Build a TensorRT engine from an edgeppt bundle's ONNX model (QDQ INT8 or FP16) on the device that runs it.

An engine is tied to the GPU and the TensorRT version that built it, so a bundle ships this file (as
build_engine.py, next to build_engine.sh with the equivalent trtexec command) rather than only an engine.
It needs the standard library and TensorRT's Python package, nothing from edgeppt.

Precision comes from the graph, not from builder flags: the INT8 model carries Q/DQ nodes (explicit
quantization) and the FP16 model float16 weights, so the network is created STRONGLY_TYPED. TensorRT 10 needs
that flag for this; TensorRT 11 removed the INT8/FP16 builder flags, always builds strongly typed and ignores it.
TensorRT 8.x (JetPack 5 and 6.0) has no strongly typed networks: there the network has an explicit batch and the
FP16 flag (INT8 too where the graph has Q/DQ nodes), and trtexec takes `--int8 --fp16` for `--stronglyTyped`.

    python3 build_engine.py model.int8.onnx model.int8.engine --timing-cache timing.cache
"""

import sys

# Run as a script, the bundle's folder is data, never a place to import from (runner.py says why): no
# `from __future__`, and annotations Python 3.8 cannot evaluate are strings.
if __name__ == "__main__" and not __package__ and sys.path:
    del sys.path[0]

import argparse  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

WORKSPACE_BYTES = 1 << 30


def trt_available() -> "tuple[bool, str]":
    """(True, version) when TensorRT imports and a builder can start on a CUDA GPU; else (False, why not)."""
    try:
        import tensorrt as trt
    except ImportError:
        return False, "TensorRT's Python package (tensorrt) is not installed"
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as e:  # no driver / no GPU: the builder cannot initialise CUDA
        return False, f"TensorRT {trt.__version__} cannot start a builder (no CUDA GPU?): {e}"
    if builder is None:
        return False, f"TensorRT {trt.__version__} cannot start a builder (no CUDA GPU?)"
    return True, trt.__version__


def shapes(input_name: str, shape: "list[int]", max_batch: int) -> "dict[str, str]":
    """min/opt/max shapes for a dynamic batch: opt at batch 1, the edge use; max for throughput."""
    dims = lambda b: "x".join(str(d) for d in [b, *shape[1:]])  # noqa: E731
    return {"min": f"{input_name}:{dims(1)}", "opt": f"{input_name}:{dims(1)}",
            "max": f"{input_name}:{dims(max_batch)}"}


def trtexec_command(onnx: str, engine: str, input_name: str, shape: "list[int]", dynamic: bool,
                    timing_cache: str = "timing.cache", max_batch: int = 32) -> str:
    """The equivalent trtexec command (TensorRT 10 and 11; --stronglyTyped is a no-op on 11)."""
    cmd = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}", "--stronglyTyped",
           f"--timingCacheFile={timing_cache}"]
    if dynamic:
        s = shapes(input_name, shape, max_batch)
        cmd += [f"--minShapes={s['min']}", f"--optShapes={s['opt']}", f"--maxShapes={s['max']}"]
    return " ".join(cmd)


def build_engine(onnx_path: "str | Path", timing_cache: bytes = b"", max_batch: int = 32,
                 workspace: int = WORKSPACE_BYTES) -> "tuple[bytes, bytes]":
    """Parse the ONNX file and build a serialized engine; returns (engine, updated timing cache)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")  # TensorRT 10 and 11
    if strongly_typed:
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    else:  # TensorRT 8.x: ONNX needs an explicit batch (by name: TensorRT 11 removed the flag)
        network = builder.create_network(1 << int(getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")))  # noqa: B009
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if not strongly_typed:  # TensorRT 8.x (JetPack 5, 6.0) takes precision from builder flags: FP16 for the
        # float16 graph and any layer Q/DQ leaves in float, INT8 where the graph carries Q/DQ nodes (explicit
        # quantization: no calibrator). Looked up by name: TensorRT 11 removed both flags.
        flags = ["FP16"] + (["INT8"] if "QuantizeLinear" in _op_types(onnx_path) else [])
        for name in flags:
            config.set_flag(getattr(trt.BuilderFlag, name))
    # A timing cache from an earlier build of the same GPU/TensorRT skips re-timing kernels (much faster builds).
    cache = config.create_timing_cache(timing_cache)
    config.set_timing_cache(cache, ignore_mismatch=False)
    inp = network.get_input(0)
    if any(d < 0 for d in inp.shape):  # dynamic batch: an optimization profile is required
        dims = list(inp.shape)[1:]
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, [1, *dims], [1, *dims], [max_batch, *dims])
        config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    return bytes(engine), bytes(config.get_timing_cache().serialize())


def _op_types(onnx_path: "str | Path") -> "set[str]":
    """The graph's operator types, read with the onnx package where the device has it, else from the raw bytes
    (each node's op_type is stored as a plain string)."""
    try:
        import onnx
    except ImportError:
        raw = Path(onnx_path).read_bytes()
        return {op for op in ("QuantizeLinear", "DequantizeLinear") if op.encode() in raw}
    return {n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node}


def _atomic_write(path: Path, data: bytes) -> None:
    # Standalone on the device (no edgeppt): the same temp-file-and-rename as edgeppt.runs.atomic_write_bytes.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(description="Build a TensorRT engine from an edgeppt bundle's ONNX model")
    ap.add_argument("onnx")
    ap.add_argument("engine")
    ap.add_argument("--timing-cache", default="timing.cache", help="read if present, updated after the build")
    ap.add_argument("--max-batch", type=int, default=32, help="profile maximum for a dynamic-batch model")
    args = ap.parse_args(argv)
    ok, why = trt_available()
    if not ok:
        print(f"cannot build: {why}", file=sys.stderr)
        return 2
    cache_path = Path(args.timing_cache)
    blob = cache_path.read_bytes() if cache_path.is_file() else b""
    engine, cache = build_engine(args.onnx, blob, args.max_batch)
    _atomic_write(Path(args.engine), engine)
    _atomic_write(cache_path, cache)
    print(f"engine: {args.engine} ({len(engine)} bytes, TensorRT {why}); timing cache: {cache_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
