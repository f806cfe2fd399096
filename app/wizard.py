"""The edgeppt wizard: target data -> source bundle -> device and budget -> search -> transfer -> export.

A front end over pipeline/: each step edits one run directory's config, and the stages run as a background
`edgeppt run` process writing into that directory. The page only reads the directory, so a reload or a second
tab (the run's name is in the URL) shows the same job, which keeps running when the page is closed.

    edgeppt app                     # or: streamlit run app/wizard.py -- --runs runs
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

import streamlit as st

from edgeppt.app import display
from edgeppt.app.uploads import UploadError, extract_bundle, extract_image_folders, extract_images
from edgeppt.config import LABELS_PER_CLASS
from edgeppt.data import EXAMPLE_TARGET, split_spec
from edgeppt.devices import DEFAULT_DEVICE
from edgeppt.errors import EdgepptError
from edgeppt.export.formats import FORMATS
from edgeppt.pipeline import jobs
from edgeppt.pipeline.config import STAGE_NAMES, PipelineConfig, dump_yaml, parse_config
from edgeppt.pipeline.example import BUDGETS, budget_help, example_bundle
from edgeppt.pipeline.report import class_grid, confusion_figure, export_rows, read_json, training_curves
from edgeppt.pipeline.state import BUNDLE_ZIP, CONFIG_FILE, export_bundle
from edgeppt.runs import atomic_write_json, read_jsonl
from edgeppt.search.record import CONFIG_FILE as SEARCH_CONFIG_FILE
from edgeppt.search.record import read_best
from edgeppt.signing import MANIFEST_FILE
from edgeppt.transfer.record import PLAN_FILE, copies_note, read_report, twice_note

STEPS = ["1 · Target data", "2 · Source bundle", "3 · Device & budget", "4 · Search", "5 · Transfer", "6 · Export"]
EXAMPLE_TARGET_LABEL = "Built-in example: animals (elephant, giraffe, horse, sheep, zebra)"
EXAMPLE_SOURCE_LABEL = "Built-in example bundle: animals-src (bear, bird, cat, cow, dog)"
UPLOAD_TARGET_LABEL = "Upload a zip of class folders (<class>/<image>.png)"
UPLOAD_SOURCE_LABEL = "Upload a zip of a source bundle folder"
UNLABELED_LABELS = {"none": "None", "rest": "The target images left unlabelled (the rest of each class folder)",
                    "upload": "Upload a zip of unlabelled images (any folder layout)"}
DRAFT_FILE, WIZARD_DIR = "draft.json", "wizard"
REFRESH_S = 2.0
PREVIEW_SIDE = 64  # the side a preview shows photos of mixed sizes at


# ---------------------------------------------------------------- run directory and draft
def runs_root() -> Path:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", default=os.environ.get("EDGEPPT_RUNS", "runs"))
    args, _ = parser.parse_known_args(sys.argv[1:])
    root = Path(args.runs).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def current_run() -> Path:
    """The run named in the URL (?run=...), so a reload or a second tab opens the same one."""
    name = st.query_params.get("run")
    if not name or "/" in name or name.startswith("."):
        name = time.strftime("run-%Y%m%d-%H%M%S")
        st.query_params["run"] = name
    run = runs_root() / name
    (run / WIZARD_DIR).mkdir(parents=True, exist_ok=True)
    return run


def default_draft() -> dict[str, Any]:
    return {"target_kind": "example", "target": EXAMPLE_TARGET, "labels_per_class": LABELS_PER_CLASS,
            "source_kind": "example", "source": None, "device": DEFAULT_DEVICE, "budget": "demo",
            "search": {}, "transfer": {}, "export": {}}


def load_draft(run: Path) -> dict[str, Any]:
    draft = default_draft()
    saved = read_json(run / WIZARD_DIR / DRAFT_FILE)
    if saved:
        draft.update(saved)
    return draft


def save_draft(run: Path, draft: dict[str, Any]) -> None:
    atomic_write_json(run / WIZARD_DIR / DRAFT_FILE, draft)


def _is_example(source: Path) -> bool:
    try:
        return source.resolve() == example_bundle().resolve()
    except EdgepptError:  # no example bundle in this install: a run's bundle is its own
        return False


def build_config(draft: dict[str, Any]) -> PipelineConfig:
    """Budget preset, then the wizard's choices on top; validated like a pipeline.yaml."""
    raw: dict[str, Any] = copy.deepcopy(BUDGETS[draft["budget"]])
    for section in STAGE_NAMES:
        _merge(raw.setdefault(section, {}), draft.get(section) or {})
    raw.update(draft.get("kept") or {})  # a run's own top-level settings the wizard has no widget for
    raw.update(source=draft["source"] or str(example_bundle()), target=draft["target"],
               labels_per_class=draft["labels_per_class"], device=draft["device"])
    return parse_config(raw, "wizard settings")


