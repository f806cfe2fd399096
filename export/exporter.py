"""`export_run`: a trained run directory -> a verified, deployable bundle.

One function per row of the table of formats (export/formats.py), built in table order. What a target device
runs (default formats, int8 activation type, how INT8 accuracy is judged, runner default, threads) comes from its
profile in the core (`edgeppt.devices`: a built-in name or a user YAML). Every artifact is checked against the
PyTorch model on the run's test split before it is written into the manifest.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeppt.config import SourceTrust, validate
from edgeppt.cpu_int8 import int8_instructions
from edgeppt.devices import DEFAULT_DEVICE, DeviceProfile, load_profile
from edgeppt.errors import EdgepptError
from edgeppt.int8 import device_recipe
from edgeppt.int8 import tensorrt as uses_tensorrt
from edgeppt.macs import onnx_macs
from edgeppt.runs import atomic_write_bytes, check_writable
from edgeppt.signing import load_private_key, public_key_beside, sign_folder

from . import bundle as B
from . import quantize as Q
from . import runner, tensorrt
from .default import budget_check, choose_default
from .floor import floor_columns, host_peak
from .formats import FORMATS, ExportOptions
from .onnx_export import (
    INPUT_NAME,
    LoadedRun,
    check_parity,
    convert_fp16,
    export_onnx,
    load_run,
    parity,
    run_data,
    run_record,
    torch_logits,
)
from .update import write_supermask


@dataclass
class Context:
    run: LoadedRun
    root: Path                       # the staging folder of the bundle
    device: DeviceProfile
    test_x: np.ndarray
    test_y: np.ndarray
    labelled_x: torch.Tensor
    reference: np.ndarray            # PyTorch logits on the test split
    options: dict[str, Any]
    trust: SourceTrust | None = None  # which source bundles pseudo calibration may load
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: Callable[[str], None] = print
    floor: dict[str, Any] = field(default_factory=dict)  # MACs and this host's float32 peak


def _onnx(ctx: Context) -> dict[str, Any]:
    path = export_onnx(ctx.run.model, _file(ctx, "onnx"), ctx.run.input_shape, ctx.options["dynamic_batch"])
    par = parity(ctx.reference, path, ctx.test_x)
    check_parity(par, "the ONNX model")
    acc = Q.accuracy(path, ctx.test_x, ctx.test_y)
    ctx.log(f"onnx: top-1 agreement {100 * par['top1_agreement']:.2f}%, max |diff| {par['max_abs_diff']:.2e}")
    return {"file": path.name, "precision": FORMATS["onnx"].precision, "accuracy": acc, "parity": par}


def _int8(ctx: Context) -> dict[str, Any]:
    calib, guard_x, calib_info = calibration_set(ctx)
    tensorrt = uses_tensorrt(ctx.device) or "tensorrt" in ctx.options["formats"]
    path = _file(ctx, "int8")
    evaluator = ctx.device.export.evaluator
    guard = Q.quantize_guarded(_file(ctx, "onnx"), path, calib, guard_x,
                               device_recipe(ctx.device.export.symmetric_activations, tensorrt),
                               ctx.options["max_int8_drop"], evaluator,
                               # 7-bit weights only mend this host's x86 saturation: never for what TensorRT builds,
                               # nor where the evaluator already runs without it
                               saturation_remedy=evaluator == "host" and not tensorrt)
    par = parity(ctx.reference, path, ctx.test_x)
    # The test split reports only: the recipe was chosen on the guard images above.
    acc = Q.accuracy(path, ctx.test_x, ctx.test_y, guard.evaluator)
    ctx.log(f"int8: {guard.note}; test accuracy {100 * acc:.2f}%")
    props = Q.qdq_properties(path)
    # accuracy: as the device computes it (the evaluator); host_accuracy: onnxruntime's kernels on this machine.
    return {"file": path.name, "precision": FORMATS["int8"].precision, "accuracy": acc,
            "evaluator": guard.evaluator,
            "host_accuracy": Q.accuracy(path, ctx.test_x, ctx.test_y, "host"), "parity": par, "calibration": calib_info,
            "recipe": guard.chosen["config"], "qdq": props, "tensorrt_ready": props["tensorrt_ready"],
            "accuracy_guard": {"judged_on": f"{guard.guard_images} images outside the test split, by top-1 "
                                            "agreement with FP32 (no labels)",
                               "agreement": guard.agreement, "kl": guard.kl, "guard_images": guard.guard_images,
                               "evaluator": guard.evaluator, "max_drop_points": guard.max_drop_points,
                               "met": guard.met, "note": guard.note, "attempts": guard.attempts}}


def _fp16(ctx: Context) -> dict[str, Any]:
    path = convert_fp16(_file(ctx, "onnx"), _file(ctx, "fp16"))
    out: dict[str, Any] = {"file": path.name, "precision": FORMATS["fp16"].precision}
    try:  # onnxruntime's CPU provider lacks float16 kernels for some ops; then only the GPU can check it
        # Whether FP16 may be the default is judged on images outside the test split; the test split reports.
        guard_x = Q.subsample(target_images(ctx.run, None, ctx.test_x)[0], GUARD_IMAGES, seed=1).numpy()
        out["guard_parity"] = {**parity(torch_logits(ctx.run.model, torch.from_numpy(guard_x)), path, guard_x),
                               "images": len(guard_x), "judged_on": "images outside the test split, by top-1 "
                               "agreement with PyTorch (no labels)"}
        out["parity"] = parity(ctx.reference, path, ctx.test_x)
        out["accuracy"] = Q.accuracy(path, ctx.test_x, ctx.test_y)
    except Exception as e:
        out["unchecked"] = f"cannot run on this host's CPU provider: {e}".splitlines()[0][:300]
    return out


HOST_TIMING_CACHE = "timing.host.cache"


def _tensorrt(ctx: Context) -> dict[str, Any]:
    """Always: the trtexec command and build script for the device. Where TensorRT and a GPU are here: the engine."""
    dynamic = ctx.options["dynamic_batch"]
    shape = [1, *ctx.run.input_shape]
    sources = [f for f in FORMATS["tensorrt"].built_from
               if f in ctx.artifacts and ctx.artifacts[f].get("tensorrt_ready", f == "fp16")]
    if not sources:
        raise EdgepptError("tensorrt needs an int8 (QDQ, symmetric) or fp16 ONNX model: add int8 or fp16 to --formats")
    commands = B.trtexec_commands(ctx.artifacts, INPUT_NAME, shape, dynamic)
    B.write_build_shell(ctx.root, commands)
    out: dict[str, Any] = {"sources": [ctx.artifacts[f]["file"] for f in sources], "trtexec": commands,
                           "build_script": f"python3 {B.BUILD_SCRIPT} <model.onnx> <model.engine> "
                                           "--timing-cache timing.cache",
                           "files": [B.BUILD_SCRIPT, B.BUILD_SHELL], "built": False}
    ok, why = tensorrt.trt_available()
    if not ok:
        out["reason"] = why
        ctx.log(f"tensorrt: engine not built here ({why}); wrote {B.BUILD_SHELL} and {B.BUILD_SCRIPT} for the device")
        return out
    engines, cache = {}, b""
    for fmt in sources:  # one engine per GPU-ready model; the timing cache carries over from build to build
        onnx_file = ctx.artifacts[fmt]["file"]
        try:
            engine, cache = tensorrt.build_engine(ctx.root / onnx_file, cache)
        except RuntimeError as e:
            raise EdgepptError(f"tensorrt: {e}") from e
        # named apart from what build_engine.sh writes on the device: a rebuild there must not overwrite a file
        # the manifest lists (the runner would then refuse the bundle)
        engines[fmt] = onnx_file.replace(".onnx", ".host.engine")
        atomic_write_bytes(ctx.root / engines[fmt], engine)
    atomic_write_bytes(ctx.root / HOST_TIMING_CACHE, cache)
    out.update(built=True, engines=engines, timing_cache=HOST_TIMING_CACHE, tensorrt_version=why,
               note="these engines run only on the GPU model and TensorRT version that built them (this host's)")
    return out


def _file(ctx: Context, fmt: str) -> Path:
    name = FORMATS[fmt].file
    assert name is not None, f"{fmt} has no single file"
    return ctx.root / name


BUILDERS: dict[str, Callable[[Context], dict[str, Any]]] = {"onnx": _onnx, "int8": _int8, "fp16": _fp16,
                                                           "tensorrt": _tensorrt}
assert BUILDERS.keys() == FORMATS.keys(), "one builder per row of the table of formats"


GUARD_IMAGES = 256  # images that judge INT8 against FP32, kept apart from the calibration images when there are enough
MIN_SPLIT = 64  # below this many images, calibration and guard share them (and the export says so)


def split_guard(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(calibration, guard, disjoint): up to n calibration images and up to GUARD_IMAGES others, seeded."""
    order = np.random.default_rng(0).permutation(len(x))
    if len(x) < MIN_SPLIT:
        return x[order[:n]], x, False
    n_guard = min(GUARD_IMAGES, len(x) // 2)
    return x[order[n_guard:n_guard + n]], x[order[:n_guard]], True


def calibration_set(ctx: Context) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Images for INT8 calibration and for its guard, never from the test split."""
    mode, n, shape = ctx.options["int8_calibration"], ctx.options["calibration_size"], ctx.run.input_shape
    given = ctx.options.get("calibration_images")
    if given is not None:
        x, dropped = without_test(torch.from_numpy(Q.check_calibration(given, shape)), ctx.test_x, "the images given")
        pool, info = x.numpy(), {"mode": "given", "test_copies_left_out": dropped}
    elif mode == "target":
        spec = ctx.options.get("calibration_data")
        # a folder of 100,000 device images is not read in full for a few hundred (twice: room for test copies)
        x, dropped = target_images(ctx.run, spec, ctx.test_x, limit=2 * (n + GUARD_IMAGES))
        pool = Q.check_calibration(Q.subsample(x, n + GUARD_IMAGES, seed=0), shape)
        info = {"mode": "target", "from": spec or "the run's target images outside the test split",
                "test_copies_left_out": dropped}
    else:  # pseudo (ExportOptions allows no other)
        from edgeppt.bundle import open_source

        src = ctx.options.get("source") or ctx.run.settings.get("source")
        if not src:
            raise EdgepptError("--int8-calibration pseudo draws calibration images from the source bundle: "
                               "pass --source (the run has none)")
        # trust from this command's own options, never from the run's saved settings (a run folder can come from
        # anyone)
        calib, pinfo = Q.pseudo_calibration(open_source(src, ctx.trust or SourceTrust()), ctx.labelled_x, n, shape)
        # calibration stays data-free; INT8 is judged where it will run: on target images outside the test split
        guard = Q.check_calibration(Q.subsample(target_images(ctx.run, None, ctx.test_x)[0], GUARD_IMAGES, seed=1),
                                    shape)
        return calib, guard, {"mode": "pseudo", "source": str(src), **pinfo, "images": len(calib),
                              "guard_images": len(guard), "guard_disjoint": True,
                              "guard_from": "the run's target images outside the test split"}
    calib, guard, disjoint = split_guard(pool, n)
    return calib, guard, {**info, "images": len(calib), "guard_images": len(guard), "guard_disjoint": disjoint}


def target_images(run: LoadedRun, spec: str | None, test_x: np.ndarray, limit: int = 0) -> tuple[torch.Tensor, int]:
    """Unlabelled target images for calibration and the guards, and how many test images were left out of them: a
    given dataset less its copies of the run's test images (a target folder holds them; at most `limit` of its
    images are read, a fixed random subset: 0 = all), or the run's target set less its test split."""
    from edgeppt.data import load_unlabeled, reshape_images

    if not spec:  # the pool leaves out the test positions, not a picture that the folder holds twice
        return without_test(reshape_images(run_record(run).pool().x, run.image_size, run.in_chans), test_x,
                            "the run's target pool")
    # images only: a flat folder, class folders of any classes, an .npz of x alone, a built-in spec
    return without_test(load_unlabeled(spec, run.image_size, run.in_chans, limit)[0], test_x, spec)


