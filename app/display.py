"""What the wizard shows, as plain text and rows: small pure functions, so each is unit-tested without a browser.

Streamlit draws a missing number as "None" and a float with every digit, so values arrive here as finished text.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from edgeppt.devices import DeviceProfile
from edgeppt.search.record import SearchResult


def count(n: int | None) -> str:
    """A parameter or MAC count as a person reads it: 34,701 / 3.75M."""
    if n is None:
        return ""
    return f"{n / 1e6:.3g}M" if n >= 1_000_000 else f"{n:,}"


def percent(v: float | None, digits: int = 1) -> str:
    return "" if v is None else f"{100 * v:.{digits}f}%"


def number(v: float | None, digits: int) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def budget_caption(profile: DeviceProfile) -> str:
    """The device's budgets and export formats, in words ('no limit' where a budget is unset)."""
    b = profile.budgets
    limits = [f"latency {b.latency_ms:g} ms" if b.latency_ms else "latency: no limit",
              f"{count(b.params)} parameters" if b.params else "parameters: no limit",
              f"{count(b.macs)} MACs" if b.macs else "MACs: no limit",
              f"{b.peak_activation_kib:g} KiB peak activations" if b.peak_activation_kib
              else "peak activations: no limit"]
    e = profile.export
    if profile.latency == "measured":
        default = "the bundle runs the fastest one measured here within the accuracy budget"
    else:
        default = f"the bundle runs {e.default_format} by default"
    return f"Budgets: {' · '.join(limits)}. Export formats: {', '.join(e.formats)} ({default})."


TRIAL_COLUMNS = ("trial", "status", "proxy accuracy", "mean of seeds", "latency ms", "latency from", "parameters",
                 "MACs", "peak activations KiB", "training s")


def trial_rows(trials: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The search ledger as a table: readable column names, rounded values, empty cells where nothing applies
    (a rejected candidate has no accuracy, a non-finalist no mean of seeds)."""
    return [dict(zip(TRIAL_COLUMNS, (
        str(r["reference"]) if r.get("reference") else "" if r.get("trial") is None else str(r["trial"]),
        str(r.get("status") or ""),
        percent(r.get("accuracy")), percent(r.get("final_accuracy")), number(r.get("latency_ms"), 3),
        str(r.get("latency_kind") or ""), count(r.get("params")), count(r.get("macs")),
        number(r.get("peak_activation_kib"), 1), number(r.get("train_s"), 1)))) for r in trials]


def arch_summary(best: SearchResult) -> str:
    """The architecture's parts outside its stages: family, stem, activation, head."""
    c = best.config
    head = f"a {c['head_width']}-channel 1x1 head" if c.get("head_width") else "no head convolution"
    parts = [best.family] + ([f"stem {c['stem']} channels"] if "stem" in c else [])
    parts += ([f"{c['act']} activations"] if "act" in c else []) + [head]
    return " · ".join(parts)


def arch_stage_rows(best: SearchResult) -> list[dict[str, str]]:
    """One row per stage of a searched network (the first block of a stage strides)."""
    return [{"stage": str(i + 1), "width": str(s.get("width", "")), "blocks": str(s.get("depth", 1)),
             "kernel": f"{s.get('kernel', 3)}x{s.get('kernel', 3)}", "expansion": f"{s.get('expand', 1):g}x",
             "squeeze-excite": "yes" if s.get("se") else "no", "stride": str(s.get("stride", 1))}
            for i, s in enumerate(best.config.get("stages", []))]


def arch_cost_rows(best: SearchResult) -> list[dict[str, str]]:
    """The chosen architecture's costs beside the device budgets it had to meet."""
    m, c, b = best.search, best.search.costs, best.search.budgets
    seeds = m.proxy_seed_accuracies
    accuracy = percent(m.proxy_accuracy) + (f" (mean of {len(seeds)} seeds)" if len(seeds) > 1 else "")
    latency = "" if c.latency_ms is None else f"{c.latency_ms:.3f} ms" + (f" ({c.latency_kind})" if c.latency_kind
                                                                            else "")
    rows = [("proxy accuracy", accuracy, ""),
            ("latency, batch 1", latency, f"{b['latency_ms']:g} ms" if b.get("latency_ms") else "no limit"),
            ("parameters", count(c.params), count(b.get("params")) or "no limit"),
            ("MACs", count(c.macs), count(b.get("macs")) or "no limit"),
            ("peak activations", "" if c.peak_activation_kib is None else f"{c.peak_activation_kib:g} KiB",
             f"{b['peak_activation_kib']:g} KiB" if b.get("peak_activation_kib") else "no limit")]
    return [{"": name, "chosen": value, "budget": budget} for name, value, budget in rows]


def per_class_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    return [{"class": c, "accuracy": percent(a)} for c, a in report["per_class_accuracy"].items()]


def default_artifact_note(manifest: dict[str, Any]) -> str:
    """Which model the bundle's runner classifies with when given none, and why that one."""
    fmt = manifest.get("default_format", "onnx")
    art = manifest.get("artifacts", {}).get(fmt, {})
    device = manifest.get("device", "the device")
    wanted = (manifest.get("device_profile") or {}).get("export", {}).get("default_format")
    if manifest.get("default_reason"):  # the export's own account of its choice
        why = str(manifest["default_reason"])
    elif wanted and wanted != fmt:
        why = f"the {device} profile asks for {wanted}, which this bundle does not hold, so the plain ONNX model"
    else:
        why = f"the {device} profile's default format (its export.default_format)"
    note = f"The bundle runs **{fmt}** (`{art.get('file', '?')}`) by default: {why}."
    guard = art.get("accuracy_guard")
    if guard and not guard.get("met"):
        note += f" Its accuracy guard was not met: {guard.get('note')}."
    budget = manifest.get("latency_budget")
    if budget and not budget.get("within"):
        note += (f" It takes {budget['default_ms']:.3f} ms at batch 1 here, over the device's latency budget of "
                 f"{budget['budget_ms']:g} ms.")
    others = [a["file"] for f, a in manifest.get("artifacts", {}).items() if f != fmt and "file" in a]
    if others:
        note += f" Another one runs with `--model`, e.g. `python runner.py classify IMAGE --model {others[0]}`."
    return note


def zip_folder(folder: Path) -> bytes:
    """A folder's files as one zip, paths relative to it (a report page and the pictures it links)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            z.write(f, f.relative_to(folder).as_posix())
    return buf.getvalue()
