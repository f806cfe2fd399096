"""A trained run -> its PyTorch model and test split -> a checked ONNX graph with measured parity."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir
import torch
from onnx_ir.passes.common import TopologicalSortPass
from pydantic import ValidationError

from edgeppt.data import DataRecord, ImageSet, reshape_images
from edgeppt.errors import EdgepptError
from edgeppt.models import create_model
from edgeppt.models.base import ClassifierNet
from edgeppt.onnxspec import IR_VERSION, OPSET
from edgeppt.runs import CHECKPOINT_FILE, atomic_write_bytes, load_checkpoint
from edgeppt.transfer.record import MODEL_FILE, read_report

from . import runner

INPUT_NAME, OUTPUT_NAME = "input", "logits"
# Parity tolerances: float32 ONNX Runtime vs eager PyTorch differ by kernel rounding only.
MAX_ABS_DIFF, MIN_AGREEMENT = 1e-3, 0.995


@dataclass
class LoadedRun:
    path: Path
    model: ClassifierNet
    classes: list[str]
    in_chans: int
    image_size: int
    checkpoint: dict[str, Any]
    report: dict[str, Any]

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.report.get("settings", {}))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_chans, self.image_size, self.image_size)


def load_run(run_dir: str | Path) -> LoadedRun:
    """Rebuild the trained model from model.pt; report.json (settings, accuracy) when the run wrote one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EdgepptError(f"{run_dir}: no such run directory")
    ckpt_path = run_dir / MODEL_FILE
    if not ckpt_path.is_file():
        hint = (" (the run has a checkpoint but has not finished: resume it first)"
                if (run_dir / CHECKPOINT_FILE).exists() else "")
        raise EdgepptError(f"{run_dir}: no model.pt, so nothing to export{hint}")
    try:
        ckpt = load_checkpoint(ckpt_path)
    except Exception as e:  # torch raises assorted types for a truncated or foreign file
        raise EdgepptError(f"{ckpt_path}: cannot load the model checkpoint: {e}") from e
    if not isinstance(ckpt, dict):
        raise EdgepptError(f"{ckpt_path}: not an edgeppt model (holds a {type(ckpt).__name__}, not a dict)")
    missing = [k for k in ("arch", "classes", "in_chans", "image_size", "state_dict") if k not in ckpt]
    if missing:
        raise EdgepptError(f"{ckpt_path}: not an edgeppt model (lacks {missing})")
    if not isinstance(ckpt["state_dict"], dict):
        raise EdgepptError(f"{ckpt_path}: its state_dict is a {type(ckpt['state_dict']).__name__}, not a dict")
    model = create_model(ckpt["arch"], len(ckpt["classes"]), int(ckpt["in_chans"]))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, ValueError) as e:
        raise EdgepptError(f"{ckpt_path}: weights do not fit the saved architecture: {e}") from e
    record = read_report(run_dir)  # transfer's published record of the run
    report: dict[str, Any] = record.model_dump(mode="json") if record else {}
    return LoadedRun(run_dir, model.eval(), list(ckpt["classes"]), int(ckpt["in_chans"]), int(ckpt["image_size"]),
                     ckpt, report)


def run_record(run: LoadedRun) -> DataRecord:
    """The transfer run's record of its data: which images were labelled and which were its test split."""
    if "data_record" not in run.report:
        raise EdgepptError(f"{run.path}: report.json has no data record (which images the run trained and was "
                           "tested on), so its test split cannot be rebuilt; re-run transfer")
    try:
        return DataRecord.model_validate(run.report["data_record"])
    except ValidationError as e:
        raise EdgepptError(f"{run.path}/report.json data_record: {e.errors()[0]['msg']}") from e


def run_data(run: LoadedRun) -> tuple[ImageSet, ImageSet]:
    """The run's labelled images and its fixed test split, rebuilt from its data record at the model's input
    shape."""
    labelled, test = run_record(run).splits()
    if test.classes != run.classes:
        raise EdgepptError(f"{run.path}: test classes {test.classes} differ from the model's {run.classes}")

    def fit(s: ImageSet) -> ImageSet:
        return ImageSet(reshape_images(s.x, run.image_size, run.in_chans), s.y, s.classes)

    return fit(labelled), fit(test)


