"""`run_transfer`: data -> (cached) pseudo pre-training -> [auto: coverage -> choice] -> pseudo samples ->
target training -> report.json."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, NamedTuple

import torch

from edgeppt.bundle import SourceBundle, open_source, read_manifest
from edgeppt.config import TransferConfig, validate
from edgeppt.data import (
    DataRecord,
    ImageSet,
    exact_copies,
    fingerprint,
    hash_pixels,
    labelled_twice,
    load_dataset,
    load_target,
    load_unlabeled,
    reshape_images,
    split_target,
    stratified_folds,
    subsample,
)
from edgeppt.errors import EdgepptError
from edgeppt.models import ClassifierNet, arch_spec, create_model
from edgeppt.runs import (
    CHECKPOINT_FILE,
    added_settings,
    added_settings_warning,
    atomic_torch_save,
    atomic_write_json,
    json_digest,
    load_checkpoint,
    peak_rss_mib,
    read_cache,
    read_run_json,
    resume_conflicts,
)
from edgeppt.train import augment_rules
from edgeppt.train.evaluate import evaluate
from edgeppt.train.loop import Dist, Phase, Trainer, elastic_restarts, ema_decay, setup_distributed
from edgeppt.train.objective import Probe

from . import coverage, crossval
from .methods import METHODS, check_inputs, pp_augment, supervised, supervised_settings
from .objectives import PseudoPretrain, Supervised
from .pseudo import POOL_FIELDS, PseudoPool, make_pool
from .record import MODEL_FILE, PLAN_FILE, REPORT_FILE, TransferReport, copies_note, twice_note
from .reverse import reverse_accuracy
from .source_ft import source_model
from .ssl import LabelProp, commonest_over_others, uneven_shares_warning
from .supermask import Supermasked, attach, finish, update_size

CONFIG_FILE, CHOICE_FILE = "config.json", "auto.json"
WARM_FILE = "warm_start.pt"  # the SSL methods' labels-only warm start, kept for auto's reverse check
ADDED_FILE = "added_on_resume.json"  # settings an earlier edgeppt's run lacked, kept across resumes for the report
POOL_FILE = "pseudo_pool.pt"  # the pseudo samples drawn for this run, kept for its resume


INPUTS_FILE = "inputs.json"  # sha256 of the images the run trains on, which its resume must train on too


def check_same_images(out: Path, resume: bool, dist: Dist, labelled: ImageSet, test: ImageSet,
                      real: torch.Tensor | None, bundle: SourceBundle | None = None) -> None:
    """The same settings can name other images on resume (a file added to the folder: the unlabelled subset is
    drawn anew, and the saved propagated labels would teach other images), or another bundle at the same path (its
    pool and PP weights would mix with the new G's). Refused, naming which changed."""
    now = {"labelled": fingerprint(labelled), "test": fingerprint(test),
           "unlabeled": None if real is None else hash_pixels(hashlib.sha256(), real).hexdigest(),
           **({"source": json_digest(bundle.manifest.files)} if bundle is not None else {})}
    path = out / INPUTS_FILE
    if resume and path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = {}
        changed = [k for k, v in now.items() if isinstance(saved, dict) and k in saved and saved[k] != v]
        if changed:
            named = ", ".join({"unlabeled": "unlabelled images", "source": "source bundle"}.get(k, f"{k} images")
                              for k in changed)
            raise EdgepptError(f"{out}: the {named} changed since the run started; resume with the same inputs, "
                               "or start a new --out")
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, now)


def load_run_config(out: Path) -> TransferConfig:
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        raise EdgepptError(f"{out}: nothing to resume (no {CONFIG_FILE}); start the run without --resume")
    return validate(TransferConfig, read_run_json(path), str(path))


def _check_resume(cfg: TransferConfig, out: Path) -> dict[str, Any]:
    """A conflict with the settings the run was started with is an error; returns the settings it did not have."""
    load_run_config(out)  # a damaged file is a one-line error
    saved, now = read_run_json(out / CONFIG_FILE), cfg.model_dump(mode="json")
    diff = resume_conflicts(saved, now, TransferConfig.RESUME_FREE)
    if diff:
        listed = "; ".join(f"{k}: run has {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise EdgepptError(f"{out} was started with other settings ({listed}). Resume with the same settings, "
                           "or use a new --out.")
    return added_settings(saved, now)


def prepare_data(cfg: TransferConfig, bundle: SourceBundle | None) -> tuple[ImageSet, ImageSet]:
    """The k-shot labelled set and the fixed test split, at the bundle's image size (if any) and in the target's own
    channels (C's, for the methods that train C)."""
    labelled, test, _, _ = prepare_splits(cfg, bundle)
    return labelled, test


SOURCE_NET = {name for name, m in METHODS.items() if m.source_net}