def without_test(x: torch.Tensor, test_x: np.ndarray, what: str) -> tuple[torch.Tensor, int]:
    """x less its exact copies of the test images: the test split reports, it never calibrates or judges."""
    from edgeppt.data import exact_copies

    copies = exact_copies(x, torch.from_numpy(test_x))
    if copies.all():
        raise EdgepptError(f"{what}: every image is one of the run's test images, which never calibrate or judge "
                           "INT8; give other images, or leave --calibration-data out (the run's own pool)")
    return x[~copies], int(copies.sum())


def parse_formats(formats: str | list[str] | tuple[str, ...] | None, device: DeviceProfile) -> list[str]:
    if formats is None:
        wanted: list[str] = list(device.export.formats)
    else:
        wanted = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    unknown = [f for f in wanted if f not in FORMATS]
    if unknown:
        raise EdgepptError(f"unknown format(s) {unknown}; choose from {list(FORMATS)}")
    for f in wanted:  # what a format is built from comes with it (tensorrt: the QDQ model, unless fp16 is asked for)
        needs = FORMATS[f].built_from
        if needs and not set(needs) & set(wanted):
            wanted.append(needs[0])  # checked in turn: the loop reaches what is appended
    # table order (a format comes after what it is built from); the checked fp32 ONNX model is always written
    return [f for f in FORMATS if f in wanted or f == "onnx"]