# pipeline.yaml's top-level settings the wizard shows no widget for: a run reopened keeps them as they are
KEPT = ("test", "test_fraction", "seed", "threads", "augment")


def _merge(into: dict[str, Any], over: dict[str, Any]) -> None:
    """Nested settings (transfer.pssl) merge key by key, so one choice keeps the budget's other values."""
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def _at(d: dict[str, Any], section: str) -> dict[str, Any]:
    for part in section.split("."):
        d = d.setdefault(part, {})
    return d


def bound(widget, label: str, run: Path, draft: dict[str, Any], name: str, current: Any, *args: Any,
          section: str | None = None, preset: Any = None, tag: str = "", **kw: Any) -> Any:
    """A widget that shows the draft's value; only the user's change (its callback) writes the draft.

    The page never feeds a widget's return value back into the draft, so a redraw that Streamlit interrupts and
    restarts (a fast second click) cannot reset a choice to the widget's default. In a stage section a value equal
    to the budget's `preset` is dropped, so switching budgets moves every value the user did not set.
    """
    key = f"{run.name}:{section or ''}:{name}:{tag}"

    def changed() -> None:
        value = st.session_state[key]
        fresh = load_draft(run)
        target = _at(fresh, section) if section else fresh  # section: "transfer" or a nested "transfer.pssl"
        if section and value == preset:
            target.pop(name, None)
        else:
            target[name] = value
        save_draft(run, fresh)

    if widget in (st.radio, st.selectbox):
        kw["index"] = list(args[0]).index(current)
    elif widget is st.multiselect:
        kw["default"] = current
    else:
        kw["value"] = current
    return widget(label, *args, key=key, on_change=changed, **kw)


# ---------------------------------------------------------------- cached pictures
def stamp(spec: str) -> int:
    """When a folder or file was last replaced (an upload unpacks a new folder at the same path): the previews'
    cache key beside the path, so a second upload is not shown as the first."""
    path = Path(split_spec(spec)[0])
    return path.stat().st_mtime_ns if path.exists() else 0


@st.cache_data(show_spinner="Loading the target images…", max_entries=8)
def target_preview(spec: str, out_png: str, stamp: int = 0) -> dict[str, Any]:
    from edgeppt.data import NeedsImageSize, load_dataset

    try:  # large square photos read at the preview's side, never whole into the server's memory
        ds, mixed = load_dataset(spec, max_side=PREVIEW_SIDE), False
    except NeedsImageSize:  # photos of mixed or non-square sizes: training resizes them (to one side)
        ds, mixed = load_dataset(spec, PREVIEW_SIDE), True
    class_grid(ds.x.numpy(), ds.y.numpy(), ds.classes, out_png)
    return {"classes": ds.classes, "counts": ds.counts(), "shape": list(ds.shape), "skipped": ds.skipped[:10],
            "mixed_sizes": mixed}


