"""export/: a trained run -> ONNX, INT8 (QDQ), FP16 and TensorRT artifacts in a deployable bundle, each verified
against the PyTorch model on the run's test split; benchmark a bundle here, or deploy it to a device over SSH."""
# Names load on first use (PEP 562): the CLI imports this package's `cli` module for its commands' signatures, and
# `edgeppt --help` must not wait for torch, onnxruntime or NNI to import.
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see
    from .bench import bench_bundle as bench_bundle
    from .bundle import read_manifest as read_manifest
    from .bundle import verify_bundle as verify_bundle
    from .deploy import deploy_bundle as deploy_bundle
    from .exporter import export_run as export_run
    from .formats import FORMATS as FORMATS
    from .formats import ExportOptions as ExportOptions

_EXPORTS = {
    "bench_bundle": ".bench",
    "read_manifest": ".bundle",
    "verify_bundle": ".bundle",
    "deploy_bundle": ".deploy",
    "export_run": ".exporter",
    "FORMATS": ".formats",
    "ExportOptions": ".formats",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
