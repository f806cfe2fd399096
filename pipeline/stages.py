"""The table of stages: what each one reads (hashed for the cache) and how it runs into its folder of the run.

A stage is one row; adding a stage is adding a row. Each stage writes only into `<run>/<name>/`, reads earlier
stages' folders, and receives `resume=True` when it was interrupted with the same inputs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeppt.config import SearchConfig, SourceTrust, TransferConfig, validate
from edgeppt.data import BUILTIN, SIDE_RULE, image_files, split_spec
from edgeppt.errors import EdgepptError
from edgeppt.models import arch_spec
from edgeppt.runs import atomic_write_bytes, json_digest, sha256_file
from edgeppt.search.record import BEST_FILE
from edgeppt.transfer.record import MODEL_FILE, REPORT_FILE

from .config import STAGE_NAMES, PipelineConfig
from .state import BUNDLE_DIR, BUNDLE_ZIP

Log = Callable[[str], None]


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: Callable[[PipelineConfig, Path], dict[str, Any]]   # everything the result depends on
    run: Callable[[PipelineConfig, Path, bool, bool, Log], dict[str, Any]]  # (cfg, run dir, resume, progress, log)
    output: str                                                # the file that says the stage finished
    # Fields of the stage's own section (inputs()[name]) that may change on resume: its config's RESUME_FREE
    resume_free: frozenset[str] = field(default_factory=frozenset)


# ---------------------------------------------------------------- fingerprints
def data_fingerprint(spec: str | None) -> Any:
    """A built-in spec stands for itself; a folder or file is hashed, so editing the images re-runs the stages."""
    if spec is None:
        return None
    name = split_spec(spec)[0]
    path = Path(name)
    if name in BUILTIN and not path.exists():
        return spec
    if not path.exists():
        raise EdgepptError(f"dataset {spec!r} not found")
    files = [path] if path.is_file() else image_files(path)[0]  # what the loaders read: not .DS_Store
    h = hashlib.sha256()
    for f in files:
        h.update(os.fsencode(f.relative_to(path) if f != path else f.name))  # any bytes a name holds
        h.update(_file_sha256(f).encode())
    return {"spec": spec, "sha256": h.hexdigest()}


_DIGESTS: dict[tuple, str] = {}  # one run hashes its target at each stage: each file is read once a process


def _file_sha256(f: Path) -> str:
    """sha256_file, remembered for this process while the file's size, change time and inode stay the same (a file
    edited or replaced since is read again)."""
    st = f.stat()
    key = (str(f), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(f)
    return _DIGESTS[key]


def bundle_fingerprint(path: Path) -> dict[str, str]:
    from edgeppt.bundle import read_manifest

    return read_manifest(path).files  # sha256 of each file, verified when the bundle is loaded


def file_hash(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def _data_inputs(cfg: PipelineConfig) -> dict[str, Any]:
    return {"target": data_fingerprint(cfg.target), "test": data_fingerprint(cfg.test),
            "test_fraction": cfg.test_fraction, "labels_per_class": cfg.labels_per_class, "seed": cfg.seed,
            "augment": cfg.augment.key(),
            # the side rule of load_target: runs made under an earlier rule ran their stages at another side
            "side_rule": SIDE_RULE}


def _device_inputs(cfg: PipelineConfig) -> dict[str, Any]:
    from edgeppt.devices import load_profile
    from edgeppt.search.costmodel import predictor_path

    profile = load_profile(cfg.device)
    # a predictor re-calibrated in place (`devices calibrate` writes the same file) predicts other latencies
    predictor = file_hash(predictor_path(profile)) if profile.predictor else None
    return {**profile.model_dump(mode="json"), **({"predictor_file": predictor} if predictor else {})}


# ---------------------------------------------------------------- search
def search_config(cfg: PipelineConfig, out: Path) -> SearchConfig:
    from edgeppt.train import augment_rules

    settings = cfg.search.model_dump(exclude={"enabled"})
    shared = {"source": cfg.source, "target": cfg.target, "test": cfg.test, "test_fraction": cfg.test_fraction,
              "labels_per_class": cfg.labels_per_class, "augment": cfg.augment,
              "seed": cfg.seed, "device": cfg.device, "data": cfg.target, "threads": cfg.threads, "out": out,
              "trusted_keys": cfg.trusted_keys, "trust_code": cfg.trust_code,
              # auto's augmentation rules: the proxy trains as transfer will (none where transfer is not auto)
              "auto": cfg.transfer.auto if cfg.transfer.method == "auto" else
              cfg.transfer.auto.model_copy(update=augment_rules.OFF)}
    settings.update({k: v for k, v in shared.items() if k in SearchConfig.model_fields})
    if settings["image_size"] is None:  # the side transfer will train at, where only transfer names one
        settings["image_size"] = cfg.transfer.image_size
    return validate(SearchConfig, settings, "pipeline.yaml search")


def _search_inputs(cfg: PipelineConfig, run: Path) -> dict[str, Any]:
    from edgeppt.train import augment_rules

    sc = search_config(cfg, run / "search")
    side = {"image_size": sc.image_size} if sc.image_size != cfg.search.image_size else {}  # transfer's
    return {"search": cfg.search.model_dump(mode="json"), "device": _device_inputs(cfg), **_data_inputs(cfg),
            "source": bundle_fingerprint(cfg.source),  # the proxy pre-trains on its samples
            "augment_rules": sc.auto.model_dump(mode="json", include=set(augment_rules.RULE_FIELDS)), **side}


def _search_run(cfg: PipelineConfig, run: Path, resume: bool, progress: bool, log: Log) -> dict[str, Any]:
    from edgeppt.search import run_search

    out = run / "search"
    summary = run_search(search_config(cfg, out), out, resume=resume and out.exists(), progress=progress)
    return summary if isinstance(summary, dict) else {}


# ---------------------------------------------------------------- transfer
def transfer_config(cfg: PipelineConfig, run: Path) -> TransferConfig:
    from edgeppt.devices import load_profile

    settings = cfg.transfer.model_dump(exclude={"torch_device"})
    settings["device"] = cfg.transfer.torch_device
    if cfg.search.enabled:  # the searched architecture itself, not a path that depends on how the run was named
        best = run / "search" / BEST_FILE
        settings["arch"] = arch_spec(str(best)) if best.is_file() else str(best)
    if settings["image_size"] is None:  # the side the search costed the network at, and the device receives
        settings["image_size"] = (cfg.search.image_size if cfg.search.enabled else None) or \
            load_profile(cfg.device).input_size
    settings.update(source=cfg.source, target=cfg.target, test=cfg.test, test_fraction=cfg.test_fraction,
                    labels_per_class=cfg.labels_per_class, augment=cfg.augment,
                    seed=cfg.seed, threads=cfg.threads, trusted_keys=cfg.trusted_keys, trust_code=cfg.trust_code)
    return validate(TransferConfig, settings, "pipeline.yaml transfer")


def _transfer_inputs(cfg: PipelineConfig, run: Path) -> dict[str, Any]:
    arch = transfer_config(cfg, run).arch  # the architecture's own fields (not best.json's search record, nor the
    if isinstance(arch, str) and arch.endswith(".json") and Path(arch).is_file():  # path of an architecture file:
        arch = arch_spec(arch)  # its contents)
    unlabeled = cfg.transfer.unlabeled  # (only when a dataset: earlier runs keep their keys) its images, not its path
    images = {"unlabeled_data": data_fingerprint(unlabeled)} if unlabeled and unlabeled != "rest" else {}
    return {"transfer": cfg.transfer.model_dump(mode="json", exclude={"arch", "image_size", "torch_device",
                                                                       "eval_every", "checkpoint_every"}),
            "arch": arch,  # (the torch device, like threads and how often it logs or saves, says how it runs, not
            # what it computes: the trainer seeds every step, and its evaluation and checkpoints change no weight)
            "image_size": transfer_config(cfg, run).image_size,
            "source": bundle_fingerprint(cfg.source), **_data_inputs(cfg), **images}


def _transfer_run(cfg: PipelineConfig, run: Path, resume: bool, progress: bool, log: Log) -> dict[str, Any]:
    from edgeppt.transfer import run_transfer

    out = run / "transfer"
    # PP weights depend on the bundle and architecture only: kept beside the stages, reused when only the
    # fine-tuning changes
    report = run_transfer(transfer_config(cfg, run), out, resume=resume and (out / "config.json").exists(),
                          progress=progress, pp_cache=run / "cache", log=log)
    return {"method": report.get("method"), "test_accuracy": report.get("test_accuracy"),
            "params": report.get("model", {}).get("params")}


# ---------------------------------------------------------------- export
def export_device(cfg: PipelineConfig, run: Path) -> Any:
    """The device profile the export checks its default against: with the budgets the search held the network to
    (search.latency_ms and the rest override the profile's), not the profile's own."""
    from edgeppt.devices import load_profile
    from edgeppt.search.run import budgets_of

    profile = load_profile(cfg.device)
    if not cfg.search.enabled:
        return profile
    return profile.model_copy(update={"budgets": budgets_of(search_config(cfg, run / "search"), profile)})


def _export_inputs(cfg: PipelineConfig, run: Path) -> dict[str, Any]:
    from edgeppt.devices import load_profile
    from edgeppt.signing import public_key_beside

    sign = cfg.export.sign  # (only when signing: earlier runs keep their keys) another key in the same file re-signs
    key = {"signer": file_hash(public_key_beside(sign))} if sign else {}
    budgets = export_device(cfg, run).budgets.model_dump(mode="json")  # (only when the search overrides the
    if budgets != load_profile(cfg.device).budgets.model_dump(mode="json"):  # profile's: earlier runs keep their keys)
        key["budgets"] = budgets
    return {"export": cfg.export.model_dump(mode="json"), "device": _device_inputs(cfg), **key,
            "source": bundle_fingerprint(cfg.source),  # its pseudo samples calibrate and check INT8
            "model": file_hash(run / "transfer" / MODEL_FILE), "report": file_hash(run / "transfer" / REPORT_FILE)}


def _export_run(cfg: PipelineConfig, run: Path, resume: bool, progress: bool, log: Log) -> dict[str, Any]:
    from edgeppt.export import export_run

    out = run / "export"
    pseudo = cfg.export.int8_calibration == "pseudo"  # the only calibration that draws from the source bundle
    manifest = export_run(run / "transfer", out / BUNDLE_DIR, device=export_device(cfg, run),
                          source=cfg.source if pseudo else None, trust=SourceTrust(trusted_keys=cfg.trusted_keys,
                                                                                   trust_code=cfg.trust_code),
                          log=lambda s: log(f"export: {s}"), **cfg.export.model_dump())
    zip_bundle(out / BUNDLE_DIR, out / BUNDLE_ZIP)
    return {"formats": list(manifest["artifacts"]), "default_format": manifest.get("default_format")}


def zip_bundle(folder: Path, dest: Path) -> Path:
    """The bundle as one download (written atomically, like every artifact)."""
    tmp = Path(shutil.make_archive(str(dest.with_suffix("")) + ".partial", "zip", folder.parent, folder.name))
    atomic_write_bytes(dest, tmp.read_bytes())
    tmp.unlink()
    return dest


STAGES: list[Stage] = [
    Stage("search", _search_inputs, _search_run, BEST_FILE, SearchConfig.RESUME_FREE),
    Stage("transfer", _transfer_inputs, _transfer_run, REPORT_FILE, TransferConfig.RESUME_FREE),
    Stage("export", _export_inputs, _export_run, BUNDLE_ZIP),
]
STAGE_BY_NAME = {s.name: s for s in STAGES}
assert tuple(STAGE_BY_NAME) == STAGE_NAMES, "one Stage per name, in the pipeline's order"


def input_key(inputs: dict[str, Any]) -> str:
    return json_digest(inputs)