@st.cache_data(show_spinner="Verifying the bundle and drawing samples…", max_entries=8)
def bundle_preview(path: str, out_png: str, stamp: int = 0) -> dict[str, Any]:
    from edgeppt.bundle import load_bundle
    from edgeppt.source.inspect import render_grid

    b = load_bundle(path)  # the signature, every file's sha256, then the generator/classifier contract
    render_grid(b, out_png, per_class=8)
    return {"classes": b.classes, "latent_dim": b.latent_dim, "image_shape": list(b.image_shape),
            "provenance": b.provenance, "files": {f: h[:16] for f, h in b.manifest.files.items()}}


# ---------------------------------------------------------------- steps
def step_target(run: Path, draft: dict[str, Any]) -> None:
    st.header("Target data")
    st.write("The few labelled images of your task. Their classes need not share anything with the source classes.")
    labels = {"example": EXAMPLE_TARGET_LABEL, "upload": UPLOAD_TARGET_LABEL}
    if draft.get("config_target"):  # a run made from a pipeline.yaml: its own target spec
        labels["config"] = f"As in the run's config: {draft['config_target']}"
    bound(st.radio, "Target images", run, draft, "target_kind", draft["target_kind"], list(labels),
          format_func=labels.get)
    if draft["target_kind"] == "example":
        draft["target"] = default_draft()["target"]
    elif draft["target_kind"] == "config":
        draft["target"] = draft["config_target"]
    else:
        up = _uploader(run, "Zip of class folders", "target_zip")
        if up is None:  # emptied: the same zip uploaded again is unpacked again
            st.session_state.pop("target_zip_done", None)
        if up is not None and st.session_state.get("target_zip_done") != (run.name, up.name, up.size):
            try:
                root = extract_image_folders(up.getvalue(), run / "data" / "target")
                draft["target"] = str(root)
                st.session_state["target_zip_done"] = (run.name, up.name, up.size)
                st.success(f"unpacked {up.name}")
            except UploadError as e:
                st.error(str(e))
                draft["target"] = None
        if draft["target_kind"] == "upload" and not (draft.get("target") and Path(draft["target"]).is_dir()):
            draft["target"] = None
            st.info("Upload a zip whose top level holds one folder per class.")
    bound(st.number_input, "Labelled images per class used for training", run, draft, "labels_per_class",
          int(draft["labels_per_class"]), 1, max(1000, int(draft["labels_per_class"])))
    unlabeled_choice(run, draft)
    save_draft(run, draft)
    if draft.get("target"):
        try:
            info = target_preview(draft["target"], str(run / WIZARD_DIR / "target_preview.png"), stamp(draft["target"]))
        except EdgepptError as e:
            st.error(str(e))
            return
        st.subheader("Preview per class")
        st.image(str(run / WIZARD_DIR / "target_preview.png"))
        st.table([{"class": c, "images": n} for c, n in zip(info["classes"], info["counts"])])
        if info["skipped"]:
            st.warning("Unreadable files skipped: " + "; ".join(info["skipped"]))
        if info.get("mixed_sizes"):
            st.info(f"The images have mixed or non-square sizes: shown here at {PREVIEW_SIDE} px. Training resizes "
                    "them all to the source bundle's side (or to transfer.image_size where one is set).")


def _uploader(run: Path, label: str, key: str):
    """A zip uploader, off while a job of this run is running: its upload would replace the files the job reads."""
    running = jobs.is_running(run)
    return st.file_uploader(label, type=["zip"], key=key, disabled=running,
                            help="A job of this run is running; upload when it has finished." if running else None)