def prepare_splits(cfg: TransferConfig, bundle: SourceBundle | None
                   ) -> tuple[ImageSet, ImageSet, ImageSet, DataRecord]:
    """prepare_data, plus the target pool's images that are not labelled (what --unlabeled rest uses) and the
    record of which images these are (later stages rebuild them from it)."""
    # The target keeps its own channels (a colour target stays in colour whatever the bundle's) and side (raised toward
    # the bundle's only under SMALL_SIDE); only a method that trains C itself needs C's channels and side.
    if bundle and cfg.method in SOURCE_NET:
        target = load_dataset(cfg.target, cfg.image_size or bundle.image_shape[1], bundle.classifier_channels)
    else:
        source_side = bundle.image_shape[1] if bundle else read_manifest(cfg.source).image_shape[1] if cfg.source \
            else None
        target = load_target(cfg.target, cfg.image_size, None, source_side)
    split = split_target(target, cfg.test, cfg.test_fraction, cfg.labels_per_class, cfg.seed)
    return split.labelled, split.test, split.rest, DataRecord.of(cfg.target, cfg.test, target, split.test,
                                                                 split.labelled, split.train)


class Unlabelled(NamedTuple):
    images: torch.Tensor | None  # at most cfg.max_unlabeled of them
    skipped: list[str]  # the unreadable files
    offered: int  # how many the spec holds
    dropped: dict[str, int]  # the target's own test and labelled images found among them, left out


def unlabeled_images(cfg: TransferConfig, labelled: ImageSet, test: ImageSet, rest: ImageSet) -> Unlabelled:
    """The unlabelled images, less any that are the target's test or labelled images: a user may point
    --unlabeled at the very folder the target's classes are in. The test split reports, it never trains; a
    labelled image is labelled already."""
    if cfg.unlabeled is None:
        return Unlabelled(None, [], 0, {})
    if cfg.unlabeled == "rest":  # the pool less the labels, never the test split
        if len(rest) == 0:
            raise EdgepptError("--unlabeled rest: the target pool has no images beyond the labelled ones")
        keep = subsample(len(rest), cfg.max_unlabeled)
        return Unlabelled(rest.x if keep is None else rest.x[keep], [], len(rest), {})
    try:
        x, skipped, offered = load_unlabeled(cfg.unlabeled, labelled.shape[1], labelled.shape[0], cfg.max_unlabeled)
    except EdgepptError as e:
        raise EdgepptError(f"--unlabeled: {e}") from e
    copies = {"test": exact_copies(x, test.x), "labelled": exact_copies(x, labelled.x)}
    dropped = {name: int(c.sum()) for name, c in copies.items()}
    keep = ~(copies["test"] | copies["labelled"])
    if not keep.any():
        raise EdgepptError(f"--unlabeled {cfg.unlabeled}: every image is one of the target's own test or labelled "
                           "images; give images beyond them, or --unlabeled rest for the target's other images")
    return Unlabelled(x[keep], skipped, offered, {k: v for k, v in dropped.items() if v})


def _pp_key(cfg: TransferConfig, bundle: SourceBundle, in_chans: int, size: int) -> str:
    """PP weights depend on the bundle, architecture, seed and PP settings, not on the target labels."""
    # PP trains on weak views: the view of labelled images is not part of its key
    key = {"bundle": bundle.manifest.files, "arch": arch_spec(cfg.arch), "seed": cfg.seed, "in": [in_chans, size],
           "steps": cfg.pretrain_steps, "batch": cfg.pretrain_batch, "pool": cfg.pretrain_pool,
           "lr": cfg.pretrain_lr, "wd": cfg.pretrain_weight_decay,
           "augment": {k: v for k, v in pp_augment(cfg, bundle).key().items() if k != "labelled_view"}}
    if cfg.pretrain_mix or cfg.pretrain_teacher:  # (only when set: earlier caches keep their keys)
        key.update(mix=cfg.pretrain_mix, teacher=cfg.pretrain_teacher,
                   temperature=cfg.kd_temperature if cfg.pretrain_teacher else None)
    if cfg.pretrain_contrastive:
        key.update(contrastive=cfg.pretrain_contrastive, contrastive_t=cfg.pretrain_contrastive_temperature)
    if bundle.image_shape[0] > in_chans:  # colour samples to gray: luma since this version (a plain mean before)
        key.update(to_gray="luma-601")
    return json_digest(key)


def pseudo_pretrain(cfg: TransferConfig, model, bundle: SourceBundle, out: Path, dist: Dist, resume: bool,
                    cache_dir: Path | None, progress: bool, channels: int, size: int) -> dict:
    """Train `model` (of `channels` input channels and `size` square images, the target's: G's samples are
    converted to them) on generated source-class samples; reuse cached weights for identical settings."""
    key = _pp_key(cfg, bundle, channels, size)
    cached = cache_dir / f"pp-{key}.pt" if cache_dir else None
    entry = read_cache(cached, ["model"]) if cached else None
    if cached and entry is not None:
        model.reset_head(bundle.num_classes)
        model.load_state_dict(entry["model"])
        return {"cached": str(cached), "seconds": 0.0}
    if cfg.pretrain_steps == 0:
        return {"skipped": True}
    # A plan for progress bars while PP trains; the phases after it are planned once PP (and auto) are done.
    if dist.main and not (out / PLAN_FILE).exists():
        atomic_write_json(out / PLAN_FILE, {"method": cfg.method, "auto": None, "notes": [], "preliminary": True,
                                            "phases": [{"name": "pretrain", "steps": cfg.pretrain_steps}]})
    trainer = Trainer(model, [Phase("pretrain", cfg.pretrain_steps, PseudoPretrain(
        bundle, cfg.pretrain_batch, cfg.pretrain_pool, cfg.seed, aug=pp_augment(cfg, bundle), mix=cfg.pretrain_mix,
        teacher=cfg.pretrain_teacher, temperature=cfg.kd_temperature, image_size=size, channels=channels,
        contrastive=cfg.pretrain_contrastive, contrastive_temperature=cfg.pretrain_contrastive_temperature),
        cfg.pretrain_lr, cfg.pretrain_weight_decay, evaluate=False)],
        out / "pretrain", cfg.seed, dist, checkpoint_every=cfg.checkpoint_every, eval_every=cfg.eval_every,
        progress=progress, channels_last=True)
    trainer.run(resume=resume)
    if cached and dist.main:
        atomic_torch_save(cached, {"model": model.state_dict()})
    return {"seconds": trainer.timings.get("pretrain", 0.0), "images": trainer.images_seen.get("pretrain", 0)}


