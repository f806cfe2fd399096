"""Which artifact a bundle runs by default: the fastest one measured on the device's own runtime that stays
within the accuracy budget, never slower than FP32; where the device's latency is only predicted, the device
profile's choice, labelled as such."""

from __future__ import annotations

from typing import Any

from edgeppt.cpu_int8 import describe, int8_instructions
from edgeppt.devices import DeviceProfile

MIN_FP16_AGREEMENT = 0.99  # top-1 agreement with PyTorch an FP16 model needs to be a default


def faithful(fmt: str, artifact: dict[str, Any]) -> bool:
    """Whether an artifact is accurate enough to ship by default (judged without the test split's labels)."""
    if fmt == "onnx":
        return True
    if fmt == "int8":
        return bool(artifact.get("accuracy_guard", {}).get("met"))
    # outside the test split (a bundle exported before guard_parity was measured is not judged on its test split)
    parity = artifact.get("guard_parity")
    return parity is not None and parity["top1_agreement"] >= MIN_FP16_AGREEMENT and "unchecked" not in artifact


def fastest(timed: dict[str, float], artifacts: dict[str, dict[str, Any]], keep: str | None) -> tuple[str | None, str]:
    """The fastest faithful format of the timed ones (a tie goes to `keep`), and every timing as text."""
    ok = {f: ms for f, ms in timed.items() if faithful(f, artifacts[f])}
    best = min(ok, key=lambda f: (ok[f], f != keep)) if ok else None
    return best, ", ".join(f"{f} {ms:.3f} ms" for f, ms in sorted(timed.items(), key=lambda kv: kv[1]))


def batch1_ms(results: list[dict[str, Any]], artifacts: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {r["format"]: r["batch1"]["median_ms"] for r in results if "batch1" in r and r["format"] in artifacts}


def choose_default(artifacts: dict[str, dict[str, Any]], results: list[dict[str, Any]],
                   device: DeviceProfile, cpu_int8: list[str] | None = None) -> tuple[str, str]:
    """(format, why) for the bundle's default artifact; `cpu_int8` is this host's 8-bit dot-product instructions
    (edgeppt.cpu_int8; read from this host when not given), named where int8 was timed and lost."""
    timed = batch1_ms(results, artifacts)
    if device.latency == "measured" and device.runtime == "onnxruntime-cpu" and "onnx" in timed:
        best, measured = fastest(timed, artifacts, keep="onnx")  # FP32 is always faithful, and wins a tie
        assert best is not None
        left_out = [f for f in timed if not faithful(f, artifacts[f])]
        why = f"the fastest at batch 1 on this host ({measured})"
        if left_out:
            why += f"; {', '.join(left_out)} left out: outside the accuracy budget"
        if "int8" in timed and "int8" not in left_out and best != "int8":  # within budget, and lost on speed
            why += f"; {describe(int8_instructions() if cpu_int8 is None else cpu_int8)}"
        return best, why
    default = device.export.default_format
    if default in artifacts and faithful(default, artifacts[default]):
        how = "predicted" if device.latency == "predicted" else "not timed here"
        return default, (f"{device.name}'s profile default: its latency is {how}, so this host's timings do not "
                         "decide (measure on the device with edgeppt deploy or devices calibrate)")
    return "onnx", f"{default}, {device.name}'s profile default, was not exported or is outside the accuracy budget"


def budget_check(default: str, results: list[dict[str, Any]], artifacts: dict[str, dict[str, Any]],
                 device: DeviceProfile) -> dict[str, Any] | None:
    """The default artifact's batch-1 latency here against the profile's latency budget, where this host is the
    device (a measured profile): the search admitted the network on the faster of its formats, and the one that
    ships can be another (INT8 outside its accuracy budget, or kept partly in float). None where it cannot say."""
    budget, timed = device.budgets.latency_ms, batch1_ms(results, artifacts)
    if device.latency != "measured" or budget is None or default not in timed:
        return None
    return {"budget_ms": budget, "default_ms": round(timed[default], 4), "within": timed[default] <= budget}


def on_device(manifest: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """The bundle's default against what the device's own benchmark (runner.py bench, over SSH) measured: the
    fastest artifact there within the accuracy budget, and the device's int8 instructions, as one sentence."""
    artifacts, default = manifest.get("artifacts", {}), manifest.get("default_format")
    best, measured = fastest(batch1_ms(report.get("results", []), artifacts), artifacts, keep=default)
    cpu = describe(report.get("int8_instructions"))
    failed = next((r.get("error") for r in report.get("results", []) if r.get("format") == default and r.get("error")),
                  None)
    if failed and best is not None:  # the default does not run on this device at all
        note = (f"the default ({default}) does not run here ({failed[:120]}); {best} is the fastest that does "
                f"({measured}); {cpu}; runner.py classify falls back to model.onnx, or run it with --model "
                f"{artifacts[best].get('file', best)}")
    elif best is None:
        note = f"no artifact within the accuracy budget ran here; {cpu}"
    elif best == default:
        note = f"the default ({default}) is the fastest here too ({measured}); {cpu}"
    else:
        note = (f"{best} is the fastest here within the accuracy budget, not the default {default}, which the "
                f"export host chose ({measured}); {cpu}; run it with runner.py classify --model "
                f"{artifacts[best].get('file', best)}")
    return {"default": default, "fastest": best, "note": note}