def export_run(run_dir: str | Path, out: str | Path | None = None,
               device: str | Path | DeviceProfile = DEFAULT_DEVICE, formats: str | list[str] | None = None,
               source: str | Path | None = None, calibration_data: str | None = None, calibration_images: Any = None,
               threads: int | None = None, samples_per_class: int = 4, log: Callable[[str], None] = print,
               trust: SourceTrust | None = None, **settings: Any) -> dict[str, Any]:
    """Export a run to `out` (default dist/<run name>) and return the bundle's manifest. `device`: a built-in
    profile name (x86-cpu, arm-cpu, jetson), a user profile .yaml, or a loaded DeviceProfile. `trust`: a
    SourceTrust for the source bundle that pseudo calibration loads (default: ONNX bundles and keyring signers
    only). `settings`: the fields of ExportOptions (export/formats.py), whose defaults apply to the rest."""
    dev = device if isinstance(device, DeviceProfile) else load_profile(device)
    fmts = parse_formats(formats, dev)
    opts = validate(ExportOptions, settings, "export settings")  # (an unknown --int8-calibration among them)
    mode = opts.int8_calibration
    run = load_run(run_dir)
    if out is None:
        out = Path("dist") / run.path.resolve().name
        B.check_same_run(out, run.path)  # runs/a/transfer and runs/b/transfer: one default folder, two runs
    out = Path(out)
    B.check_replaceable(out)  # before minutes of work, as the staging below will
    check_writable(out)
    if opts.sign is not None:  # a mistyped key fails now, not after the export
        load_private_key(opts.sign)
        public_key_beside(opts.sign)
    if calibration_data and ("int8" not in fmts or mode == "pseudo"):  # said, not silently ignored
        log("warning: --calibration-data is not used: " + ("no int8 model is exported" if "int8" not in fmts else
                                                              "--int8-calibration pseudo calibrates on the source "
                                                              "bundle's samples"))
    if source and ("int8" not in fmts or mode != "pseudo"):
        log("warning: --source is not used: only --int8-calibration pseudo draws from the source bundle")
    if calibration_images is not None:
        Q.check_calibration(calibration_images, run.input_shape)  # fail before minutes of work
    labelled, test = run_data(run)
    reference = torch_logits(run.model, test.x)
    threads = dev.threads if threads is None else threads
    options = {**opts.model_dump(), "formats": fmts, "calibration_data": calibration_data,
               "calibration_images": calibration_images, "source": str(source) if source else None}
    dynamic_batch = opts.dynamic_batch
    torch_acc = float((reference.argmax(1) == test.y.numpy()).mean())
    with B.staging(out) as root:
        ctx = Context(run, root, dev, test.x.numpy(), test.y.numpy(), labelled.x, reference, options, trust=trust,
                      log=log)
        for fmt in fmts:
            ctx.artifacts[fmt] = BUILDERS[fmt](ctx)
        extra: dict[str, Any] = {}
        if "supermask" in run.checkpoint:  # the small over-the-air form of the same model
            sm = write_supermask(run, root, reference, ctx.test_x, dynamic_batch)
            sm["model_bytes"] = {f: (root / a["file"]).stat().st_size for f, a in ctx.artifacts.items()
                                 if str(a.get("file", "")).endswith(".onnx")}
            extra["supermask"] = sm
            log(f"supermask update: {sm['over_the_air_bytes']} bytes (update {sm['update_bytes']} + graph "
                f"{sm['template_bytes']}) vs model.onnx {sm['model_bytes']['onnx']}")
        spec = B.preprocess_spec(run.in_chans, run.image_size)
        B.write_support_files(root, run.classes, spec)
        n_samples = B.write_samples(root, ctx.test_x, ctx.test_y, run.classes, samples_per_class)
        table = results_table(ctx, torch_acc, threads, opts.bench_runs)
        cpu_int8 = int8_instructions()
        default, default_reason = choose_default(ctx.artifacts, table, dev, cpu_int8)
        log(f"default artifact: {default}: {default_reason}")
        budget = budget_check(default, table, ctx.artifacts, dev)
        if budget and not budget["within"]:
            log(f"warning: the default artifact takes {budget['default_ms']:.3f} ms at batch 1 here, over "
                f"{dev.name}'s latency budget of {budget['budget_ms']:g} ms")
        manifest = B.write_manifest(root, {
            "created_by": "edgeppt export", "run": str(run.path), "device": dev.name,
            "device_profile": dev.model_dump(mode="json"), "threads": threads,
            "default_format": default, "default_reason": default_reason, "latency_budget": budget,
            "classes": run.classes, "preprocess": spec,
            "input": {"name": INPUT_NAME, "shape": [1 if not dynamic_batch else "batch", *run.input_shape],
                      "dynamic_batch": dynamic_batch},
            "model": {"arch": run.checkpoint["arch"], "params": run.checkpoint.get("params")},
            "settings": run.settings, "data_record": run.report.get("data_record"),
            "test_images": len(test), "samples": n_samples,
            "artifacts": ctx.artifacts, "results": table, "floor": ctx.floor,
            "measured_on": {"host": platform.node(), "machine": platform.machine(), "threads": threads,
                            "int8_instructions": cpu_int8},
            **extra})
        if opts.sign is not None:
            signer = sign_folder(root, opts.sign)
            B.verify_bundle(root, [public_key_beside(opts.sign)])  # what the device will check
            log(f"signed with key {signer.key_id}")
    log(f"bundle written: {out}")
    return manifest


