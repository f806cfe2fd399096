#!/usr/bin/env python3
"""Runner of an edgeppt deployment bundle: classify image files, benchmark the bundle's models, verify its files.

This file is copied verbatim into every bundle as runner.py and runs on the device, so it needs only the
standard library, numpy and onnxruntime (pillow to read image files). Where onnxruntime has the TensorRT or
CUDA execution provider (onnxruntime-gpu on a Jetson), `--provider auto` uses it.

    python3 runner.py verify [--trusted-key K]    # sha256 of every file, and the signature, against manifest.json
    python3 runner.py classify a.png b.jpg        # one JSON line per image: top classes and probabilities
    python3 runner.py bench [--json]              # latency / throughput of every ONNX model, accuracy on samples/
    python3 runner.py materialize                 # a supermask bundle: rebuild the weights from the update
"""

import sys

# Run as a script, the bundle's folder is data, never a place to import from: a file put beside this one (json.py,
# numpy.py, __future__.py) would otherwise run before `verify` could refuse it. (So no `from __future__` here, and
# the annotations that Python 3.8 cannot evaluate are strings.) The helpers shipped beside it are read by path,
# each checked against the manifest's sha256 first: `_sibling`.
if __name__ == "__main__" and not __package__ and sys.path:
    del sys.path[0]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

try:
    import numpy as np  # noqa: E402
except ImportError:  # on a device without it, before main can say so
    sys.exit("runner.py needs numpy and onnxruntime, and pillow for image files: python3 -m pip install numpy "
             "onnxruntime pillow")

HERE = Path(__file__).resolve().parent
MANIFEST = "manifest.json"
RUNS, BATCH = 50, 32  # timed runs (the median counts) and the throughput batch: the package's own, copied here


def _sibling(name: str, root: Path = HERE) -> types.ModuleType:
    """A helper shipped beside this file (ort_timing.py, cpu_int8.py, image_io.py: the hash-checked copies of
    edgeppt's own, used even where some edgeppt is installed too; a supermask bundle's supermask_format.py), read by
    path (never a cached .pyc) and refused where its sha256 differs from the manifest's; loaded on first use, so
    `verify` runs none of the bundle's code."""
    path = root / f"{name}.py"
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return loaded
    source = path.read_bytes()
    try:
        listed = json.loads((root / MANIFEST).read_text()).get("files", {}).get(path.name)
    except (OSError, ValueError, AttributeError):
        listed = None
    if hashlib.sha256(source).hexdigest() != listed:
        sys.exit(f"{path.name}: not the file {MANIFEST} lists (modified, corrupt or added); run: python3 runner.py "
                 "verify")
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


# The one session and timing helper and the CPU's 8-bit dot-product instructions (which decide whether int8 can
# pay on this device).
if __package__:  # imported as edgeppt.export.runner
    from edgeppt.cpu_int8 import int8_instructions
    from edgeppt.ort_timing import open_session, time_session
else:
    def open_session(*args, **kwargs):  # type: ignore[misc]
        return _sibling("ort_timing").open_session(*args, **kwargs)

    def time_session(*args, **kwargs):  # type: ignore[misc]
        return _sibling("ort_timing").time_session(*args, **kwargs)

    def int8_instructions(cpuinfo: "str | None" = None) -> "list[str] | None":
        if not (HERE / "cpu_int8.py").is_file():  # a bundle written before the file was shipped
            return None
        return _sibling("cpu_int8").int8_instructions(cpuinfo)


SIGNATURE = "signature.json"
_CONFIG = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
KEYRING = Path(os.environ.get("EDGEPPT_CONFIG_DIR") or Path(_CONFIG) / "edgeppt") / "trusted-keys"


# ---------------------------------------------------------------- bundle files
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


MANIFEST_KEYS = ("files", "artifacts", "classes", "preprocess")  # what verify requires: classify and bench read them


def load_manifest(root: Path = HERE) -> "dict[str, Any]":
    return json.loads((Path(root) / MANIFEST).read_text())