def restart_layers(model: torch.nn.Module, initial: dict[str, torch.Tensor], keep: float) -> list[str]:
    """Put the feature extractor's last blocks back to their initial weights; the first `keep` share keeps PP's.

    Lower blocks (edges, strokes) carry over to targets the source never saw better than upper ones (the source
    classes' parts). The units are the stem, each of `blocks`, and any later layer with weights; the head is the
    target phase's own. Returns the restarted units' names."""
    units: list[str] = []
    for name, child in model.named_children():
        if name == "head" or not any(True for _ in child.parameters()):
            continue
        units += [f"{name}.{i}" for i, _ in enumerate(child.children())] if name == "blocks" else [name]
    restart = units[round(keep * len(units)):]
    state = model.state_dict()
    for unit in restart:
        state.update({k: v.clone() for k, v in initial.items() if k.startswith(unit + ".")})
    model.load_state_dict(state)
    return restart


def _pool_key(cfg: TransferConfig, bundle: SourceBundle, x_t: torch.Tensor) -> str:
    """A pool depends on the bundle, the conditioning target images, the seed and the sampling settings."""
    p = cfg.pssl
    key = {"bundle": bundle.manifest.files, "x": hashlib.sha256(x_t.numpy().tobytes()).hexdigest(),
           "seed": cfg.seed, "sampling": [p.temperature, p.z_candidates, p.relevance,
                                          p.relevance_keep, p.pool_size]}
    return json_digest(key)


def pseudo_samples(cfg: TransferConfig, bundle: SourceBundle, labelled: ImageSet, out: Path, dist: Dist,
                   cache_dir: Path | None = None) -> tuple[PseudoPool, bool]:
    """Draw the pool once (rank 0), keep it in the run directory (and the cache), share it with every worker."""
    path, from_cache = out / POOL_FILE, False
    if dist.main and not path.exists():
        x_t = reshape_images(labelled.x, bundle.image_shape[1], bundle.image_shape[0])
        cached = cache_dir / f"pool-{_pool_key(cfg, bundle, x_t)}.pt" if cache_dir else None
        state = read_cache(cached, POOL_FIELDS) if cached is not None else None
        from_cache = state is not None
        if state is None:
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