def results_table(ctx: Context, torch_acc: float, threads: int, runs: int) -> list[dict[str, Any]]:
    """The accuracy/latency table: PyTorch and every ONNX artifact on this host (latency) and the test split."""
    rows = [{"format": "pytorch", "precision": "fp32", "accuracy": torch_acc}]
    shape = list(ctx.run.input_shape)
    # The floor: the model's MACs at this host's measured float32 peak (export/floor.py).
    macs = onnx_macs(ctx.root / ctx.artifacts["onnx"]["file"])
    peak = host_peak(threads) if runs > 0 else None  # (0: one thread per core, as the artifacts were timed)
    ctx.floor = {"macs": macs, **(peak or {})}
    for fmt, art in ctx.artifacts.items():
        if not str(art.get("file", "")).endswith(".onnx"):
            continue
        row = {"format": fmt, "file": art["file"], "precision": art["precision"], "accuracy": art.get("accuracy")}
        if "parity" in art:
            row["top1_agreement"] = art["parity"]["top1_agreement"]
            row["max_abs_diff"] = art["parity"]["max_abs_diff"]
        if runs > 0 and "unchecked" not in art:
            s = runner.make_session(ctx.root / art["file"], threads, "cpu")
            row["batch1"] = runner.benchmark(s, shape, 1, runs)
            if runner.static_batch(s) is None:
                row["batch32"] = runner.benchmark(s, shape, 32, max(5, runs // 4))
            if peak:
                row.update(floor_columns(row, macs, peak["peak_gmacs"]))
        rows.append(row)
    return rows