def unlabeled_choice(run: Path, draft: dict[str, Any]) -> None:
    """Unlabelled images from the device: auto then adds semi-supervised training over them (transfer.unlabeled)."""
    transfer = draft.setdefault("transfer", {})
    spec = transfer.get("unlabeled")
    labels = dict(UNLABELED_LABELS)
    if spec and spec != "rest" and draft.get("unlabeled_kind") != "upload":
        labels["config"] = f"As in the run's config: {spec}"
    kind = draft.get("unlabeled_kind") or ("none" if not spec else "rest" if spec == "rest" else "config")
    bound(st.radio, "Unlabelled images (optional)", run, draft, "unlabeled_kind", kind, list(labels),
          format_func=labels.get, help="Many unlabelled images of the task usually pay more than any method "
          "without them: the transfer stage spreads the labels over them (docs/transfer.md).")
    if kind == "none":
        transfer.pop("unlabeled", None)
    elif kind == "rest":
        transfer["unlabeled"] = "rest"
    elif kind == "upload":
        up = _uploader(run, "Zip of unlabelled images", "unlabeled_zip")
        if up is None:  # emptied: the same zip uploaded again is unpacked again
            st.session_state.pop("unlabeled_zip_done", None)
        if up is not None and st.session_state.get("unlabeled_zip_done") != (run.name, up.name, up.size):
            try:
                transfer["unlabeled"] = str(extract_images(up.getvalue(), run / "data" / "unlabeled"))
                st.session_state["unlabeled_zip_done"] = (run.name, up.name, up.size)
                st.success(f"unpacked {up.name}")
            except UploadError as e:
                st.error(str(e))
                transfer.pop("unlabeled", None)
        if not (transfer.get("unlabeled") and Path(transfer["unlabeled"]).is_dir()):
            transfer.pop("unlabeled", None)
            st.info("Upload a zip of images; folders inside it are searched, and their names are ignored.")


def step_source(run: Path, draft: dict[str, Any]) -> None:
    st.header("Source bundle")
    st.write("A compiled class-conditional generator G(z, y) and a source classifier C(x), written by "
             "`edgeppt source train`.")
    bound(st.radio, "Source bundle", run, draft, "source_kind", draft["source_kind"], ["example", "upload"],
          format_func={"example": EXAMPLE_SOURCE_LABEL, "upload": UPLOAD_SOURCE_LABEL}.get)
    if draft["source_kind"] == "example":
        draft["source"] = None
    else:
        up = _uploader(run, "Zip of the bundle folder", "source_zip")
        if up is None:  # emptied: the same zip uploaded again is unpacked again
            st.session_state.pop("source_zip_done", None)
        if up is not None and st.session_state.get("source_zip_done") != (run.name, up.name, up.size):
            try:
                draft["source"] = str(extract_bundle(up.getvalue(), run / "data" / "source"))
                st.session_state["source_zip_done"] = (run.name, up.name, up.size)
            except UploadError as e:  # refused before it replaced anything: an earlier upload stays in use
                st.error(str(e) + (" (the bundle uploaded before stays in use)" if draft.get("source") else ""))
        if not draft.get("source"):
            st.info("Upload the bundle folder as a zip (manifest.json, generator.onnx, classifier.onnx, and "
                    "signature.json if signed). A .pt2 bundle is accepted only when signed by a trusted key: "
                    "its loading can run code.")
    save_draft(run, draft)
    if draft["source_kind"] == "upload" and not draft["source"]:
        return
    try:
        path = draft["source"] or str(example_bundle())
    except EdgepptError as e:  # an install without the example bundle: the way to get it
        st.error(str(e))
        return
    try:
        info = bundle_preview(path, str(run / WIZARD_DIR / "source_samples.png"), stamp(path))
    except EdgepptError as e:
        st.error(f"bundle refused: {e}")
        draft["source"] = None
        save_draft(run, draft)
        return
    st.success(f"verified: {info['provenance']}; {len(info['files'])} files match their sha256; the generator and "
               "classifier pass the contract check")
    st.write(f"Source classes: {', '.join(info['classes'])} · images {info['image_shape']} · "
             f"latent {info['latent_dim']}")
    st.subheader("Generator samples (one row per source class; the last row interpolates)")
    st.image(str(run / WIZARD_DIR / "source_samples.png"))