def _phase_key(cfg: TransferConfig, model: torch.nn.Module, labelled: ImageSet, ph: Phase, device: torch.device
               ) -> str:
    """A labels-only phase computes from the weights it starts on, the labelled images, its own schedule and the
    supervised objective's settings, in a torch build and thread count (which set the floats' rounding)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(labelled.x.numpy().tobytes())
    h.update(labelled.y.numpy().tobytes())
    spec = {"phase": [ph.name, ph.steps, ph.lr, ph.weight_decay, ph.ema, ph.warmup, ph.floor], "seed": cfg.seed,
            "arch": arch_spec(cfg.arch), "classes": labelled.classes, "objective": supervised_settings(cfg),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device)}
    if ph.ema:  # (only then: earlier caches keep their keys) the head is baked after the average since this version
        spec["bake"] = "after the average"
    h.update(json.dumps(spec, sort_keys=True).encode())
    return h.hexdigest()[:16]


def choose_method(cfg: TransferConfig, model, bundle: SourceBundle | None, labelled: ImageSet,
                  real: torch.Tensor | None, out: Path, dist: Dist, resume: bool, cache: Path | None,
                  progress: bool, info: dict) -> coverage.Choice:
    """--method auto: pseudo pre-train (cached), draw the pseudo samples, measure the coverage, choose.
    The choice is kept in the run directory, so a resumed run goes on with the same one."""
    path = out / CHOICE_FILE
    if resume and path.is_file():
        try:
            return coverage.Choice.model_validate_json(path.read_bytes())
        except ValueError:  # damaged, or an earlier edgeppt's: measured again below, from the same seeds
            pass
    init_feats = coverage.features(model, labelled.x)  # before PP: what scratch starts from
    fold = stratified_folds(labelled.y, cfg.auto.cv_folds, cfg.seed) if bundle is not None else None
    untrained = copy.deepcopy(model) if fold is not None else None
    pp_model = pool = x_src = None
    if bundle is not None:
        info["pretrain"] = pseudo_pretrain(cfg, model, bundle, out, dist, resume, cache, progress,
                                           labelled.shape[0], labelled.shape[1])
        pp_model = model
        pool, from_cache = pseudo_samples(cfg, bundle, labelled, out, dist, cache)
        info["pseudo_samples"] = {"count": len(pool), "mean_relevance": pool.relevance.mean().item(),
                                  "cached": from_cache}
        x_src = reshape_images(labelled.x, bundle.image_shape[1], bundle.image_shape[0])
    cov = coverage.measure(labelled, init_feats, pp_model, bundle, x_src, pool)
    # PP must pass both tests: the cross-validation runs only where the probes favour it
    if fold is not None and untrained is not None and pp_model is not None and cov.pp_probe is not None \
            and cov.init_probe is not None and cov.pp_probe - cov.init_probe > cfg.auto.pp_margin:
        cov.cv_scratch = crossval.score(cfg, untrained, "scratch", labelled, fold, dist.device)["prob"]
        cov.cv_pp = crossval.score(cfg, pp_model, "pp", labelled, fold, dist.device)["prob"]
    choice = coverage.choose(cov, cfg.auto, bundle is not None, real is not None)
    if dist.main:
        atomic_write_json(path, choice.model_dump(mode="json"))
    return choice


def reverse_check(cfg: TransferConfig, model, ssl_name: str, warm_name: str, real: torch.Tensor,
                  labelled: ImageSet, out: Path) -> tuple[str, dict]:
    """Keep the SSL model, or load the warm start back into `model` where its labels of the unlabelled images
    teach the k labels better by more than the margin. Returns the method kept and the record of the check."""
    warm = create_model(cfg.arch, len(labelled.classes), labelled.shape[0])
    warm.load_state_dict(load_checkpoint(out / WARM_FILE)["model"])
    acc = {"ssl": reverse_accuracy(model, real, labelled, cfg, cfg.auto.reverse_steps),
           "warm": reverse_accuracy(warm, real, labelled, cfg, cfg.auto.reverse_steps)}
    keep = acc["ssl"] >= acc["warm"] - cfg.auto.reverse_margin
    figures = f"reverse accuracy on the labels {acc['ssl']:.0%} for {ssl_name}, {acc['warm']:.0%} for {warm_name}"
    if keep:
        reason = f"kept {ssl_name}: its labels of the unlabelled images teach the labels as well ({figures})"
    else:
        model.load_state_dict(warm.state_dict())
        reason = (f"went back to {warm_name}: the SSL phase's labels of the unlabelled images teach the labels "
                  f"worse ({figures})")
    return (ssl_name if keep else warm_name), {**acc, "kept": ssl_name if keep else warm_name,
                                               "margin": cfg.auto.reverse_margin, "reason": reason}


def _needed(bundle: SourceBundle | None, method: str) -> SourceBundle:
    if bundle is None:
        raise EdgepptError(f"method {method!r} needs a source bundle (--source)")
    return bundle


@torch.no_grad()
def _predicted_shares(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's mean softmax over the images: the class shares it predicts for them."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    total = torch.zeros(())
    for i in range(0, len(x), 512):
        total = total + torch.softmax(model(x[i:i + 512].to(dev)), 1).sum(0).cpu()
    model.train(was)
    return total / len(x)


def fit_augmentation(cfg: TransferConfig, bundle: SourceBundle | None, x: torch.Tensor, labels: torch.Tensor,
                     info: dict) -> tuple[TransferConfig, list[str]]:
    """auto's augmentation rules (edgeppt/train/augment_rules.py) on the target images, labelled and
    unlabelled, before any training. Decided on the data, so a resume decides the same; config.json keeps the
    settings as given. Returns the settings to train with and a line for each rule that changed them."""
    fitted = augment_rules.fit_augmentation(cfg.augment, cfg.pretrain_rotation, cfg.auto, x, labels, bundle,
                                            pretrain=bool(cfg.pretrain_steps), seed=cfg.seed)
    info.update(fitted.records)
    update = {"augment": fitted.augment, "pretrain_rotation": fitted.pretrain_rotation}
    return cfg.model_copy(update=update), fitted.notes


def _copies_of_training(model, test: ImageSet, trained: torch.Tensor) -> dict[str, Any]:
    """How many test images copy one the model trained on (a target folder may hold a picture twice, and the
    held-out split can put one copy on each side), and the test accuracy without them: reported, never used."""
    copies = exact_copies(test.x, trained)
    n = int(copies.sum())
    if not n:
        return {"test_copies_of_training": 0}
    kept = (~copies).nonzero().flatten().tolist()
    return {"test_copies_of_training": n,
            "test_accuracy_without_copies": evaluate(model, test.subset(kept))["accuracy"] if kept else None}


def too_uneven(cfg: TransferConfig, shares: object) -> bool:
    """auto's limit on the class shares the warm start predicts for the unlabelled images."""
    return isinstance(shares, torch.Tensor) and bool(cfg.auto.uneven_shares) \
        and commonest_over_others(shares) > cfg.auto.uneven_shares


def disagrees(cfg: TransferConfig, first: object) -> bool:
    """auto's limit on how well label propagation's first labels and the warm start's predictions agree."""
    return isinstance(first, torch.Tensor) and first.item() < cfg.auto.agreement_min


