"""The low-fidelity evaluator: a candidate's accuracy after a short, fixed training budget.

Short pseudo pre-training (PP) on generated source-class samples, then a short fine-tune on the few target
labels, scored by cross-validation over those labels alone (each fold fine-tunes on the other folds' labels and
is scored on its own), so the search needs no label beyond the user's k; or, where the user gives extra labels
(val_per_class), on that labelled validation split. The transfer stage trains the winner properly; this
stage only ranks candidates, so it keeps its own small loop over the core (search runs before transfer and
does not import it). The generated pool is drawn once per search and shared by every trial: every candidate
sees the same images, and no trial pays for the generator.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from edgeppt.bundle import SourceBundle, open_source
from edgeppt.config import AugmentConfig, ProxyConfig, SearchConfig
from edgeppt.data import (
    ImageSet,
    few_shot,
    load_target,
    reshape_images,
    split_target,
    stratified_folds,
)
from edgeppt.errors import EdgepptError
from edgeppt.models import create_model
from edgeppt.train import augment_rules
from edgeppt.train.evaluate import evaluate, predict
from edgeppt.train.loop import Phase, Trainer
from edgeppt.train.objective import Supervised
from edgeppt.train.probe import features, label_probe_soft


@dataclass
class ProxyData:
    labelled: ImageSet  # the few training labels (the same ones transfer uses for this seed)
    folds: list[tuple[ImageSet, ImageSet]]  # (fine-tune on, score on) pairs that rank candidates
    pool: tuple[torch.Tensor, torch.Tensor] | None  # generated source-class images and labels
    source_val: tuple[torch.Tensor, torch.Tensor] | None  # more of them, held out from PP: its label-free score
    in_shape: tuple[int, int, int]
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # the fine-tune's views, fitted as transfer's auto
    pp_augment: AugmentConfig = field(default_factory=AugmentConfig)  # PP's views of the generated pool
    augment_notes: list[str] = field(default_factory=list)  # what auto's augmentation rules changed

    @property
    def num_classes(self) -> int:
        return len(self.labelled.classes)


def prepare(cfg: SearchConfig) -> ProxyData:
    """Split the target exactly as transfer does (test split fixed by seed 0), then hold out a validation set."""
    bundle: SourceBundle | None = open_source(cfg.source, cfg) if cfg.source else None
    # the target's own channels and side, by the rule transfer loads it with
    target = load_target(cfg.target, cfg.image_size, None, bundle.image_shape[1] if bundle else None)
    labelled, _test, rest, _train = split_target(target, cfg.test, cfg.test_fraction, cfg.labels_per_class, cfg.seed)
    if cfg.val_per_class:
        try:
            val, _ = few_shot(rest, cfg.val_per_class, cfg.seed + 1)
        except EdgepptError as e:
            raise EdgepptError(f"validation split: {e}; lower val_per_class") from e
        folds = [(labelled, val)]
    else:
        folds = label_folds(labelled, cfg.folds)
    pretrain = bundle is not None and cfg.proxy.pretrain_steps > 0
    fitted = augment_rules.fit_augmentation(cfg.augment, 0.0, cfg.auto, labelled.x, labelled.y,
                                            bundle if pretrain else None,
                                            pretrain=pretrain, seed=cfg.seed)
    pool = source_val = None
    if bundle is not None and cfg.proxy.pretrain_steps > 0:
        g = torch.Generator().manual_seed(cfg.seed)
        pool = _generate(bundle, cfg.proxy.pretrain_pool, g, labelled.x.shape[1:])
        source_val = _generate(bundle, SOURCE_VAL, g, labelled.x.shape[1:])  # drawn after the pool: it stays the same
    c, h, w = labelled.x.shape[1:]  # ImageSet images are (N, C, H, W)
    pp_aug = augment_rules.pp_augment(fitted.augment, fitted.pretrain_rotation, bundle) if bundle else fitted.augment
    return ProxyData(labelled, folds, pool, source_val, (c, h, w), fitted.augment, pp_aug, fitted.notes)


SOURCE_VAL = 500  # generated images held out from the proxy's PP


def _generate(bundle: SourceBundle, n: int, g: torch.Generator, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """n generated images of the source classes in turn, at the target's channels and image size."""
    y = torch.arange(n) % bundle.num_classes
    with torch.no_grad():
        x = torch.cat([bundle.sample_classes(y[i:i + 512], g) for i in range(0, len(y), 512)])
    x = reshape_images(x, shape[1], shape[0])  # e.g. a grayscale G for a colour target; as transfer's PP does
    return x.clamp(0, 1), y