def export_onnx(model: torch.nn.Module, path: str | Path, input_shape: tuple[int, int, int],
                dynamic_batch: bool = False, optimize: bool = True) -> Path:
    """torch.onnx's dynamo exporter (the current one), then onnx.checker's full check; written atomically.

    Batch 1 static by default: edge runtimes (TensorRT, NPUs) plan memory for fixed shapes. `optimize=False`
    keeps every weight as the state_dict holds it (no normalisation folded into convolutions)."""
    model = model.eval()
    example = (torch.rand(1, *input_shape),)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns about absent torchvision ops, irrelevant here
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, example, dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes=dynamic, verbose=False,
                                        optimize=optimize)
    except Exception as e:
        raise EdgepptError(f"ONNX export failed: {type(e).__name__}: {e}") from e
    finally:
        quiet.setLevel(level)
    assert program is not None  # dynamo=True always returns the ONNXProgram
    proto = program.model_proto
    proto.producer_name = "edgeppt"
    # torch stamps its exporter's newest IR (10), which onnxruntime before 1.18 refuses (JetPack 5 and 6.0 wheels:
    # "Unsupported model IR version"); the graph uses nothing past IR_VERSION, the oldest that declares OPSET
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    path = atomic_write_bytes(path, proto.SerializeToString())
    check_onnx(path)
    return path


def check_onnx(path: str | Path) -> None:
    """onnx.checker with full_check (also runs strict shape inference)."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise EdgepptError(f"{path}: the ONNX graph is invalid: {e}") from e


@torch.no_grad()
def torch_logits(model: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> np.ndarray:
    return torch.cat([model.eval()(x[i:i + batch]) for i in range(0, len(x), batch)]).numpy()


def parity(reference: np.ndarray, onnx_path: str | Path, x: np.ndarray, threads: int = 1) -> dict[str, float]:
    """ONNX Runtime vs the reference logits on the same images: worst absolute difference and top-1 agreement."""
    got = runner.predict_logits(runner.make_session(onnx_path, threads, "cpu"), x)
    return {"max_abs_diff": float(np.abs(got - reference).max()),
            "top1_agreement": float((got.argmax(1) == reference.argmax(1)).mean()),
            "max_abs_logit": float(np.abs(reference).max())}


def check_parity(result: dict[str, float], what: str) -> None:
    """Raise when float32 ONNX is not the PyTorch model (tolerance relative to the logits' scale)."""
    tol = MAX_ABS_DIFF * max(1.0, result["max_abs_logit"])
    if result["max_abs_diff"] > tol or result["top1_agreement"] < MIN_AGREEMENT:
        raise EdgepptError(f"{what} disagrees with the PyTorch model (max |diff| {result['max_abs_diff']:.2e}, "
                           f"top-1 agreement {100 * result['top1_agreement']:.2f}%): the export is wrong")


def convert_fp16(fp32: str | Path, out: str | Path) -> Path:
    """FP16 ONNX for GPU targets (TensorRT, CUDA): float16 weights and compute, float32 input and output kept,
    so the runner and its preprocessing are the same for every format."""
    # onnxruntime ships the converter (onnxruntime.transformers.float16): no extra dependency.
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    except Exception as e:  # the converter raises assorted types on graphs it cannot handle
        raise EdgepptError(f"FP16 conversion of {fp32} failed: {e}") from e
    model = toposort(model)  # the converter appends its input Casts at the end; the checker wants them first
    path = atomic_write_bytes(out, model.SerializeToString())
    check_onnx(path)
    return path


def toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its nodes reordered so each comes after the producers of its inputs (onnx_ir's stable sort)."""
    ir_model = onnx_ir.from_proto(model)
    TopologicalSortPass()(ir_model)
    return onnx_ir.to_proto(ir_model)
