"""The run's report: report/index.md with pictures (samples, Pareto front, curves, confusion matrix, export table).

The figure functions are shared with the wizard, so the browser and the report show the same pictures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeppt.runs import atomic_write_bytes, atomic_write_json, atomic_write_text, read_jsonl
from edgeppt.search.record import read_best
from edgeppt.signing import MANIFEST_FILE
from edgeppt.transfer.record import copies_note, read_report, twice_note

from .config import PipelineConfig, dump_yaml
from .stages import bundle_fingerprint, data_fingerprint, input_key
from .state import export_bundle, read_state

SAMPLES_KEYS = "samples.json"  # what report/'s sample pictures were drawn from

REPORT_DIR = "report"


# ---------------------------------------------------------------- pictures
def class_grid(x, y, classes: list[str], out_png: str | Path, per_class: int = 8, scale: int | None = None) -> Path:
    """A labelled grid of images, one row per class: a preview of a dataset."""
    from PIL import Image, ImageDraw, ImageFont

    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    side = x.shape[-1]
    scale = scale or max(1, 48 // side)
    tile, pad = side * scale, 2
    font = ImageFont.load_default(size=12)
    label_w = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(c, font=font)) for c in classes) + 8
    canvas = Image.new("RGB", (label_w + per_class * (tile + pad), len(classes) * (tile + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, name in enumerate(classes):
        top = r * (tile + pad)
        draw.text((4, top + tile // 2), name, fill="black", font=font, anchor="lm")
        for c, i in enumerate(np.flatnonzero(y == r)[:per_class]):
            a = (np.clip(x[i], 0, 1) * 255).round().astype(np.uint8)
            a = np.repeat(a, 3, 0) if a.shape[0] == 1 else a
            im = Image.fromarray(a.transpose(1, 2, 0), "RGB").resize((tile, tile), Image.Resampling.NEAREST)
            canvas.paste(im, (label_w + c * (tile + pad), top))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    canvas.save(tmp)
    tmp.replace(out_png)
    return out_png


def training_curves(run: str | Path):
    """Loss per step of each phase (pseudo pre-training, then the target phase) and test accuracy; None before any."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    transfer = Path(run) / "transfer"
    records = read_jsonl(transfer / "pretrain" / "metrics.jsonl") + read_jsonl(transfer / "metrics.jsonl")
    if not records:
        return None
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.2))
    offset = 0
    for i, phase in enumerate(dict.fromkeys(r["phase"] for r in records)):
        rs = [r for r in records if r["phase"] == phase]
        steps = [offset + r["step"] for r in rs]
        trained = [(offset + r["step"], r["loss"]) for r in rs if "loss" in r]  # a phase loaded from the cache
        if trained:  # logs its end only, with no loss
            ax_loss.plot([s for s, _ in trained], _smooth([v for _, v in trained]), label=phase, color=f"C{i}")
        acc = [(offset + r["step"], r["test_accuracy"]) for r in rs if "test_accuracy" in r]
        if acc:
            ax_acc.plot(*zip(*acc), marker="o", label=phase, color=f"C{i}")  # the same colour as its loss
        offset = steps[-1]
    ax_loss.set(xlabel="step", ylabel="loss (smoothed)", title="training loss")
    ax_acc.set(xlabel="step", ylabel="test accuracy", title="target test accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _smooth(v: list[float], k: int = 10) -> np.ndarray:
    a = np.asarray(v, dtype=float)
    if len(a) < 2 * k:
        return a
    return np.convolve(np.pad(a, (k - 1, 0), mode="edge"), np.ones(k) / k, mode="valid")


CONFUSION_LABELLED = 30  # classes up to which the confusion figure names each class and counts each cell


def confusion_figure(report: dict[str, Any]):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(report["confusion_matrix"])
    classes = report["classes"]
    n = min(len(classes), CONFUSION_LABELLED)  # past it the figure stays this size: cells, not numbers or names
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n, 1 + 0.55 * n))
    ax.imshow(cm, cmap="Blues", interpolation="nearest")
    if len(classes) <= CONFUSION_LABELLED:
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=8)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=f"test accuracy {100 * report['test_accuracy']:.1f}%")
    fig.tight_layout()
    return fig


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------- tables
def export_rows(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per artifact: format, precision, accuracy on the test split, batch-1 latency on this host."""
    rows = []
    for r in manifest.get("results", []):
        b1 = r.get("batch1") or {}
        rows.append({"format": r["format"], "precision": r.get("precision", ""),
                     "accuracy %": None if r.get("accuracy") is None else round(100 * r["accuracy"], 2),
                     "batch-1 median ms": round(b1["median_ms"], 3) if b1 else None,
                     "batch-1 p90 ms": round(b1["p90_ms"], 3) if b1 else None,
                     "file": r.get("file", "")})
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    fmt = lambda v: "-" if v is None else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
                      *("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows)]) + "\n"


def summary_items(summary: dict[str, Any] | None) -> list[str]:
    """A stage summary as whole `key=value` items (nested records left to the report), so a table can put one
    per line instead of cutting one in half."""
    def text(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return ",".join(map(str, v)) if isinstance(v, list) else str(v)

    return [f"{k}={text(v)}" for k, v in (summary or {}).items()
            if not isinstance(v, dict) and v != []  # (an empty list says nothing: augment_notes where none fired)
            and not (isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v))]


def stage_rows(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"stage": name, "status": s.get("status"), "seconds": round(s.get("seconds", 0.0), 1),
             "resumed": s.get("resumed", False)} for name, s in state.get("stages", {}).items()]


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


# ---------------------------------------------------------------- the report
def write_report(cfg: PipelineConfig, run: str | Path) -> Path:
    """Write report/index.md from whatever the stages have produced so far."""
    from edgeppt.bundle import read_manifest
    from edgeppt.data import load_target
    from edgeppt.source.inspect import sample_grid

    run = Path(run)
    rep = run / REPORT_DIR
    rep.mkdir(parents=True, exist_ok=True)
    state = read_state(run)
    md = [f"# edgeppt run `{run.name}`\n", f"Status: **{state.get('status', '?')}**"
          + (f" — {state['error']}" if state.get("error") else "")
          + f" (written {time.strftime('%Y-%m-%d %H:%M:%S')})\n",
          "## Stages\n", markdown_table(stage_rows(state)),
          "## Config\n", "```yaml\n" + dump_yaml(cfg) + "```\n"]

    md.append("## Data\n")
    # drawn again when the bundle or the images they show change (a key per picture, kept beside them)
    drawn, now = read_json(rep / SAMPLES_KEYS) or {}, {"source": input_key(bundle_fingerprint(cfg.source)),
                                                      "target": input_key(data_fingerprint(cfg.target))}
    if drawn.get("source") != now["source"] or not (rep / "source_samples.png").exists():
        sample_grid(cfg.source, rep / "source_samples.png", per_class=8)
    md.append("Source generator samples (one row per source class, last row an interpolation):\n\n"
              "![source samples](source_samples.png)\n")
    if drawn.get("target") != now["target"] or not (rep / "target_samples.png").exists():
        ds = load_target(cfg.target, cfg.transfer.image_size, None, read_manifest(cfg.source).image_shape[1])
        class_grid(ds.x.numpy(), ds.y.numpy(), ds.classes, rep / "target_samples.png")
    atomic_write_json(rep / SAMPLES_KEYS, now)
    md.append("Target images:\n\n![target samples](target_samples.png)\n")

    search = run / "search"
    if cfg.search.enabled:
        md.append("## Search\n")
        if (search / "pareto.png").exists():
            atomic_write_bytes(rep / "pareto.png", (search / "pareto.png").read_bytes())
            md.append("![Pareto front](pareto.png)\n")
        best = read_best(search)
        if best:
            md.append("Chosen architecture (`search/best.json`):\n\n```json\n"
                      + json.dumps(best.model_dump(mode="json"), indent=2) + "\n```\n")

    outdated = [n for n, s in state.get("stages", {}).items() if s.get("status") == "outdated"]
    if outdated:  # after --until: their files are of earlier inputs, not shown as this run's
        md.append(f"*Not shown: {', '.join(outdated)}, whose results are of earlier settings (run again without "
                  "--until to bring them up to date).*\n")
    record = read_report(run / "transfer") if "transfer" not in outdated else None
    report = record.model_dump(mode="json") if record else None
    fig = training_curves(run) if "transfer" not in outdated else None
    if fig is not None or report:
        md.append("## Transfer\n")
    if fig is not None:
        save_figure(fig, rep / "curves.png")
        md.append("![training curves](curves.png)\n")
    if report:
        save_figure(confusion_figure(report), rep / "confusion.png")
        md.append(f"Test accuracy **{100 * report['test_accuracy']:.2f}%** ({report['data']['labelled']} labelled "
                  f"images, {report['data']['test']} test images), method **{report['method']}**.\n")
        if report.get("auto"):
            md.append(f"`--method auto` chose it: {report['auto']['reason']}.\n")
        for note in (copies_note(report), twice_note(report)):
            if note:
                md.append(f"{note[0].upper()}{note[1:]}.\n")
        md.append(markdown_table([{"class": c, "accuracy %": round(100 * a, 1)}
                                  for c, a in report["per_class_accuracy"].items()]))
        md.append("\n![confusion matrix](confusion.png)\n")

    manifest = read_json(export_bundle(run) / MANIFEST_FILE) if "export" not in outdated else None
    if manifest:
        md.append("## Export\n")
        md.append(f"Bundle `export/bundle` (download: `export/bundle.zip`), device `{manifest.get('device')}`, "
                  f"default format `{manifest.get('default_format')}`; latency measured on this host with "
                  f"{manifest.get('threads') or 'default'} threads.\n\n")
        md.append(markdown_table(export_rows(manifest)))
    return atomic_write_text(rep / "index.md", "\n".join(md))
