"""`edgeppt devices calibrate`: time probe models on the real device over SSH and fit its latency predictor.

The probes (the space's smallest and largest corners, the registered MobileNet sizes and seeded random
samples) are exported to ONNX here. One small Python program, with the models embedded, goes to the device
over a plain `ssh` on stdin; it times the models with ONNX Runtime (batch 1, the profile's threads and runtime;
every model once per round over several interleaved rounds, each keeping its least disturbed round's median) and
prints JSON. A quarter of the probes is held out to report the predictor's
error; the predictor written is then fitted on all probes.
"""

from __future__ import annotations

import base64
import inspect
import json
import math
import random
import shlex
import subprocess
from pathlib import Path
from typing import Any

import onnx
import yaml

from edgeppt import ort_timing
from edgeppt.config import SpaceConfig
from edgeppt.devices import DeviceProfile, load_profile
from edgeppt.errors import EdgepptError
from edgeppt.int8 import device_recipe, tensorrt
from edgeppt.models import arch_spec, create_model, list_models
from edgeppt.remote import ssh_command
from edgeppt.runs import atomic_write_text

from .latency import int8_bytes, to_onnx
from .predictor import errors, fit, layer_features
from .space import extreme_sample, random_sample, to_arch

# Runs on the device: only the standard library, numpy and onnxruntime; it times with the core's one timing
# helper, sent ahead of it as source. The probes are timed in interleaved rounds (every probe once per round) and
# each keeps its least disturbed round: a shared or throttled device slows down for seconds at a time, which
# would otherwise skew a contiguous run of probes (measured here: a stretch of probes at half speed).
REMOTE = r'''
import base64, json, platform, sys
import onnxruntime as ort
cfg = json.loads(base64.b64decode(CFG))
have = ort.get_available_providers()
providers = [p if isinstance(p, str) else tuple(p) for p in cfg["providers"]
             if (p if isinstance(p, str) else p[0]) in have] or ["CPUExecutionProvider"]
sessions = [open_session(base64.b64decode(m), cfg["threads"], providers) for m in cfg["models"]]
rounds = max(1, cfg["rounds"]); runs = max(3, cfg["repeats"] // rounds)
times = [[] for _ in sessions]
for r in range(rounds):
    for i, s in enumerate(sessions):
        warm = cfg["warmup"] if r == 0 else 2
        times[i].append(time_session(s, cfg["shape"], 1, runs, warm, float("inf"))["median_ms"])
print(json.dumps({"latency_ms": [min(t) for t in times], "rounds_ms": times, "onnxruntime": ort.__version__,
                  "providers": sessions[-1].get_providers(), "machine": platform.machine(),
                  "node": platform.node()}))
'''