def label_folds(labelled: ImageSet, k: int) -> list[tuple[ImageSet, ImageSet]]:
    """k cross-validation folds over the labels, stratified: each class's images are dealt round the folds."""
    fold_of = stratified_folds(labelled.y, k)
    if fold_of is None:
        raise EdgepptError(f"ranking by {k}-fold cross-validation needs at least {k} labels per class; give more "
                           "labels per class, fewer folds, or extra validation labels (val_per_class)")
    return [(labelled.subset((fold_of != f).nonzero().flatten()), labelled.subset((fold_of == f).nonzero().flatten()))
            for f in range(k)]


def _train(model, data: ImageSet, steps: int, batch: int, cfg: ProxyConfig, aug: AugmentConfig, seed: int,
           name: str, target: bool = False) -> None:
    """One phase of the core's trainer, in memory: no checkpoint, log or progress bar. The `target` fine-tune
    trains as transfer's labels-only phase does (a new imprinted cosine head, label smoothing, its schedule)."""
    if target:
        objective = Supervised(data, batch, new_head=True, aug=aug, label_smoothing=cfg.label_smoothing,
                               cosine=cfg.cosine_head)
        phase = Phase(name, steps, objective, cfg.lr, cfg.weight_decay, evaluate=False)
    else:
        phase = Phase(name, steps, Supervised(data, batch, aug=aug), cfg.lr, cfg.weight_decay, evaluate=False,
                      warmup=0, floor=0.0)
    try:
        Trainer(model, [phase], None, seed, progress=False, channels_last=True).run()
    except EdgepptError as e:
        raise EdgepptError(f"proxy training diverged ({e}); lower proxy.lr") from e


def evaluate_arch(arch: dict, data: ProxyData, cfg: ProxyConfig, seed: int = 0) -> dict:
    """Train `arch` under the proxy budget (PP once, then a fine-tune per fold); its mean held-out accuracy over
    the folds and the seconds it took. After PP, two scores that need no fine-tuning: `pp_source`, the accuracy
    on generated images held out from PP (no target label), and `pp_probe`, the leave-one-out nearest-class-mean
    probe of the k labels in the PP features (probability of the right class)."""
    t = time.perf_counter()
    torch.manual_seed(seed)
    extra: dict[str, float | None] = {}
    if data.pool is not None:
        x, y = data.pool
        k = int(y.max()) + 1
        start = create_model(arch, k, data.in_shape[0])
        _train(start, ImageSet(x, y, [str(c) for c in range(k)]), cfg.pretrain_steps, cfg.pretrain_batch, cfg,
               data.pp_augment, seed, "pretrain")
        if data.source_val is not None:
            xv, yv = data.source_val
            extra["pp_source"] = (predict(start, xv) == yv).float().mean().item()
        labelled = data.labelled
        extra["pp_probe"] = label_probe_soft(features(start, labelled.x), labelled.y, data.num_classes)
    else:
        start = create_model(arch, data.num_classes, data.in_shape[0])
    scores = []
    for f, (train, held) in enumerate(data.folds):
        model = copy.deepcopy(start)  # the fine-tune puts a new head over the target classes on it
        _train(model, train, cfg.finetune_steps, cfg.batch_size, cfg, data.augment, seed, f"fold{f}", target=True)
        scores.append(evaluate(model, held)["accuracy"])
    return {"accuracy": sum(scores) / len(scores), "train_s": time.perf_counter() - t, **extra}