def build_phases(cfg: TransferConfig, name: str, model: ClassifierNet, labelled: ImageSet,
                 bundle: SourceBundle | None, pool: PseudoPool | None, real: torch.Tensor | None,
                 pp_weights: ClassifierNet | None, out: Path, device: torch.device, cache: Path | None,
                 back: bool) -> list[Phase]:
    """The target phases of method `name` after any pre-training: its labels-only or SSL phase (an SSL one after a
    labels-only warm start), with the options that add a phase or change one (a first step, LP-FT's probe, EMA,
    a supermask, the labels-only phase's cache). `back`: auto may go back to the warm start after the SSL phase."""
    method = METHODS[name]
    lr = cfg.lr * cfg.source_ft.lr_scale if method.source_net else cfg.lr
    wd = (cfg.pssl.weight_decay if method.ssl else cfg.weight_decay) if method.weight_decay else 0.0
    phases = [Phase(name.replace("+", "_"), cfg.finetune_steps, method.target(cfg, labelled, bundle, pool,
                                                                             real if method.ssl else None), lr, wd)]
    if pp_weights is not None and isinstance(phases[0].objective, LabelProp):
        phases[0].objective.graph_model = (pp_weights,)
    if method.first_step:
        steps, first = method.first_step(cfg, phases[0].objective)
        phases.insert(0, Phase(f"{name}_first", steps, first, cfg.lr, cfg.weight_decay, evaluate=False))
    if method.ssl and cfg.pssl.warm_start:
        # Warm start: the labels-only phase is named after the method it reproduces (scratch, or pp after PP),
        # so its steps draw exactly what that method draws; the SSL phase then refines it at a lower rate.
        warm = cfg.pssl.real_warm_steps if real is not None and cfg.pssl.real_warm_steps else cfg.finetune_steps
        phases = [Phase("pp" if method.pretrain else "scratch", warm, supervised(cfg, labelled), cfg.lr,
                        cfg.weight_decay),
                  Phase(phases[0].name, cfg.pssl.real_steps if real is not None else cfg.pssl.steps,
                        phases[0].objective,
                        cfg.lr * (cfg.pssl.real_lr_scale if real is not None else cfg.pssl.lr_scale),
                        cfg.pssl.weight_decay)]
    if back and (cfg.auto.reverse_check or cfg.auto.uneven_shares or cfg.auto.agreement_min):
        # auto's way back (uneven classes, low agreement, the reverse check): the warm start is kept on disk (a
        # resumed run still has it) to go back to
        def keep_warm(m: torch.nn.Module) -> None:
            atomic_torch_save(out / WARM_FILE, {"model": m.state_dict()})
        phases[-2].on_end = keep_warm
    if back:  # decided on the warm start's predictions, before the SSL phase trains
        phases[-1].skip = lambda o: too_uneven(cfg, getattr(o, "lp_shares", None)) \
            or disagrees(cfg, getattr(o, "lp_first_agree", None))
    if cfg.probe_steps and method.pretrain:  # LP-FT: the new head first learns the PP features as they are
        first = phases[0].objective
        assert isinstance(first, Supervised), "after PP the target phases start with a supervised one"
        first.new_head = False
        phases.insert(0, Phase(f"{phases[0].name}_probe", cfg.probe_steps,
                               Probe(labelled, cfg.batch_size, aug=cfg.augment), cfg.lr, cfg.weight_decay))
    if cfg.ema and not cfg.supermask.enabled:  # (a supermask's scores are not weights to average)
        for ph in phases:
            ph.ema = 0.0 if ph.name.endswith(("_first", "_probe")) else ema_decay(cfg.ema, ph.steps)
    if method.ssl and cfg.pssl.average and not cfg.supermask.enabled:
        phases[-1].ema = ema_decay(cfg.pssl.average, phases[-1].steps)
    if cfg.supermask.enabled:  # over seeded weights from scratch, over the PP (or C's) weights otherwise
        attach(model, cfg.supermask, cfg.seed, seeded=not (method.pretrain or method.source_net))
        phases[-1].objective = Supermasked(phases[-1].objective, cfg.supermask, cfg.seed)
        phases[-1].steps = max(1, round(phases[-1].steps * cfg.supermask.steps_scale))
    # The labels-only phase that scratch and pp end with and the SSL methods warm-start from: computed once per key
    # and reused from the cache by every run (and row of a benchmark) that starts the same way. (Not under a
    # supermask: its settings shape the phase's forward pass, and they are not in the key.)
    if cache is not None and phases[0].name in ("scratch", "pp") and type(phases[0].objective) is Supervised \
            and not cfg.supermask.enabled:
        phases[0].cache = cache / f"phase-{_phase_key(cfg, model, labelled, phases[0], device)}.pt"
    return phases


