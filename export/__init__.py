"""export/: a trained run -> ONNX, INT8 (QDQ), FP16 and TensorRT artifacts in a deployable bundle, each verified
against the PyTorch model on the run's test split; benchmark a bundle here, or deploy it to a device over SSH."""

from .bench import bench_bundle
from .bundle import read_manifest, verify_bundle
from .deploy import deploy_bundle
from .exporter import export_run
from .formats import FORMATS, ExportOptions

__all__ = ["FORMATS", "ExportOptions", "bench_bundle", "deploy_bundle", "export_run", "read_manifest", "verify_bundle"]