def step_budget(run: Path, draft: dict[str, Any]) -> None:
    from edgeppt.devices import list_profiles

    st.header("Device and budget")
    profiles = {p.name: p for p in list_profiles()}
    names = list(profiles)
    if draft["device"] not in names:
        draft["device"] = DEFAULT_DEVICE
    bound(st.selectbox, "Device", run, draft, "device", draft["device"], names,
          format_func=lambda n: f"{n} — {profiles[n].description}")
    st.caption(display.budget_caption(profiles[draft["device"]]))
    budgets = list(BUDGETS)
    bound(st.radio, "Budget", run, draft, "budget", draft["budget"], budgets, horizontal=True,
          help=f"{budget_help()} (on 2 CPU cores)")
    # Only choices that differ from the budget's preset are kept, so switching budgets moves every other value.
    base = build_config({**draft, "search": {}, "transfer": {}, "export": {}}) if draft.get("target") else None
    if base is None:
        st.warning("Choose the target images first (step 1).")
        return

    tag = f"{draft['budget']}:{draft['device']}"  # the budget's or device's defaults apply when either changes
    with st.expander("Adjust the stages", expanded=False):
        sv = {**base.search.model_dump(), **draft["search"]}
        bound(st.checkbox, "Search an architecture for the device", run, draft, "enabled", sv["enabled"],
              section="search", preset=base.search.enabled, tag=tag)
        if sv["enabled"] and "trials" in sv:
            bound(st.number_input, "Search trials", run, draft, "trials", int(sv["trials"]), 1,
                  max(500, int(sv["trials"])), section="search", preset=base.search.trials, tag=tag)
        from edgeppt.config import METHODS
        tv = {**base.transfer.model_dump(), **draft["transfer"]}
        bound(st.selectbox, "Transfer method", run, draft, "method", tv["method"], list(METHODS),
              section="transfer", preset=base.transfer.method, tag=tag)
        from edgeppt.config import SSL_ALGORITHMS
        from edgeppt.transfer.ssl import ALGORITHMS
        pssl = {**base.transfer.pssl.model_dump(), **tv.get("pssl", {})}
        bound(st.selectbox, "Semi-supervised algorithm", run, draft, "algorithm", pssl["algorithm"],
              list(SSL_ALGORITHMS), section="transfer.pssl", preset=base.transfer.pssl.algorithm, tag=tag,
              format_func=lambda n: f"{n} — {ALGORITHMS[n].summary()}",
              help="What pseudo samples and unlabelled images are trained toward (methods with ssl or pssl).")
        for key, label in (("pretrain_steps", "Pseudo pre-training steps"),
                           ("finetune_steps", "Target training steps")):
            bound(st.number_input, label, run, draft, key, int(tv[key]), 0 if key == "pretrain_steps" else 1,
                  max(100_000, int(tv[key])),
                  section="transfer", preset=getattr(base.transfer, key), tag=tag)
        device_formats = list(profiles[draft["device"]].export.formats)
        preset_formats = base.export.formats or device_formats
        bound(st.multiselect, "Export formats", run, draft, "formats", draft["export"].get("formats") or preset_formats,
              list(FORMATS), section="export", preset=preset_formats, tag=tag)
    if st.button("Reset to the budget's defaults"):
        unlabeled = draft["transfer"].get("unlabeled")  # a step 1 choice, not a stage setting
        draft.update(search={}, transfer={"unlabeled": unlabeled} if unlabeled else {}, export={})
        save_draft(run, draft)
        for k in [k for k in st.session_state if str(k).startswith(f"{run.name}:") and str(k).endswith(tag)]:
            del st.session_state[k]
        st.rerun()
    cfg = config_or_error(draft)
    if cfg is None:
        return
    st.subheader("pipeline.yaml")
    st.code(dump_yaml(cfg), language="yaml")
    st.caption(f"The same run from a terminal: `edgeppt run {run / CONFIG_FILE} --out {run}`")
    start_button(run, cfg, None, "Run all stages")
    live = jobs.is_running(run)
    st.fragment(run_every=REFRESH_S if live else None)(_panel)(run, lambda *_: None, live)


def config_or_error(draft: dict[str, Any]) -> PipelineConfig | None:
    if not draft.get("target"):
        st.warning("Choose the target images first (step 1).")
        return None
    if draft.get("source_kind") == "upload" and not draft.get("source"):  # never the example bundle in its place
        st.warning("Upload the source bundle first (step 2), or choose the built-in example there.")
        return None
    try:
        return build_config(draft)
    except EdgepptError as e:
        st.error(str(e))
        return None