def review_unlabelled(cfg: TransferConfig, phases: list[Phase], skipped: Collection[str], model: torch.nn.Module,
                      real: torch.Tensor, classes: list[str], back: bool, info: dict, out: Path,
                      log: Callable[[str], None] | None) -> str | None:
    """After an SSL phase over real unlabelled images: record in `info["unlabeled"]` (and say to `log`) what label
    propagation measured. Where auto may go back (`back`) and the warm start's predicted shares or agreement cross
    auto's limits, load the warm start back into `model` and return its phase's name."""
    went_back: str | None = None
    # label propagation's estimates, when it ran after a warm start (without one they read an untrained head)
    shares = getattr(phases[-1].objective, "lp_shares", None) if cfg.pssl.warm_start else None
    agree0 = getattr(phases[-1].objective, "lp_first_agree", None) if cfg.pssl.warm_start else None
    pp_agree = getattr(phases[-1].objective, "lp_pp_agree", None)
    if isinstance(pp_agree, torch.Tensor) and pp_agree.item() >= 0:
        used = bool(getattr(phases[-1].objective, "lp_pp_used", False))
        info["unlabeled"]["pp_graph"] = {"agreement": pp_agree.item(), "limit": cfg.pssl.lp_graph_agree,
                                         "used": used}
        if log:
            log(f"label propagation: PP's features {'joined' if used else 'stayed out of'} the graph: alone they "
                f"spread the labels as the model's own features do on {pp_agree.item():.0%} of the unlabelled images "
                f"({'at least' if used else 'under'} {cfg.pssl.lp_graph_agree:.0%}, pssl.lp_graph_agree)")
    unreached = getattr(phases[-1].objective, "lp_unreached", None)
    if cfg.pssl.lp_reach and isinstance(unreached, torch.Tensor):
        info["unlabeled"]["unreached"] = {"share": unreached.item(), "limit": cfg.pssl.lp_reach,
                                          "gap": cfg.pssl.lp_reach_gap}
        if log and unreached.item() > 0:
            log(f"label propagation: {unreached.item():.1%} of the unlabelled images left out: little of any label "
                f"reaches them over the graph (under {cfg.pssl.lp_reach:.0%} of the 90th percentile of the images "
                "given the same label, pssl.lp_reach, or below a wide gap in it, pssl.lp_reach_gap), as it does images "
                "of none of the target's classes")
    if isinstance(shares, torch.Tensor):
        info["unlabeled"]["predicted_shares"] = dict(zip(classes, shares.tolist()))
        if isinstance(agree0, torch.Tensor):
            info["unlabeled"]["first_agreement"] = agree0.item()
        uneven = commonest_over_others(shares)
        if back and too_uneven(cfg, shares):
            model.load_state_dict(load_checkpoint(out / WARM_FILE)["model"])
            went_back = phases[-2].name
            info["uneven_shares"] = {"commonest_over_others": uneven, "limit": cfg.auto.uneven_shares,
                                     "kept": went_back,
                                     # untrained where decided before it (one process), else trained for nothing
                                     "ssl_phase_skipped": phases[-1].name in skipped}
            if log:
                log(f"auto: went back to {went_back}, the labels-only warm start: the model predicts "
                    f"{shares.max().item():.0%} of the unlabelled images are one class ({uneven:.1f} times as many "
                    "as an average other class), where learning them cost accuracy (auto.uneven_shares)")
        elif back and disagrees(cfg, agree0):
            assert isinstance(agree0, torch.Tensor)
            model.load_state_dict(load_checkpoint(out / WARM_FILE)["model"])
            went_back = phases[-2].name
            info["low_agreement"] = {"agreement": agree0.item(), "limit": cfg.auto.agreement_min, "kept": went_back,
                                     "ssl_phase_skipped": phases[-1].name in skipped}
            if log:
                log(f"auto: went back to {went_back}, the labels-only warm start: label propagation's labels agree "
                    f"with its own predictions on only {agree0.item():.0%} of the unlabelled images (limit "
                    f"{cfg.auto.agreement_min:.0%}): its features do not group them as the labels do "
                    "(auto.agreement_min)")
        elif log and cfg.pssl.lp_balance == "equal" and too_uneven(cfg, shares):  # as a warning
            log(uneven_shares_warning(shares, classes))
        if not {"uneven_shares", "low_agreement"} & info.keys():  # the SSL model kept: its own shares beside its
            # warm start's (recorded for study, not used)
            final = _predicted_shares(model, real)
            info["unlabeled"]["final_shares"] = dict(zip(classes, final.tolist()))
            info["unlabeled"]["commonest_over_others"] = {"warm_start": uneven, "final": commonest_over_others(final)}
        if log and not back and disagrees(cfg, agree0):  # a method asked by name: a warning
            assert isinstance(agree0, torch.Tensor)
            log(f"warning: label propagation's first labels agree with the warm start's own predictions on only "
                f"{agree0.item():.0%} of the unlabelled images (auto goes back to the warm start below "
                f"{cfg.auto.agreement_min:.0%}): the features may not group them as the labels do")
    return went_back


def unused_images_note(unused: int, k: int) -> str:
    """Said where the target's training pool holds more images than the labels drawn from it: a user who gave
    every picture a label may not know the rest sits idle."""
    return (f"note: the target's other {unused:,} training images are not used ({k} a class are drawn as labels); "
            "unlabeled rest (transfer's --unlabeled rest, transfer.unlabeled in pipeline.yaml) trains on them without "
            "their labels, a larger labels_per_class with them")