PROVIDERS = {"onnxruntime-cpu": ["CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}


def shipped_format(models: list[bytes], in_shape: tuple[int, int, int], profile: DeviceProfile
                   ) -> tuple[list[bytes], list]:
    """The probes as the export ships them by default for this device (a predicted profile's `default_format`),
    with the providers that run that format: a predictor fitted on fp32 timings would predict fp32 latencies for
    an int8 or fp16 artifact. Returns (models, providers)."""
    fmt, providers = profile.export.default_format, list[Any](PROVIDERS[profile.runtime])
    if fmt == "int8":  # the export's recipe for this device (edgeppt.int8), scales from random images: timing only
        cfg = device_recipe(profile.export.symmetric_activations, tensorrt(profile))
        return [int8_bytes(m, in_shape, cfg) for m in models], providers
    if fmt in ("fp16", "tensorrt"):
        from onnxruntime.transformers.float16 import convert_float_to_float16

        half = [convert_float_to_float16(onnx.load_from_string(m), keep_io_types=True).SerializeToString()
                for m in models]
        if profile.runtime == "tensorrt":  # TensorRT's provider builds float32 engines unless told otherwise
            providers[0] = [providers[0], {"trt_fp16_enable": True}]
        return half, providers
    return models, providers


def probe_archs(space: SpaceConfig, n: int, seed: int = 0) -> list[dict]:
    """n distinct architectures spanning the space: both corners, the named MobileNets, then random samples."""
    archs = [to_arch(extreme_sample(space, True), space), to_arch(extreme_sample(space, False), space)]
    archs += [arch_spec(m) for m in list_models() if m.startswith("mobilenet")]
    rng = random.Random(seed)
    seen = {json.dumps(a, sort_keys=True) for a in archs}
    while len(archs) < n:
        a = to_arch(random_sample(space, rng), space)
        if json.dumps(a, sort_keys=True) not in seen:
            seen.add(json.dumps(a, sort_keys=True))
            archs.append(a)
    return archs[:n]


def time_remote(ssh: list[str], onnx_models: list[bytes], shape: list[int], threads: int, providers: list,
                warmup: int, repeats: int, timeout: float = 1800, rounds: int = 5) -> dict:
    cfg = {"models": [base64.b64encode(m).decode() for m in onnx_models], "shape": shape, "threads": threads,
           "providers": providers, "warmup": warmup, "repeats": repeats, "rounds": rounds}
    encoded = base64.b64encode(json.dumps(cfg).encode()).decode()
    program = f"{inspect.getsource(ort_timing)}\nCFG = {encoded!r}\n{REMOTE}"
    try:
        res = subprocess.run(ssh, input=program.encode(), capture_output=True, timeout=timeout)
    except FileNotFoundError as e:
        raise EdgepptError("calibrate needs the `ssh` client (OpenSSH) on this machine") from e
    except subprocess.TimeoutExpired as e:
        raise EdgepptError(f"timing on the device took longer than {timeout:.0f}s: {shlex.join(ssh)}") from e
    err = res.stderr.decode(errors="replace").strip()
    if res.returncode != 0:
        hint = " (the device needs python3 with numpy and onnxruntime)" if "ModuleNotFoundError" in err else ""
        last = err.splitlines()[-1] if err else ""
        raise EdgepptError(f"timing over ssh failed (exit {res.returncode}){hint}: {last}")
    try:
        return json.loads(res.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError) as e:  # (ValueError: not JSON, or not UTF-8)
        raise EdgepptError(f"the device answered something other than timings: {res.stdout[:200]!r}") from e


def calibrate(device: str | Path, host: str, out: str | Path, port: int | None = None, identity: Path | None = None,
              ssh_options: list[str] | None = None, python: str = "python3", probes: int = 24, holdout: float = 0.25,
              warmup: int = 10, repeats: int = 30, space: SpaceConfig | None = None, seed: int = 0,
              progress: bool = True) -> dict:
    """Measure probes on `host`, fit the predictor, write `<out>.yaml` (a profile that predicts from it) and
    `<out>.predictor.json`; return the report (held-out error, timings)."""
    profile: DeviceProfile = load_profile(device)
    space = space or SpaceConfig()
    in_shape = (profile.input_channels or 1, profile.input_size or 28, profile.input_size or 28)
    if probes < 6:
        raise EdgepptError(f"calibrate needs at least 6 probes (some are held out), got {probes}")
    archs = probe_archs(space, probes, seed)
    models = [create_model(a, 10, in_shape[0]) for a in archs]
    feats = [layer_features(m, in_shape) for m in models]
    if progress:
        from .report import console
        console.print(f"timing {len(models)} probe models on {host} "
                      f"({profile.runtime}, {profile.threads or 'all'} threads)")
    onnx_models, providers = shipped_format([to_onnx(m, in_shape) for m in models], in_shape, profile)
    answer = time_remote([*ssh_command(host, port, identity, ssh_options), f"{python} -"], onnx_models,
                         list(in_shape), profile.threads, providers, warmup, repeats)
    lat = answer.get("latency_ms") if isinstance(answer, dict) else None
    if not (isinstance(lat, list) and len(lat) == len(archs)
            and all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in lat)):
        raise EdgepptError(f"{host} answered with no usable timings ({len(archs)} positive milliseconds expected): "
                           f"{str(answer)[:200]}")
    ran_on = answer.get("providers") or ["?"]
    if profile.runtime == "tensorrt" and ran_on[0] != "TensorrtExecutionProvider":  # a predictor of the wrong chip
        raise EdgepptError(f"{host} ran the probes on {ran_on[0]}, not TensorRT: install onnxruntime-gpu with the "
                           "TensorRT execution provider there (the profile's runtime is tensorrt)")
    order = list(range(len(archs)))
    random.Random(seed).shuffle(order)
    n_test = max(2, int(round(len(order) * holdout)))
    test, train = order[:n_test], order[n_test:]
    trial = fit([feats[i] for i in train], [lat[i] for i in train])
    held = errors(trial, [feats[i] for i in test], [lat[i] for i in test])
    origin = (f"calibrated on {host} ({answer.get('machine')}, onnxruntime {answer.get('onnxruntime')}, "
              f"{ran_on[0]}) with {len(archs)} probes in {profile.export.default_format}")
    final = fit(feats, lat, origin)
    final.heldout = held
    out = Path(out)
    out = out.with_suffix("") if out.suffix in (".yaml", ".yml") else out
    pred_path = final.save(out.parent / f"{out.name}.predictor.json")
    raw = profile.model_dump(mode="json", exclude={"path"})
    raw.update(name=out.name, latency="predicted", predictor=pred_path.name,
               description=f"{profile.description} (latency predicted; {origin})".strip())
    prof_path = atomic_write_text(out.parent / f"{out.name}.yaml", yaml.safe_dump(raw, sort_keys=False))
    return {"profile": str(prof_path), "predictor": str(pred_path), "heldout": held,
            "fit_on_all": errors(final, feats, lat), "device": answer,
            "probes": [{"arch": a, "measured_ms": y, "predicted_ms": final.predict(f)}
                       for a, y, f in zip(archs, lat, feats)]}