def start_button(run: Path, cfg: PipelineConfig, until: str | None, label: str) -> None:
    running = jobs.is_running(run)
    if st.button(label, type="primary", disabled=running, key=f"start-{until}"):
        try:
            jobs.start_job(run, cfg, until=until)
            st.toast(f"started: {label}")
            time.sleep(0.5)
            st.rerun()
        except EdgepptError as e:
            st.error(str(e))


def stage_step(run: Path, draft: dict[str, Any], stage: str) -> None:
    st.header({"search": "Architecture search", "transfer": "Transfer", "export": "Export"}[stage])
    cfg = config_or_error(draft)
    if cfg is None:
        return
    if stage == "search" and not cfg.search.enabled:
        st.info(f"Search is off for this budget: transfer trains `{cfg.transfer.arch}`. Turn it on in step 3.")
    else:
        before = [s for s in cfg.stages() if STAGE_NAMES.index(s) < STAGE_NAMES.index(stage)]
        after = f" (after {', '.join(before)}, cached when done)" if before else ""
        start_button(run, cfg, stage, f"Start {stage}{after}")
    live = jobs.is_running(run)
    if not live and (run / CONFIG_FILE).is_file() and (run / CONFIG_FILE).read_text() != dump_yaml(cfg):
        st.warning("The results below are from earlier settings (steps 1-3 changed since); start the stage again "
                   "to bring them up to date (unchanged stages are reused).")
    show = {"search": show_search, "transfer": show_transfer, "export": show_export}[stage]
    # While a job runs the panel refreshes itself; when it ends, the whole page is redrawn once.
    st.fragment(run_every=REFRESH_S if live else None)(_panel)(run, show, live)


def _panel(run: Path, show, was_live: bool) -> None:
    status = jobs.job_status(run)
    if was_live and not status["running"]:
        st.rerun(scope="app")
    job_box(run, status)
    try:
        show(run, status)
    except EdgepptError as e:  # a stage's file that cannot be shown (damaged, or from another version)
        st.error(str(e))


def job_box(run: Path, status: dict[str, Any]) -> None:
    cols = st.columns([3, 1])
    stages = " · ".join(f"{k}: {v.get('status')}" + (f" ({v['seconds']:.0f}s)" if v.get("seconds") else "")
                        for k, v in status["stages"].items())
    cols[0].markdown(f"**Job: {status['status']}**" + (f" — {stages}" if stages else ""))
    if status["running"] and cols[1].button("Cancel job", key="cancel"):
        jobs.cancel_job(run)
        st.rerun(scope="app")
    if status["status"] in ("failed", "interrupted", "cancelled"):
        st.error(f"The job {status['status']}" + (f": {status['error']}" if status.get("error") else "") +
                 ". Start it again to resume from the last checkpoint.")
    if status["log"]:
        with st.expander("Job log"):
            st.code("\n".join(status["log"][-20:]))


def search_trials(folder: Path) -> list[dict[str, Any]]:
    """Every candidate so far, from the search's own ledger (safe to read while the search writes it)."""
    from edgeppt.search.ledger import read_trials

    cols = ("order", "trial", "status", "accuracy", "final_accuracy", "latency_ms", "latency_kind", "params", "macs",
            "peak_activation_kib", "train_s", "reference")
    return [{k: r.get(k) for k in cols} for r in read_trials(folder)]