def _open_run_dir(cfg: TransferConfig, out: Path, resume: bool, dist: Dist, log) -> dict[str, Any]:
    """Check `out` for a new run or a resumed one, and return the settings a resumed run took at today's values
    because the edgeppt that started it lacked them (said in a warning, kept in added_on_resume.json)."""
    added = _check_resume(cfg, out) if resume else {}
    if added and log and dist.main:
        log(added_settings_warning(out, added))
    if resume and (out / ADDED_FILE).is_file():  # added at an earlier resume (config.json names them since)
        try:
            added = {**json.loads((out / ADDED_FILE).read_text()), **added}
        except (OSError, ValueError, TypeError):  # damaged: only the report's record of them is lost
            pass
    if not resume and ((out / REPORT_FILE).exists() or (out / CHECKPOINT_FILE).exists()):
        raise EdgepptError(f"{out} already holds a run; pass --resume {out} to continue it, or choose another --out")
    if added and dist.main:
        atomic_write_json(out / ADDED_FILE, added)
    elif not resume and dist.main:  # a new run in a folder an unfinished one left: neither its record, its pool
        for left in (ADDED_FILE, POOL_FILE, PLAN_FILE, CHOICE_FILE, WARM_FILE):  # (drawn for that run's source and
            # labels), auto's choice nor its warm start is this one's
            (out / left).unlink(missing_ok=True)
    return added