def verify(root: Path = HERE, trusted_keys: "list[Path] | None" = None) -> "list[str]":
    """Problems found (empty when every listed file is present with its recorded sha256 and the signature, if
    any, is valid). When trusted keys are given, a signature by one of them is required; keys in the keyring
    check a signature that names them."""
    root = Path(root)
    try:
        manifest = load_manifest(root)
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        return [f"cannot read {MANIFEST}: {e}"]
    if not isinstance(manifest, dict):
        return [f"{MANIFEST} is not a JSON object"]
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        return [f"{MANIFEST} lacks {', '.join(missing)}"]
    if not isinstance(manifest["files"], dict):
        return [f"{MANIFEST}'s files is not a mapping of file names to sha256"]
    problems = verify_signature(root, list(trusted_keys or []), sorted(KEYRING.glob("*.pub")))
    for name, digest in manifest["files"].items():
        f = root / name
        if not f.is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(f) != digest:
            problems.append(f"{name}: sha256 differs from the manifest (modified or corrupt)")
    return problems


# ---------------------------------------------------------------- preprocessing
def verify_signature(root: Path, required: "list[Path]", known: "list[Path]" = []) -> "list[str]":  # noqa: B006
    """The Ed25519 signature over manifest.json (edgeppt export --sign): by one of the `required` keys when any
    are given (a keyring key does not stand in for them); else valid for the key it names where the keyring knows
    that key."""
    sig_path, key_files = root / SIGNATURE, required or known  # given keys: only they may have signed
    if not sig_path.exists():
        return ["the bundle is not signed, and a trusted key was given"] if required else []
    try:
        import base64

        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        return ["the bundle is signed but the cryptography package is missing: pip install cryptography"] \
            if required else []
    try:
        sig = json.loads(sig_path.read_text())
        signature, claimed = base64.b64decode(sig["signature"], validate=True), str(sig["key_id"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{SIGNATURE}: not a valid signature file ({e})"]
    message = (root / MANIFEST).read_bytes()
    for f in key_files:
        try:
            key = serialization.load_pem_public_key(Path(f).read_bytes())
        except (OSError, ValueError) as e:
            return [f"{f}: not a readable PEM public key ({e})"]
        if not isinstance(key, Ed25519PublicKey):
            return [f"{f}: not an Ed25519 public key"]
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if hashlib.sha256(raw).hexdigest()[:16] == claimed:
            try:
                key.verify(signature, message)
            except InvalidSignature:
                return [f"{MANIFEST}: the signature does not match (the bundle was altered after it was signed)"]
            return []
    return [f"signed by key {claimed}, which is not among the trusted keys"] if required else []


def preprocess(path: "str | Path", spec: "dict[str, Any]") -> np.ndarray:
    """An image file -> float32 (C, H, W) exactly as training saw it: gray/RGB, bilinear resize, scale to [0, 1]."""
    from PIL import Image  # only here: verify and bench run without Pillow

    if __package__:
        from edgeppt.image_io import to_8bit
    else:
        to_8bit = _sibling("image_io").to_8bit
    size, channels = int(spec["image_size"]), int(spec["channels"])
    with Image.open(path) as im:
        im = to_8bit(im).convert("L" if channels == 1 else "RGB")
        if im.size != (size, size):
            im = im.resize((size, size), getattr(Image, "Resampling", Image).BILINEAR)  # Pillow < 9.1: Image's
        a = np.asarray(im, dtype=np.float32)
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    mean = np.asarray(spec.get("mean", [0.0] * channels), np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.get("std", [1.0] * channels), np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray(((a * float(spec.get("scale", 1 / 255))) - mean) / std, dtype=np.float32)


# ---------------------------------------------------------------- sessions
def providers(kind: str = "auto") -> list:
    """Execution providers in order of preference; 'cpu' pins the CPU provider (reproducible numbers)."""
    import onnxruntime as ort

    if kind == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    chosen: list = []
    if "TensorrtExecutionProvider" in available:
        # The engine is built on first use and cached beside the bundle: it belongs to this GPU and TensorRT.
        cache = str(HERE / "trt_cache")
        chosen.append(("TensorrtExecutionProvider", {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
                                                     "trt_timing_cache_enable": True, "trt_timing_cache_path": cache}))
    if "CUDAExecutionProvider" in available:
        chosen.append("CUDAExecutionProvider")
    return chosen + ["CPUExecutionProvider"]


def make_session(model: "str | Path", threads: int = 0, provider: str = "auto"):
    # onnxruntime prints a provider that fails to start ("EP Error ... Falling back") on stdout, where classify's
    # one JSON line per image goes: to stderr with it
    with contextlib.redirect_stdout(sys.stderr):
        return open_session(model, threads, providers(provider))


def input_info(session) -> "tuple[str, list, type[np.floating]]":
    i = session.get_inputs()[0]
    dtype = np.float16 if i.type == "tensor(float16)" else np.float32
    return i.name, list(i.shape), dtype


def static_batch(session) -> "int | None":
    """The fixed batch size of the model's input, or None when the batch dimension is dynamic."""
    b = input_info(session)[1][0]
    return b if isinstance(b, int) and b > 0 else None


def predict_logits(session, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Logits for (N, C, H, W) images, in chunks the model accepts (one image at a time for a static batch-1 model)."""
    name, _, dtype = input_info(session)
    step = static_batch(session) or batch
    out = []
    for i in range(0, len(x), step):
        chunk = x[i:i + step].astype(dtype)
        if len(chunk) < step and static_batch(session):  # pad the last chunk to the fixed batch
            chunk = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), dtype)])
        out.append(session.run(None, {name: chunk})[0][:len(x[i:i + step])].astype(np.float32))
    return np.concatenate(out)


def benchmark(session, shape: "list[int]", batch: int, runs: int = RUNS, warmup: int = 5,
              max_seconds: float = 10.0, seed: int = 0) -> "dict[str, float]":
    """Median and p90 latency of one call at `batch`, and images/s; stops early after max_seconds."""
    return time_session(session, shape, batch, runs, warmup, max_seconds, seed)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ---------------------------------------------------------------- commands
def default_model(manifest: "dict[str, Any]") -> str:
    arts = manifest["artifacts"]
    return arts.get(manifest.get("default_format", "onnx"), arts["onnx"])["file"]


def onnx_models(manifest: "dict[str, Any]") -> "dict[str, str]":
    return {fmt: a["file"] for fmt, a in manifest["artifacts"].items() if str(a.get("file", "")).endswith(".onnx")}


def sample_images(root: Path, classes: "list[str]") -> "tuple[list[Path], list[int]]":
    """samples/<class>/<file>: a few labelled test images shipped for a smoke check of accuracy on the device."""
    files, labels = [], []
    for k, c in enumerate(classes):
        for f in sorted((root / "samples" / c).glob("*.png")) if (root / "samples" / c).is_dir() else []:
            files.append(f)
            labels.append(k)
    return files, labels


def cmd_classify(args, manifest: "dict[str, Any]") -> int:
    model = args.model or default_model(manifest)
    if model not in manifest["files"]:  # only what verify has just checked runs
        print(f"error: --model {model}: not a file of this bundle's manifest (its models: "
              f"{', '.join(sorted(onnx_models(manifest).values()))})", file=sys.stderr)
        return 2
    try:
        session = make_session(HERE / model, args.threads, args.provider)
    except Exception as e:  # a default this runtime cannot run (fp16 kernels on a CPU build): the fp32 model can
        fp32 = manifest["artifacts"]["onnx"]["file"]
        if args.model or model == fp32:
            raise
        print(f"note: {model} does not load here ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
              f"classifying with {fp32}", file=sys.stderr)
        session = make_session(HERE / fp32, args.threads, args.provider)
    classes, spec = manifest["classes"], manifest["preprocess"]
    bad = 0
    for path in args.images:
        try:
            x = preprocess(path, spec)[None]
        except ImportError:  # no Pillow on this device: no image can be read, said once (main)
            raise
        except Exception as e:  # unreadable image: report it and go on with the others
            print(json.dumps({"file": str(path), "error": str(e)}))
            bad += 1
            continue
        p = softmax(predict_logits(session, x)[0])
        top = np.argsort(-p)[:args.top]
        print(json.dumps({"file": str(path), "class": classes[top[0]],
                          "top": [{"class": classes[i], "p": round(float(p[i]), 4)} for i in top]}))
    return 1 if bad else 0


def run_bench(root: Path, manifest: "dict[str, Any]", formats: "list[str] | None" = None, threads: int = 0,
              provider: str = "auto", batch: int = BATCH, runs: int = RUNS,
              max_seconds: float = 10.0) -> "dict[str, Any]":
    """Benchmark every ONNX model of the bundle on this machine; accuracy on samples/ where shipped."""
    import onnxruntime as ort

    spec = manifest["preprocess"]
    shape = [int(spec["channels"]), int(spec["image_size"]), int(spec["image_size"])]
    files, labels = sample_images(root, manifest["classes"])
    try:
        xs = np.stack([preprocess(f, spec) for f in files]) if files else None
    except ImportError:  # no Pillow on this device: timings need no image file, the samples' accuracy does
        xs = None
    results = []
    for fmt, file in onnx_models(manifest).items():
        if formats and fmt not in formats:
            continue
        row: dict[str, Any] = {"format": fmt, "file": file}
        try:
            s = make_session(root / file, threads, provider)
            row["provider"] = s.get_providers()[0]
            row["batch1"] = benchmark(s, shape, 1, runs, max_seconds=max_seconds)
            if static_batch(s) is None and batch > 1:
                row[f"batch{batch}"] = benchmark(s, shape, batch, max(5, runs // 4), max_seconds=max_seconds)
            if xs is not None:
                row["sample_accuracy"] = float((predict_logits(s, xs).argmax(1) == np.asarray(labels)).mean())
                row["samples"] = len(files)
        except Exception as e:  # e.g. no float16 kernels on this CPU: say so, keep benchmarking the others
            row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        results.append(row)
    return {"host": platform.node(), "machine": platform.machine(), "python": platform.python_version(),
            "onnxruntime": ort.__version__, "threads": threads, "cpu_count": os.cpu_count(),
            "int8_instructions": int8_instructions(), "results": results,
            "sizes": model_sizes(root, manifest)}


# ---------------------------------------------------------------- supermask update
def materialize(root: Path, manifest: "dict[str, Any]") -> "dict[str, Any]":
    """Rebuild a supermask bundle's weights from its update (seed, mask bits, generations; and the base weights
    when it has one) with the bundle's own supermask_format.py, write them beside the graph, and check them:
    their sha256 against the manifest's, and the materialised graph's outputs against the default model's on the
    shipped samples (the float32 model.onnx, of which it is the same network)."""
    info = manifest.get("supermask")
    if not info:
        raise SystemExit("this bundle's model is not a supermask: nothing to materialise")
    fmt = _sibling(Path(info["format_module"]).stem, Path(root))
    arrays = dict(np.load(root / info["update"], allow_pickle=False))
    base = dict(np.load(root / info["base"], allow_pickle=False)) if info.get("base") else None
    weights = fmt.unpack(arrays, base)
    blob = b"".join(np.ascontiguousarray(weights[name], dtype="<f4").tobytes() for name, _, _ in info["layout"])
    digest = hashlib.sha256(blob).hexdigest()
    out: dict[str, Any] = {"weights_sha256": digest, "matches_manifest": digest == info["weights_sha256"],
                           "update_bytes": info["update_bytes"], "over_the_air_bytes": info["over_the_air_bytes"]}
    if not out["matches_manifest"]:
        return out
    tmp = root / (info["weights_file"] + ".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, root / info["weights_file"])
    files, _ = sample_images(root, manifest["classes"])
    if files:
        xs = np.stack([preprocess(f, manifest["preprocess"]) for f in files])
        got = predict_logits(make_session(root / info["template"], 1, "cpu"), xs)
        ref = predict_logits(make_session(root / manifest["artifacts"]["onnx"]["file"], 1, "cpu"), xs)
        out["max_abs_diff_vs_fp32"] = float(np.abs(got - ref).max())
        out["top1_agreement_vs_fp32"] = float((got.argmax(1) == ref.argmax(1)).mean())
    return out


def model_sizes(root: Path, manifest: "dict[str, Any]") -> "dict[str, int]":
    """Bytes of each ONNX model, and of the supermask update (update + graph) where the bundle has one."""
    sizes = {fmt: (root / f).stat().st_size for fmt, f in onnx_models(manifest).items() if (root / f).is_file()}
    if manifest.get("supermask"):
        sizes["supermask update"] = int(manifest["supermask"]["over_the_air_bytes"])
    return sizes


def format_table(report: "dict[str, Any]") -> str:
    lines = [f"{'format':8} {'provider':26} {'b1 median ms':>12} {'b1 p90 ms':>10} {'img/s':>10} {'samples acc':>11}"]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"{r['format']:8} error: {r['error']}")
            continue
        big = next((v for k, v in r.items() if k.startswith("batch") and k != "batch1"), r["batch1"])
        acc = f"{100 * r['sample_accuracy']:.1f}%" if "sample_accuracy" in r else "-"
        b1 = r["batch1"]
        lines.append(f"{r['format']:8} {r['provider']:26} {b1['median_ms']:12.3f} {b1['p90_ms']:10.3f} "
                     f"{big['throughput_ips']:10.0f} {acc:>11}")
    if report.get("sizes"):
        lines.append("sizes: " + ", ".join(f"{k} {v / 1024:.1f} KiB" for k, v in report["sizes"].items()))
    return "\n".join(lines)


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(description="edgeppt bundle runner")
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="check every file against the manifest's sha256, and the signature")
    c = sub.add_parser("classify", help="classify image files")
    c.add_argument("images", nargs="+")
    c.add_argument("--top", type=_positive, default=3)
    b = sub.add_parser("bench", help="benchmark the bundle's models on this machine")
    b.add_argument("--formats", default="", help="comma-separated subset, e.g. onnx,int8")
    b.add_argument("--batch", type=int, default=BATCH, help="throughput batch (dynamic-batch models only)")
    b.add_argument("--runs", type=int, default=RUNS)
    b.add_argument("--max-seconds", type=float, default=10.0)
    b.add_argument("--json", action="store_true")
    c.add_argument("--model", default=None, help="model file inside the bundle (default: the device's format)")
    m = sub.add_parser("materialize", help="a supermask bundle: rebuild its weights from the update and check them")
    for p in (v, c, b, m):
        p.add_argument("--trusted-key", action="append", default=[], type=Path,
                       help=f"public key that must have signed the bundle (also: any .pub in {KEYRING})")
    for p in (c, b):
        p.add_argument("--threads", type=int, default=None,
                       help="intra-op threads (default: the bundle's device setting)")
        p.add_argument("--provider", choices=["auto", "cpu"], default="auto")
    args = ap.parse_args(argv)

    problems = verify(HERE, args.trusted_key)
    if problems:  # never run a model whose bytes are not the ones exported
        print("bundle verification failed:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 3
    if args.cmd == "verify":
        signed = " and the signature is valid" if (HERE / SIGNATURE).exists() and args.trusted_key else ""
        print(f"ok: every file matches its sha256{signed}")
        return 0
    manifest = load_manifest(HERE)
    if getattr(args, "threads", 0) is None:
        args.threads = int(manifest.get("threads", 0))
    if args.cmd == "classify":
        return cmd_classify(args, manifest)
    if args.cmd == "materialize":
        result = materialize(HERE, manifest)
        print(json.dumps(result))
        ok = result["matches_manifest"] and result.get("max_abs_diff_vs_fp32", 0.0) < 1e-3
        return 0 if ok else 1
    formats = [f for f in args.formats.split(",") if f] or None
    report = run_bench(HERE, manifest, formats, args.threads, args.provider, args.batch, args.runs, args.max_seconds)
    print(json.dumps(report) if args.json else format_table(report))
    return 0


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: give 1 or more")
    return n


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except ImportError as e:  # a device without what the runner runs on: one line saying what to install
        sys.exit(f"runner.py needs numpy and onnxruntime, and pillow for image files ({e}): "
                 "python3 -m pip install numpy onnxruntime pillow (on a Jetson, NVIDIA's onnxruntime-gpu wheel)")
    except Exception as e:  # one line on the device too, never a traceback
        sys.exit(f"error: {type(e).__name__}: {' '.join(str(e).split())[:400]}")