def show_search(run: Path, status: dict[str, Any]) -> None:
    folder = run / "search"
    rows = search_trials(folder)
    cfg = read_json(folder / SEARCH_CONFIG_FILE) or {}
    trained = [r for r in rows if r.get("status") == "trained"]
    if cfg:
        done = sum(not r.get("reference") for r in trained)  # the hand-designed reference is not one of the trials
        st.progress(min(done / max(cfg.get("trials", 1), 1), 1.0),
                    text=f"trained {done} / {cfg.get('trials')} candidates; "
                         f"{sum(r.get('status') == 'rejected' for r in rows)} rejected as over budget")
    if trained:
        from edgeppt.devices import load_profile

        budget = cfg.get("latency_ms") or load_profile(cfg.get("device", DEFAULT_DEVICE)).budgets.latency_ms
        pareto_plot(trained, budget)
    if rows:
        st.dataframe(display.trial_rows(rows), width="stretch", hide_index=True)
    best = read_best(folder)
    if best:
        st.subheader("Chosen architecture")
        st.write(display.arch_summary(best))
        cols = st.columns([3, 2])
        cols[0].dataframe(display.arch_stage_rows(best), hide_index=True)
        cols[1].dataframe(display.arch_cost_rows(best), hide_index=True)
        with st.expander("best.json"):
            st.json(best.model_dump(mode="json"))


def pareto_plot(rows: list[dict[str, Any]], budget_ms: float | None = None) -> None:
    """Accuracy against latency of the trained candidates; the Pareto front (nothing faster is as accurate) joined."""
    import plotly.graph_objects as go

    from edgeppt.search.report import pareto_front, score

    rows = [r for r in rows if r.get("latency_ms") is not None and r.get("accuracy") is not None]
    front = pareto_front(rows)
    fig = go.Figure([go.Scatter(x=[r["latency_ms"] for r in rows], y=[score(r) for r in rows], mode="markers",
                                name="trained (finalists: mean of seeds)"),
                     go.Scatter(x=[r["latency_ms"] for r in front], y=[score(r) for r in front],
                                mode="lines+markers", line_shape="hv", name="Pareto front")])
    if budget_ms:
        fig.add_vline(x=budget_ms, line_dash="dash", annotation_text=f"budget {budget_ms:g} ms")
    fig.update_layout(xaxis_title="latency (ms, batch 1)", yaxis_title="proxy validation accuracy", height=360,
                      margin=dict(t=20, b=10))
    st.plotly_chart(fig, width="stretch")


def show_transfer(run: Path, status: dict[str, Any]) -> None:
    if status["stages"].get("transfer", {}).get("status") == "outdated":  # an earlier model's, as the report has it
        st.info("The trained model is of earlier settings: the next run without a stop after the search trains "
                "these settings' model.")
        return
    folder = run / "transfer"
    plan = read_json(folder / PLAN_FILE)  # what transfer is training: its method and phases
    if plan:
        last: dict[str, int] = {}  # each phase's furthest step (a phase loaded from the cache logs only its end)
        for r in read_jsonl(folder / "pretrain" / "metrics.jsonl") + read_jsonl(folder / "metrics.jsonl"):
            last[r.get("phase", "")] = max(last.get(r.get("phase", ""), 0), int(r.get("step", 0)))
        done = sum(min(last.get(ph["name"], 0), ph["steps"]) for ph in plan["phases"])
        total = sum(ph["steps"] for ph in plan["phases"])
        st.progress(min(done / max(total, 1), 1.0), text=f"{plan['method']}: training step {done} / {total}")
        if plan.get("auto"):
            st.info(f"auto chose **{plan['method']}**: {plan['auto']['reason']}")
        for note in plan.get("notes", []):  # auto's augmentation rules that fired (gain jitter, PP rotation)
            st.info(note)
    fig = training_curves(run)
    if fig is not None:
        st.pyplot(fig)
    record = read_report(folder)
    report = record.model_dump(mode="json") if record else None
    if report:
        st.metric("Test accuracy", f"{100 * report['test_accuracy']:.2f}%")
        for note in (copies_note(report), twice_note(report)):
            if note:
                st.caption(note)
        cols = st.columns(2)
        cols[0].table(display.per_class_rows(report))
        cols[1].pyplot(confusion_figure(report))


