"""export/: a trained run -> ONNX, INT8 (QDQ), FP16 and TensorRT artifacts in a deployable bundle, each verified
against the PyTorch model on the run's test split; benchmark a bundle here, or deploy it to a device over SSH."""
from typing import TYPE_CHECKING

from edgeppt.lazy import lazy_names  # names load on first use: `edgeppt --help` imports no torch

if TYPE_CHECKING:  # what type checkers see
    from .bench import bench_bundle as bench_bundle
    from .bundle import read_manifest as read_manifest
    from .bundle import verify_bundle as verify_bundle
    from .deploy import deploy_bundle as deploy_bundle
    from .exporter import export_run as export_run
    from .formats import FORMATS as FORMATS
    from .formats import ExportOptions as ExportOptions

__getattr__, __all__ = lazy_names(__name__, {
    "bench_bundle": ".bench",
    "read_manifest": ".bundle",
    "verify_bundle": ".bundle",
    "deploy_bundle": ".deploy",
    "export_run": ".exporter",
    "FORMATS": ".formats",
    "ExportOptions": ".formats",
})
