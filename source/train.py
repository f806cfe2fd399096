"""`edgeppt source train`: the stage the owner of the source data runs once.

Trains a source classifier C and a class-conditional GAN G on labelled source images, then writes a
source bundle (edgeppt.bundle). Progress is checkpointed into a work dir next to the output
(`<out parent>/.<out name>-work`), so a killed run resumes where it stopped; the work dir is removed
once the bundle is written.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeppt.bundle import SourceBundle
from edgeppt.bundle_write import check_replaceable, save_bundle
from edgeppt.config import AugmentConfig, SourceTrainConfig
from edgeppt.data import ImageSet, NeedsImageSize, conform, load_dataset, skipped_summary, train_test_split
from edgeppt.errors import EdgepptError
from edgeppt.models import ClassifierNet, create_model
from edgeppt.runs import (
    CHECKPOINT_FILE,
    added_settings,
    added_settings_warning,
    atomic_write_text,
    load_checkpoint,
    read_run_json,
    resume_conflicts,
)
from edgeppt.train.evaluate import evaluate, predict
from edgeppt.train.loop import Phase, Trainer
from edgeppt.train.objective import Objective, Supervised, sample_batch

from .gan import Discriminator, Generator, d_hinge_loss, g_hinge_loss

ADAM_BETAS = (0.5, 0.999)  # DCGAN/SNGAN setting for one D step per G step


class SourceClassifier(nn.Module):
    """The bundle's C: forward(x) -> (logits, features), as the bundle contract requires."""

    def __init__(self, net: ClassifierNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.net.forward_features(x)
        return self.net.head(f), f


def work_dir(out: Path) -> Path:
    return Path(out).parent / f".{Path(out).name}-work"


@torch.no_grad()
def generated_accuracy(g: nn.Module, c: ClassifierNet, k: int, latent_dim: int, per_class: int = 100,
                       seed: int = 0) -> float:
    """How often C recognises G's one-hot samples as the class asked for: a cheap check of class fidelity."""
    rng = torch.Generator().manual_seed(seed)
    y = torch.arange(k).repeat_interleave(per_class)
    z = torch.randn(len(y), latent_dim, generator=rng)
    g.eval()
    right = sum(int((predict(c, g(z[i:i + 512], F.one_hot(y[i:i + 512], k).float())) == y[i:i + 512]).sum())
                for i in range(0, len(y), 512))  # 512 at a time: 200 classes of 96 px images would need 40 GB
    return right / len(y)


# ---------------------------------------------------------------- the two phases
def check_resumable(cfg: SourceTrainConfig, work: Path) -> None:
    """The work dir's run must have been started with the same settings (but for RESUME_FREE ones)."""
    path = work / "config.json"
    if not path.is_file():
        atomic_write_text(path, cfg.model_dump_json())
        return
    saved, now = read_run_json(path), cfg.model_dump(mode="json")
    if not isinstance(saved, dict):
        raise EdgepptError(f"{path}: not a run's settings (delete {work} to start over)")
    changed = resume_conflicts(saved, now, SourceTrainConfig.RESUME_FREE)
    if changed:
        diffs = ", ".join(f"{f}: {old!r} -> {new!r}" for f, (old, new) in changed.items())
        raise EdgepptError(f"{work} holds an unfinished run with a different config ({diffs}); "
                           f"rerun with its settings to resume, or delete {work} to start over")
    if added := added_settings(saved, now):
        print(added_settings_warning(work, added), file=sys.stderr)
    atomic_write_text(path, cfg.model_dump_json())  # the free settings as now


def source_augment(cfg: SourceTrainConfig) -> AugmentConfig:
    """The target's weak augmentation (edgeppt.train.augment) with the owner's flip setting: C learns under the
    same transformations that transfer later applies."""
    return AugmentConfig(hflip=cfg.hflip)


def classifier_phase(cfg: SourceTrainConfig, train: ImageSet) -> Phase:
    """C: cross-entropy under the target's augmentation, a cosine rate without warm-up."""
    return Phase("classifier", cfg.classifier_steps, Supervised(train, cfg.batch_size, aug=source_augment(cfg)),
                 cfg.classifier_lr, weight_decay=5e-4, evaluate=False, warmup=0, floor=0.0)


class Adversarial(Objective):
    """The GAN phase: per generator update (the trainer's optimiser, over G), `d_steps` hinge-loss updates of the
    discriminator, whose weights and Adam state this objective holds (and the trainer checkpoints with it)."""

    def __init__(self, data: ImageSet, cfg: SourceTrainConfig):
        super().__init__()
        self.data, self.cfg, self.k = data, cfg, len(data.classes)
        # Fake labels are drawn uniformly over the classes; where the real images' classes are uneven, the real
        # batches are drawn class-balanced too, or D could tell fake from real by the label alone (a rare class
        # mostly fake) and G's rare classes would chase that instead of their look. Even classes: as drawn.
        counts = torch.bincount(data.y, minlength=self.k)
        self._order = torch.argsort(data.y, stable=True) if counts.min() != counts.max() else None
        self._counts, self._starts = counts, torch.cumsum(counts, 0) - counts
        self.d = Discriminator(self.k, cfg.disc_channels, data.shape)
        self.d_opt = torch.optim.Adam(self.d.parameters(), lr=cfg.lr_d, betas=ADAM_BETAS)

    def get_extra_state(self) -> dict:
        return {"d_opt": self.d_opt.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.d_opt.load_state_dict(state["d_opt"])

    def _fake(self, g_net: nn.Module, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.cfg.batch_size
        p = F.one_hot(torch.randint(self.k, (n,), generator=g), self.k).float()  # classes drawn uniformly
        return g_net(torch.randn(n, self.cfg.latent_dim, generator=g), p), p

    def _real(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self._order is None:
            return sample_batch(self.data, self.cfg.batch_size, g)
        y = torch.randint(self.k, (self.cfg.batch_size,), generator=g)  # a class, then one of its images
        pick = (torch.rand(len(y), generator=g) * self._counts[y]).long()
        idx = self._order[self._starts[y] + pick]
        return self.data.x[idx], self.data.y[idx]

    def update(self, net, opt, g, step, total, dist):
        d_loss = torch.zeros(())
        for _ in range(self.cfg.d_steps):
            x, y = self._real(g)
            if self.cfg.hflip:
                x = torch.where((torch.rand(len(x), generator=g) < 0.5)[:, None, None, None], x.flip(-1), x)
            with torch.no_grad():
                xf, pf = self._fake(net, g)
            d_loss = d_hinge_loss(self.d(x, F.one_hot(y, self.k).float()), self.d(xf, pf))
            if not torch.isfinite(d_loss):
                return d_loss, {"what": "the discriminator's loss"}
            self.d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.d_opt.step()
        xf, pf = self._fake(net, g)
        g_loss = g_hinge_loss(self.d(xf, pf))
        stats = {"what": "the generator's loss", "d_loss": d_loss.item(), "g_loss": g_loss.item(),
                 "images": self.cfg.batch_size * (2 * self.cfg.d_steps + 1)}
        if torch.isfinite(g_loss):
            opt.zero_grad(set_to_none=True)
            g_loss.backward()
            opt.step()
        return g_loss, stats


def gan_phase(cfg: SourceTrainConfig, data: ImageSet) -> Phase:
    """G against D at constant Adam rates; the bundle's G is the EMA of G's weights (`ema_decay`)."""
    return Phase("gan", cfg.gan_steps, Adversarial(data, cfg), cfg.lr_g, weight_decay=0.0, evaluate=False,
                 warmup=0, floor=1.0, ema=cfg.ema_decay,
                 optimizer=lambda params, lr: torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS))


def _checkpoint_step(folder: Path) -> int | None:
    path = folder / CHECKPOINT_FILE
    return int(load_checkpoint(path)["step"]) if path.is_file() else None  # our own file: weights only


# ---------------------------------------------------------------- entry point
# The largest side a GAN is trained at unless `image_size` asks for more: photos of 1000 px would otherwise train
# one at 1000 px, for days on a CPU.
SOURCE_SIDE_MAX = 64


def source_data(cfg: SourceTrainConfig) -> ImageSet:
    """The owner's images at the side the GAN trains at: `image_size`; else their own side, at most SOURCE_SIDE_MAX
    (larger photos are read at it, never whole); photos of mixed sizes at the median of their sides (so capped),
    a multiple of 4."""
    if cfg.image_size is not None:
        return load_dataset(cfg.data, cfg.image_size)
    try:
        data = load_dataset(cfg.data, None, max_side=SOURCE_SIDE_MAX)
    except NeedsImageSize as e:
        return load_dataset(cfg.data, max(8, min(e.side, SOURCE_SIDE_MAX) // 4 * 4))
    if data.shape[1] == data.shape[2] and data.shape[1] > SOURCE_SIDE_MAX:  # an .npz of large images
        return conform(data, SOURCE_SIDE_MAX, None, cfg.data)
    return data



SKIPPED_LISTED = 20  # skipped files named in the manifest; the count is always complete


def train_source(cfg: SourceTrainConfig, progress: bool = True, command: str | None = None,
                 log: Callable[[str], None] | None = None) -> Path:
    """Train C and the GAN (resuming from the work dir if it holds a checkpoint) and write the bundle to cfg.out.
    `log` gets the lines a person should see before training starts (skipped image files)."""
    check_replaceable(cfg.out)  # fail now, not after training, if out is a folder we must not replace
    data = source_data(cfg)
    if data.skipped and log:
        log(skipped_summary(data.skipped) + " (listed in the bundle's manifest.json)")
    shape, k, classes = data.shape, len(data.classes), list(data.classes)
    if shape[1] != shape[2] or shape[1] % 4:
        raise EdgepptError(f"the generator needs square images whose side is a multiple of 4; {cfg.data} has "
                           f"{shape[1]}x{shape[2]}: pass an image size such as {max(8, shape[1] // 4 * 4)}")
    train, test = train_test_split(data, cfg.test_fraction, cfg.seed)
    work = work_dir(cfg.out)
    work.mkdir(parents=True, exist_ok=True)
    check_resumable(cfg, work)
    done_c, done_g = _checkpoint_step(work / "classifier"), _checkpoint_step(work / "gan")
    if done_g is not None and done_g > cfg.gan_steps:  # more steps continue; fewer cannot be taken back
        raise EdgepptError(f"{work} has trained the GAN for {done_g} steps, more than gan_steps={cfg.gan_steps}; "
                           f"resume with gan_steps {done_g} or more, or delete {work} to start over")
    resumed_from = cfg.classifier_steps + done_g if done_g is not None else done_c
    torch.manual_seed(cfg.seed)  # initialisation (incl. spectral-norm vectors) is seeded; a resume loads weights
    net, g = create_model(cfg.classifier_arch, k, shape[0]), Generator(cfg.latent_dim, k, cfg.gen_channels, shape)
    gan = gan_phase(cfg, data)
    trainers = [Trainer(net, [classifier_phase(cfg, train)], work / "classifier", cfg.seed,
                        checkpoint_every=cfg.checkpoint_every, progress=progress),
                Trainer(g, [gan], work / "gan", cfg.seed, checkpoint_every=cfg.checkpoint_every, progress=progress)]
    for trainer in trainers:
        trainer.run(resume=True)
    c = SourceClassifier(net).eval()
    c_acc = evaluate(net, test)["accuracy"]
    g.eval()  # its EMA weights, which the GAN phase ends on
    gen_acc = generated_accuracy(g, net, k, cfg.latent_dim, seed=cfg.seed)
    info = {
        "command": command,  # the `edgeppt source train` line (None: made through the Python API)
        "config": cfg.model_dump(mode="json"),
        "classifier_arch": cfg.classifier_arch,
        "classifier_test_accuracy": round(c_acc, 4),
        "classifier_test_size": len(test),
        "generated_accuracy": round(gen_acc, 4),  # C's accuracy on one-hot G samples
        "train_images": len(data),
        "skipped": {"count": len(data.skipped), "files": data.skipped[:SKIPPED_LISTED]},
        "image_shape": list(shape),
        "wall_time_s": round(sum(sum(t.timings.values()) for t in trainers), 1),
        "resumed_from_step": resumed_from,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),  # the caller's choice; the CPU thread count only changes float rounding
    }
    from .inspect import render_grid

    def extras(folder: Path, bundle: SourceBundle) -> None:  # the preview is drawn from the compiled bundle
        render_grid(bundle, folder / "samples.png", seed=cfg.seed)
        write_readme(folder, info, classes)

    out = save_bundle(cfg.out, g, c, classes, cfg.latent_dim, shape, info=info, extras=extras, sign_key=cfg.sign)
    shutil.rmtree(work, ignore_errors=True)
    return out


def write_readme(out: Path, info: dict[str, Any], classes: list[str]) -> None:
    cfg = info["config"]
    n = info["skipped"]["count"]
    skipped = f"; {n} unreadable or too-large image file(s) skipped, listed in `manifest.json`" if n else ""
    reproduce = f"Reproduce with:\n\n```\n{info['command']}\n```\n" if info["command"] else \
        "Made through the Python API (`train_source`): its settings are `info.config` in `manifest.json`.\n"
    text = f"""# Source bundle: {', '.join(classes)}

A class-conditional generator G(z, p) and a source classifier C(x) as ONNX graphs (see `manifest.json`:
every file's sha256, checked on load; `signature.json`, when present, signs the manifest).

{reproduce}
- data: `{cfg['data']}` ({info['train_images']} images of shape {info['image_shape']}{skipped})
- classifier `{info['classifier_arch']}`: held-out accuracy **{info['classifier_test_accuracy']:.1%}** \
on {info['classifier_test_size']} images
- generator: C recognises {info['generated_accuracy']:.1%} of one-hot samples as the class asked for
- GAN steps: {cfg['gan_steps']}, classifier steps: {cfg['classifier_steps']}, seed {cfg['seed']}
- training wall time: {info['wall_time_s'] / 60:.1f} min with {info['threads']} CPU thread(s) (torch {info['torch']})

`samples.png`: one row per class (one-hot p), the last row interpolates p between two classes.
"""
    atomic_write_text(out / "README.md", text)