def show_export(run: Path, status: dict[str, Any]) -> None:
    manifest = read_json(export_bundle(run) / MANIFEST_FILE)
    if not manifest or status["stages"].get("export", {}).get("status") != "done":
        return
    st.subheader("Latency and accuracy")
    st.caption(f"device {manifest.get('device')} · latency measured on this host, "
               f"{manifest.get('threads') or 'default'} threads · test split of {manifest.get('test_images')} images")
    # PyTorch has no ONNX Runtime latency; the grid draws a missing number as "None", so those cells become text.
    ms = ("batch-1 median ms", "batch-1 p90 ms")
    rows = [{k: ("-" if v is None else f"{v:.3f}") if k in ms else v for k, v in r.items()}
            for r in export_rows(manifest)]
    st.dataframe(rows, width="stretch", hide_index=True)
    st.markdown(display.default_artifact_note(manifest))
    zip_path = export_bundle(run).parent / BUNDLE_ZIP
    if zip_path.exists():
        st.download_button("Download the bundle (zip)", zip_path.read_bytes(), file_name=f"{run.name}-bundle.zip",
                           mime="application/zip", type="primary")
    report = run / "report"
    if (report / "index.md").exists():  # the page with its pictures, which it links by relative name
        st.download_button("Download the report (zip: Markdown and pictures)", display.zip_folder(report),
                           file_name=f"{run.name}-report.zip", mime="application/zip")


# ---------------------------------------------------------------- sidebar: runs
def sidebar(run: Path) -> str:
    with st.sidebar:
        st.title("edgeppt")
        st.caption(f"run `{run.name}` in {run.parent}")
        if "step" not in st.session_state:  # a reload keeps its place: the step is in the URL too
            n = st.query_params.get("step", "1")
            st.session_state["step"] = STEPS[int(n) - 1] if n.isdigit() and 1 <= int(n) <= len(STEPS) else STEPS[0]
        step = st.radio("Step", STEPS, key="step")
        assert step is not None  # session_state["step"] is always one of STEPS
        st.query_params["step"] = str(STEPS.index(step) + 1)
        st.divider()
        if st.button("New run"):
            st.query_params["run"] = time.strftime("run-%Y%m%d-%H%M%S")
            st.session_state.pop("step", None)
            st.rerun()
        past = [r for r in jobs.list_runs(run.parent) if r["name"] != run.name]
        if past:
            st.subheader("Past runs")
            choice = st.selectbox("Open a run", [r["name"] for r in past],
                                  format_func=lambda n: f"{n} ({next(r['status'] for r in past if r['name'] == n)})")
            if st.button("Open"):
                st.query_params["run"] = choice
                st.rerun()
    return step


def main() -> None:
    st.set_page_config(page_title="edgeppt wizard", layout="wide")
    run = current_run()
    draft = load_draft(run)
    if (run / CONFIG_FILE).exists() and not (run / WIZARD_DIR / DRAFT_FILE).exists():
        draft.update(draft_from_config(run))  # a run started from the command line, opened here
    step = sidebar(run)
    i = STEPS.index(step)
    if i == 0:
        step_target(run, draft)
    elif i == 1:
        step_source(run, draft)
    elif i == 2:
        step_budget(run, draft)
    else:
        stage_step(run, draft, STAGE_NAMES[i - 3])


def draft_from_config(run: Path) -> dict[str, Any]:
    from edgeppt.pipeline.config import load_config

    try:
        cfg = load_config(run / CONFIG_FILE)
    except EdgepptError:
        return {}
    raw = cfg.model_dump(mode="json")  # every field: the run's own settings, whatever the budget presets say
    return {"target_kind": "example" if cfg.target == default_draft()["target"] else "config", "target": cfg.target,
            "config_target": cfg.target,
            "labels_per_class": cfg.labels_per_class,
            "source_kind": "example" if _is_example(Path(cfg.source)) else "upload",
            "source": str(cfg.source),
            "device": cfg.device, "budget": "demo", "search": raw.get("search", {}),
            "transfer": raw.get("transfer", {}), "export": raw.get("export", {}),
            "kept": {k: raw[k] for k in KEPT if k in cfg.model_fields_set}}


main()