def run_transfer(cfg: TransferConfig, out: str | Path, resume: bool = False, progress: bool = True,
                 pp_cache: str | Path | None = None, log=None) -> dict:
    """Train as cfg says into `out`; `log` (a callable taking a line) hears what auto chose and why."""
    out = Path(out)
    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist = setup_distributed(cfg.device)
    restarts = elastic_restarts()
    resume = resume or (restarts > 0 and (out / CONFIG_FILE).is_file())  # torchrun restarted us: go on
    added = _open_run_dir(cfg, out, resume, dist, log)
    check_inputs(cfg)
    uses_source = cfg.method == "auto" or METHODS[cfg.method].uses_source
    bundle = open_source(cfg.source, cfg, dist.device) if cfg.source is not None and uses_source else None
    labelled, test, rest, record = prepare_splits(cfg, bundle)
    twice = labelled_twice([labelled, rest, test])
    if log and dist.main and (note := twice_note({"data": {"labelled_twice": len(twice),
                                                           "labelled_twice_classes": twice}})):
        log(f"warning: {note}")
    real, skipped_unlabeled, offered, dropped = unlabeled_images(cfg, labelled, test, rest)
    if real is None and len(rest) and log and dist.main:
        log(unused_images_note(len(rest), cfg.labels_per_class))
    if bundle is not None and log and dist.main:  # once the inputs are known good: an error stays one line
        log(f"source {bundle.path}: {bundle.provenance}")
    check_same_images(out, resume, dist, labelled, test, real, bundle)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / CONFIG_FILE, cfg.model_dump(mode="json"))
    cache = Path(pp_cache) if pp_cache else None
    info: dict = {}
    notes: list[str] = []  # what auto's augmentation rules changed (printed, and shown by the wizard from plan.json)
    if cfg.method == "auto":
        cfg, notes = fit_augmentation(cfg, bundle, labelled.x if real is None else torch.cat([labelled.x, real]),
                                      labelled.y, info)

    torch.manual_seed(cfg.seed)
    in_chans, size = labelled.shape[0], labelled.shape[1]
    model = create_model(cfg.arch, len(labelled.classes), in_chans)
    initial = {k: v.clone() for k, v in model.state_dict().items()}  # what scratch starts from
    timings: dict[str, float] = {}
    name: str = cfg.method
    choice: coverage.Choice | None = None
    if cfg.method == "auto":
        t = time.perf_counter()
        choice = choose_method(cfg, model, bundle, labelled, real, out, dist, resume, cache, progress, info)
        timings["auto"] = time.perf_counter() - t
        name = choice.method
        info["auto"] = choice.model_dump(mode="json")
        if not METHODS[name].pretrain:  # the rules' lines print after the choice, which may leave PP's unused
            unused = f" (unused: {name} does not pre-train)"
            notes = [line + unused if line.startswith(augment_rules.PP_ROTATION_NOTE) else line for line in notes]
        if log and dist.main:
            for line in notes:
                log(line)
        if log:
            log(f"auto: {name}, pseudo samples {'on' if choice.pseudo_samples else 'off'}: {choice.reason}")
        if not METHODS[name].pretrain:  # start again from the initial weights, exactly as that method does
            torch.manual_seed(cfg.seed)
            model = create_model(cfg.arch, len(labelled.classes), in_chans)
    method = METHODS[name]
    arch = arch_spec(cfg.arch)
    pp_weights: ClassifierNet | None = None
    if method.source_net:  # C itself, made trainable, in place of --arch
        model, arch = source_model(_needed(bundle, name), len(labelled.classes))
    if method.pretrain:
        if "pretrain" not in info:  # auto has already pre-trained this model
            info["pretrain"] = pseudo_pretrain(cfg, model, _needed(bundle, name), out, dist, resume, cache,
                                               progress, labelled.shape[0], labelled.shape[1])
        timings["pretrain"] = info["pretrain"].get("seconds", 0.0)
        if method.ssl and real is not None and cfg.pssl.lp_graph != "model":  # before any layer restarts
            pp_weights = copy.deepcopy(model).requires_grad_(False)
        # auto's keep rule where it fired, else the setting (a user's pretrain_keep holds under auto too)
        keep = choice.pretrain_keep if choice is not None and choice.pretrain_keep < 1 else cfg.pretrain_keep
        if keep < 1 and not method.source_net:
            info["pretrain"]["restarted"] = restart_layers(model, initial, keep)
    elif "pretrain" in info:
        info["pretrain_for_auto"] = info.pop("pretrain")
    pool = None
    if method.needs_pool:
        t = time.perf_counter()
        pool, from_cache = pseudo_samples(cfg, _needed(bundle, name), labelled, out, dist, cache)
        timings["pseudo_samples"] = time.perf_counter() - t
        info["pseudo_samples"] = {"count": len(pool), "mean_relevance": pool.relevance.mean().item(),
                                  "cached": from_cache}
    if real is not None:
        info["unlabeled"] = {"count": len(real), "offered": offered, "skipped_files": skipped_unlabeled,
                             "used": method.ssl, "own_images_left_out": dropped}
        if log and dropped:
            log("unlabelled images: left out " + " and ".join(f"{n:,} of the target's {k} images" for k, n in
                                                             dropped.items())
                + " found among them (the test split only reports; a labelled image is labelled already)")
        if log and 0 < cfg.max_unlabeled < offered:
            log(f"unlabelled images: a fixed random {len(real):,} of the {offered:,} given (max_unlabeled)")

    back = (cfg.method == "auto" and method.ssl and real is not None and cfg.pssl.warm_start
            and not cfg.supermask.enabled)  # auto may go back to the labels-only warm start after the SSL phase
    check = back and cfg.auto.reverse_check
    phases = build_phases(cfg, name, model, labelled, bundle, pool, real, pp_weights, out, dist.device, cache, back)
    if dist.main:
        pre = [{"name": "pretrain", "steps": cfg.pretrain_steps}] if method.pretrain else []
        atomic_write_json(out / PLAN_FILE, {"method": name, "auto": info.get("auto"), "notes": notes,
                                            "phases": pre + [{"name": ph.name, "steps": ph.steps, "lr": ph.lr,
                                                                  "weight_decay": ph.weight_decay} for ph in phases]})
    trainer = Trainer(model, phases, out, cfg.seed, dist, evaluate=lambda m: evaluate(m, test),
                      checkpoint_every=cfg.checkpoint_every, eval_every=cfg.eval_every, progress=progress,
                      channels_last=True)
    trainer.run(resume=resume)
    timings["target"] = sum(trainer.timings.get(ph.name, 0.0) for ph in phases)
    if trainer.reused:
        info["reused_phases"] = trainer.reused
    if real is not None and method.ssl:
        went_back = review_unlabelled(cfg, phases, trainer.skipped, model, real, labelled.classes, back, info, out,
                                      log if dist.main else None)
        if went_back:
            name, check = went_back, False
    timings["total"] = time.perf_counter() - t0
    if not dist.main:
        return {}
    if check:
        assert real is not None
        t = time.perf_counter()
        name, info["reverse_check"] = reverse_check(cfg, model, name, phases[-2].name, real, labelled, out)
        timings["reverse_check"] = time.perf_counter() - t
        if log:
            log(f"auto: {info['reverse_check']['reason']}")
    update = finish(model, cfg.seed) if cfg.supermask.enabled else None
    if update:
        info["supermask"] = {**cfg.supermask.model_dump(), "base": "seeded" if update["base"] is None else name,
                             "update_bytes": update_size(update["update"])}
    result = evaluate(model, test)
    twins = _copies_of_training(model, test, labelled.x if real is None or not method.ssl else
                                torch.cat([labelled.x, real]))
    if log and dist.main and (note := copies_note({"data": {"test": len(test), **twins}})):
        log(f"note: {note}")
    model_info = {"arch": arch, "classes": labelled.classes, "in_chans": in_chans, "image_size": size,
                  "params": sum(p.numel() for p in model.parameters())}
    atomic_torch_save(out / MODEL_FILE, {**model_info, "state_dict": model.state_dict(),
                                         **({"supermask": update} if update else {})})
    rates = {k: v / max(trainer.timings.get(k, 1e-9), 1e-9) for k, v in trainer.images_seen.items()}
    if "pretrain" in info and info["pretrain"].get("images"):
        rates["pretrain"] = info["pretrain"]["images"] / max(info["pretrain"]["seconds"], 1e-9)
    report = TransferReport(
        test_accuracy=result["accuracy"], per_class_accuracy=result["per_class_accuracy"],
        confusion_matrix=result["confusion_matrix"], classes=labelled.classes, method=name,
        phases=[{"name": ph.name, "steps": ph.steps} for ph in phases],
        data={"labelled": len(labelled), "test": len(test), "unused": 0 if real is not None else len(rest),
              "skipped_files": list(dict.fromkeys(labelled.skipped + test.skipped)), **twins,
              **({"labelled_twice": len(twice), "labelled_twice_classes": twice[:10]} if twice else {})},
        data_record=record, model=model_info, settings=cfg.model_dump(mode="json"), timings_s=timings,
        images_per_s=rates, world_size=dist.world, restarts=restarts, added_on_resume=added or None,
        device=str(dist.device),
        peak_rss_mib=peak_rss_mib(),
        source=None if bundle is None else {"path": str(bundle.path), "provenance": bundle.provenance,
                                            "runtime": bundle.manifest.runtime}, **info,
    ).model_dump(mode="json")
    atomic_write_json(out / REPORT_FILE, report)
    return report
