"""`run_transfer`: data -> (cached) pseudo pre-training -> pseudo samples -> target training -> report.json."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from edgeppt.bundle import SourceBundle, load_bundle
from edgeppt.config import TransferConfig, validate
from edgeppt.data import ImageSet, few_shot, load_dataset, reshape_images, train_test_split
from edgeppt.errors import EdgepptError
from edgeppt.models import arch_spec, create_model
from edgeppt.runs import atomic_torch_save, atomic_write_json, load_checkpoint

from .evaluate import evaluate
from .loop import Dist, Phase, Trainer, setup_distributed
from .methods import METHODS
from .objectives import PseudoPretrain, Supervised
from .pseudo import PseudoPool, make_pool

CONFIG_FILE, REPORT_FILE, MODEL_FILE = "config.json", "report.json", "model.pt"


def load_run_config(out: Path) -> TransferConfig:
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        raise EdgepptError(f"{out}: nothing to resume (no {CONFIG_FILE}); start the run without --resume")
    return validate(TransferConfig, json.loads(path.read_text()), str(path))


def _check_resume(cfg: TransferConfig, out: Path) -> None:
    saved = load_run_config(out).model_dump(mode="json")
    now = cfg.model_dump(mode="json")
    diff = {k: (saved[k], now[k]) for k in now if saved.get(k) != now[k] and k not in ("threads", "device")}
    if diff:
        listed = "; ".join(f"{k}: run has {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise EdgepptError(f"{out} was started with other settings ({listed}). Resume with the same settings, "
                           "or use a new --out.")


def prepare_data(cfg: TransferConfig, bundle: SourceBundle | None) -> tuple[ImageSet, ImageSet]:
    """The k-shot labelled set and the fixed test split, in the shape the bundle (if any) works at."""
    channels = bundle.image_shape[0] if bundle else None
    size = cfg.image_size or (bundle.image_shape[1] if bundle else None)
    target = load_dataset(cfg.target, size, channels)
    if cfg.test:
        test = load_dataset(cfg.test, target.shape[1], target.shape[0])
        if test.classes != target.classes:
            raise EdgepptError(f"test classes {test.classes} differ from target classes {target.classes}")
        train = target
    else:
        train, test = train_test_split(target, cfg.test_fraction, seed=0)  # fixed: the same for every run seed
    labelled, _ = few_shot(train, cfg.labels_per_class, cfg.seed)
    return labelled, test


def _pp_key(cfg: TransferConfig, bundle: SourceBundle, in_chans: int, size: int) -> str:
    """PP weights depend on the bundle, architecture, seed and PP settings, not on the target labels."""
    key = {"bundle": bundle.manifest["files"], "arch": arch_spec(cfg.arch), "seed": cfg.seed, "in": [in_chans, size],
           "steps": cfg.pretrain_steps, "batch": cfg.pretrain_batch, "pool": cfg.pretrain_pool, "lr": cfg.lr,
           "wd": cfg.weight_decay}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def pseudo_pretrain(cfg: TransferConfig, model, bundle: SourceBundle, out: Path, dist: Dist, resume: bool,
                    cache_dir: Path | None, progress: bool) -> dict:
    """Train `model` on generated source-class samples; reuse cached weights for identical settings."""
    key = _pp_key(cfg, bundle, bundle.image_shape[0], bundle.image_shape[1])
    cached = cache_dir / f"pp-{key}.pt" if cache_dir else None
    if cached and cached.exists():
        model.reset_head(bundle.num_classes)
        model.load_state_dict(load_checkpoint(cached)["model"])
        return {"cached": str(cached), "seconds": 0.0}
    if cfg.pretrain_steps == 0:
        return {"skipped": True}
    trainer = Trainer(model, [Phase("pretrain", cfg.pretrain_steps, PseudoPretrain(
        bundle, cfg.pretrain_batch, cfg.pretrain_pool, cfg.seed), cfg.lr, cfg.weight_decay, evaluate=False)],
        out / "pretrain", cfg.seed, dist, checkpoint_every=cfg.checkpoint_every, eval_every=cfg.eval_every,
        progress=progress)
    trainer.run(resume=resume)
    if cached and dist.main:
        atomic_torch_save(cached, {"model": model.state_dict()})
    return {"seconds": trainer.timings.get("pretrain", 0.0), "images": trainer.images_seen.get("pretrain", 0)}


def _pool_key(cfg: TransferConfig, bundle: SourceBundle, x_t: torch.Tensor) -> str:
    """A pool depends on the bundle, the conditioning target images, the seed and the sampling settings."""
    p = cfg.pssl
    key = {"bundle": bundle.manifest["files"], "x": hashlib.sha256(x_t.numpy().tobytes()).hexdigest(),
           "seed": cfg.seed, "sampling": [p.temperature, p.z_search_steps, p.z_search_lr, p.relevance,
                                          p.relevance_keep, p.pool_size]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def pseudo_samples(cfg: TransferConfig, bundle: SourceBundle, labelled: ImageSet, out: Path, dist: Dist,
                   cache_dir: Path | None = None) -> tuple[PseudoPool, bool]:
    """Draw the pool once (rank 0), keep it in the run directory (and the cache), share it with every worker."""
    path, from_cache = out / "pseudo_pool.pt", False
    if dist.main and not path.exists():
        x_t = reshape_images(labelled.x, bundle.image_shape[1], bundle.image_shape[0])
        cached = cache_dir / f"pool-{_pool_key(cfg, bundle, x_t)}.pt" if cache_dir else None
        from_cache = bool(cached and cached.exists())
        if from_cache:
            state = load_checkpoint(cached)
        else:
            state = make_pool(bundle, x_t, cfg.pssl, seed=cfg.seed).state()
            if cached:
                atomic_torch_save(cached, state)
        atomic_torch_save(path, state)
    dist.barrier()
    pool = PseudoPool(**load_checkpoint(path))
    pool.x = reshape_images(pool.x, labelled.shape[1], labelled.shape[0])
    if len(pool) == 0:
        raise EdgepptError("no pseudo sample survived relevance filtering; raise pssl.relevance_keep")
    return pool, from_cache


def run_transfer(cfg: TransferConfig, out: str | Path, resume: bool = False, progress: bool = True,
                 pp_cache: str | Path | None = None) -> dict:
    out = Path(out)
    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist = setup_distributed(cfg.device)
    if resume:
        _check_resume(cfg, out)
    elif (out / REPORT_FILE).exists() or (out / "checkpoint.pt").exists():
        raise EdgepptError(f"{out} already holds a run; pass --resume {out} to continue it, or choose another --out")
    method = METHODS[cfg.method]
    if cfg.needs_source() and cfg.source is None:
        raise EdgepptError(f"method {cfg.method!r} needs a source bundle (--source)")
    bundle = load_bundle(cfg.source) if cfg.source and cfg.needs_source() else None
    labelled, test = prepare_data(cfg, bundle)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / CONFIG_FILE, cfg.model_dump(mode="json"))

    torch.manual_seed(cfg.seed)
    in_chans, size = labelled.shape[0], labelled.shape[1]
    model = create_model(cfg.arch, len(labelled.classes), in_chans)
    timings: dict[str, float] = {}
    info: dict = {}
    if method.pretrain:
        info["pretrain"] = pseudo_pretrain(cfg, model, bundle, out, dist, resume, Path(pp_cache) if pp_cache else None,
                                           progress)
        timings["pretrain"] = info["pretrain"].get("seconds", 0.0)
    pool = None
    if method.needs_pool:
        t = time.perf_counter()
        pool, from_cache = pseudo_samples(cfg, bundle, labelled, out, dist, Path(pp_cache) if pp_cache else None)
        timings["pseudo_samples"] = time.perf_counter() - t
        info["pseudo_samples"] = {"count": len(pool), "mean_relevance": pool.relevance.mean().item(),
                                  "cached": from_cache}

    phases = [Phase(cfg.method.replace("+", "_"), cfg.finetune_steps, method.target(cfg, labelled, bundle, pool),
                    cfg.lr, cfg.weight_decay)]
    if method.needs_pool and cfg.pssl.warm_start:
        # Warm start: the labels-only phase is named after the method it reproduces (scratch, or pp after PP),
        # so its steps draw exactly what that method draws; the SSL phase then refines it at a lower rate.
        phases = [Phase("pp" if method.pretrain else "scratch", cfg.finetune_steps,
                        Supervised(labelled, cfg.batch_size, new_head=True), cfg.lr, cfg.weight_decay),
                  Phase(phases[0].name, cfg.pssl.steps, phases[0].objective, cfg.lr * cfg.pssl.lr_scale,
                        cfg.weight_decay)]
    trainer = Trainer(model, phases, out, cfg.seed, dist, evaluate=lambda m: evaluate(m, test),
                      checkpoint_every=cfg.checkpoint_every, eval_every=cfg.eval_every, progress=progress)
    trainer.run(resume=resume)
    timings["target"] = sum(trainer.timings.get(ph.name, 0.0) for ph in phases)
    timings["total"] = time.perf_counter() - t0
    if not dist.main:
        return {}
    result = evaluate(model, test)
    model_info = {"arch": arch_spec(cfg.arch), "classes": labelled.classes, "in_chans": in_chans, "image_size": size,
                  "params": sum(p.numel() for p in model.parameters())}
    atomic_torch_save(out / MODEL_FILE, {**model_info, "state_dict": model.state_dict()})
    report = {
        "test_accuracy": result["accuracy"], "per_class_accuracy": result["per_class_accuracy"],
        "confusion_matrix": result["confusion_matrix"], "classes": labelled.classes,
        "data": {"labelled": len(labelled), "test": len(test), "skipped_files": list(dict.fromkeys(labelled.skipped + test.skipped))},
        "model": model_info, "settings": cfg.model_dump(mode="json"), "timings_s": timings,
        "images_per_s": {k: v / max(trainer.timings.get(k, 1e-9), 1e-9) for k, v in trainer.images_seen.items()},
        "world_size": dist.world, "device": str(dist.device), **info,
    }
    if "pretrain" in info and info["pretrain"].get("images"):
        report["images_per_s"]["pretrain"] = info["pretrain"]["images"] / max(info["pretrain"]["seconds"], 1e-9)
    atomic_write_json(out / REPORT_FILE, report)
    return report
