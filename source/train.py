"""`edgeppt source train`: the stage the owner of the source data runs once.

Trains a source classifier C and a class-conditional GAN G on labelled source images, then writes a
source bundle (edgeppt.bundle). Progress is checkpointed into a work dir next to the output
(`<out parent>/.<out name>-work`), so a killed run resumes where it stopped; the work dir is removed
once the bundle is written.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeppt.bundle import SourceBundle
from edgeppt.bundle_write import check_replaceable, save_bundle
from edgeppt.config import AugmentConfig, SourceTrainConfig
from edgeppt.data import ImageSet, load_dataset, skipped_summary, train_test_split
from edgeppt.errors import EdgepptError
from edgeppt.models import ClassifierNet, create_model
from edgeppt.runs import (
    CHECKPOINT_FILE,
    MetricsLog,
    atomic_torch_save,
    atomic_write_text,
    load_checkpoint,
    resume_conflicts,
)
from edgeppt.train.loop import Phase, Trainer
from edgeppt.train.objective import Supervised

from .gan import Discriminator, Generator, d_hinge_loss, g_hinge_loss, generator_ema

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


# ---------------------------------------------------------------- batches
def _flip(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    mask = torch.rand(len(x), generator=rng) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def _batch(ds: ImageSet, n: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(len(ds), (n,), generator=rng)
    return ds.x[idx], ds.y[idx]


def _check_finite(loss: torch.Tensor, what: str, step: int, work: Path, last_good: int | None) -> None:
    if not torch.isfinite(loss):
        kept = f"the last good checkpoint (step {last_good}) is kept in {work}" if last_good is not None \
            else "no checkpoint had been written yet"
        raise EdgepptError(f"{what} loss became {loss.item()} at step {step}; {kept}. "
                           "Lower the learning rate (or delete the work dir to start over).")


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    model.eval()
    correct = sum((model(x[i:i + batch])[0].argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(x), batch))
    return correct / max(1, len(x))


@torch.no_grad()
def generated_accuracy(g: nn.Module, c: nn.Module, k: int, latent_dim: int, per_class: int = 100,
                       seed: int = 0) -> float:
    """How often C recognises G's one-hot samples as the class asked for: a cheap check of class fidelity."""
    rng = torch.Generator().manual_seed(seed)
    y = torch.arange(k).repeat_interleave(per_class)
    x = g.eval()(torch.randn(len(y), latent_dim, generator=rng), F.one_hot(y, k).float())
    return accuracy(c, x, y)


# ---------------------------------------------------------------- state and checkpoints
class State:
    """Everything a resume of the GAN needs: models, optimisers, step counters, the batch/noise RNG, and C once
    trained (the classifier's own phase checkpoints through the trainer, in `work/classifier`)."""

    def __init__(self, cfg: SourceTrainConfig, k: int, shape: tuple[int, int, int]):
        torch.manual_seed(cfg.seed)  # model initialisation (incl. spectral-norm vectors) is seeded
        self.cfg = cfg
        self.classifier = SourceClassifier(create_model(cfg.classifier_arch, k, shape[0]))
        self.g = Generator(cfg.latent_dim, k, cfg.gen_channels, shape)
        self.d = Discriminator(k, cfg.disc_channels, shape)
        self.g_ema = generator_ema(self.g, cfg.ema_decay)
        self.g_opt = torch.optim.Adam(self.g.parameters(), lr=cfg.lr_g, betas=ADAM_BETAS)
        self.d_opt = torch.optim.Adam(self.d.parameters(), lr=cfg.lr_d, betas=ADAM_BETAS)
        self.rng = torch.Generator().manual_seed(cfg.seed)
        self.c_step = self.g_step = 0
        self.c_acc: float | None = None
        self.elapsed = 0.0  # training seconds summed over every session of this run
        self.resumed_from: int | None = None

    @property
    def global_step(self) -> int:
        return self.c_step + self.g_step

    def save(self, path: Path) -> None:
        atomic_torch_save(path, {
            "config": self.cfg.model_dump(mode="json"), "c_step": self.c_step, "g_step": self.g_step,
            "c_acc": self.c_acc, "elapsed": self.elapsed, "rng": self.rng.get_state(),
            "classifier": self.classifier.state_dict(),
            "g": self.g.state_dict(), "d": self.d.state_dict(), "g_ema": self.g_ema.module.state_dict(),
            "g_opt": self.g_opt.state_dict(), "d_opt": self.d_opt.state_dict(),
        })

    def load(self, path: Path) -> None:
        try:
            ck = load_checkpoint(path)
        except Exception as e:
            raise EdgepptError(f"cannot read checkpoint {path} ({e}); delete {path.parent} to start over") from e
        for name in ("classifier", "g", "d", "g_opt", "d_opt"):
            getattr(self, name).load_state_dict(ck[name])
        self.g_ema.module.load_state_dict(ck["g_ema"])
        self.rng.set_state(ck["rng"])
        self.c_step, self.g_step, self.c_acc, self.elapsed = ck["c_step"], ck["g_step"], ck["c_acc"], ck["elapsed"]
        self.g_ema.n_averaged.fill_(self.g_step + 1)  # the copy at the start, then one update per generator step
        self.resumed_from = self.global_step


def check_resumable(cfg: SourceTrainConfig, work: Path) -> None:
    """The work dir's run must have been started with the same settings (but for RESUME_FREE ones)."""
    path = work / "config.json"
    if not path.is_file():
        atomic_write_text(path, cfg.model_dump_json())
        return
    changed = resume_conflicts(json.loads(path.read_text()), cfg.model_dump(mode="json"), SourceTrainConfig.RESUME_FREE)
    if changed:
        diffs = ", ".join(f"{f}: {old!r} -> {new!r}" for f, (old, new) in changed.items())
        raise EdgepptError(f"{work} holds an unfinished run with a different config ({diffs}); "
                           f"rerun with its settings to resume, or delete {work} to start over")
    atomic_write_text(path, cfg.model_dump_json())  # the free settings as now


def save_checkpoint(state: State, path: Path) -> None:
    """A module-level hook (tests interrupt a run here)."""
    state.save(path)


# ---------------------------------------------------------------- the two phases
def source_augment(cfg: SourceTrainConfig) -> AugmentConfig:
    """The target's weak augmentation (edgeppt.train.augment) with the owner's flip setting: C learns under the
    same transformations that transfer later applies."""
    return AugmentConfig(hflip=cfg.hflip)


def _train_classifier(st: State, train: ImageSet, test: ImageSet, work: Path, progress: bool) -> None:
    """C's phase of the one trainer (its own checkpoints and resume in work/classifier), then C's checkpoint."""
    cfg = st.cfg
    if st.c_step >= cfg.classifier_steps:
        return
    phase = Phase("classifier", cfg.classifier_steps, Supervised(train, cfg.batch_size, aug=source_augment(cfg)),
                  cfg.classifier_lr, weight_decay=5e-4, evaluate=False, warmup=0, floor=0.0)
    trainer = Trainer(st.classifier.net, [phase], work / "classifier", cfg.seed,
                      checkpoint_every=cfg.checkpoint_every, progress=progress)
    trainer.run(resume=True)
    st.c_step, st.elapsed = cfg.classifier_steps, st.elapsed + trainer.timings.get("classifier", 0.0)
    st.c_acc = accuracy(st.classifier, test.x, test.y)
    save_checkpoint(st, work / CHECKPOINT_FILE)


def _train_gan(st: State, data: ImageSet, k: int, work: Path, log: MetricsLog, bar) -> None:
    cfg, g, d = st.cfg, st.g, st.d
    g.train()
    d.train()
    last_good = st.global_step
    n = cfg.batch_size

    def fake_batch() -> tuple[torch.Tensor, torch.Tensor]:
        p = F.one_hot(torch.randint(k, (n,), generator=st.rng), k).float()  # classes drawn uniformly
        return g(torch.randn(n, cfg.latent_dim, generator=st.rng), p), p

    while st.g_step < cfg.gan_steps:
        for _ in range(cfg.d_steps):
            x, y = _batch(data, n, st.rng)
            if cfg.hflip:
                x = _flip(x, st.rng)
            with torch.no_grad():
                xf, pf = fake_batch()
            d_loss = d_hinge_loss(d(x, F.one_hot(y, k).float()), d(xf, pf))
            _check_finite(d_loss, "discriminator", st.global_step, work, last_good)
            st.d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            st.d_opt.step()
        xf, pf = fake_batch()
        g_loss = g_hinge_loss(d(xf, pf))
        _check_finite(g_loss, "generator", st.global_step, work, last_good)
        st.g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        st.g_opt.step()
        st.g_step += 1
        st.g_ema.update_parameters(g)
        bar.advance(d=d_loss.item(), g=g_loss.item())
        if st.g_step % 50 == 0:
            log.write({"global_step": st.global_step, "phase": "gan", "d_loss": d_loss.item(), "g_loss": g_loss.item()})
        if st.g_step % cfg.checkpoint_every == 0 or st.g_step == cfg.gan_steps:
            st.elapsed += bar.lap()
            save_checkpoint(st, work / CHECKPOINT_FILE)
            last_good = st.global_step


# ---------------------------------------------------------------- progress
class _Bar:
    """A rich progress bar over the GAN's steps (or nothing), plus a lap timer for the wall-time total."""

    def __init__(self, enabled: bool, total: int, done: int):
        self._t = time.perf_counter()
        self.progress = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
            self.task = self.progress.add_task("source", total=total, completed=done, info="")

    def __enter__(self) -> _Bar:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress:
            self.progress.stop()

    def phase(self, name: str) -> None:
        if self.progress:
            self.progress.update(self.task, description=name)

    def advance(self, **losses: float) -> None:
        if self.progress:
            self.progress.update(self.task, advance=1, info=" ".join(f"{k}={v:.3f}" for k, v in losses.items()))

    def lap(self) -> float:
        """Seconds since the last lap: summed into the run's wall time at each checkpoint."""
        now = time.perf_counter()
        dt, self._t = now - self._t, now
        return dt


# ---------------------------------------------------------------- entry point
SKIPPED_LISTED = 20  # skipped files named in the manifest; the count is always complete


def train_source(cfg: SourceTrainConfig, progress: bool = True, command: str | None = None,
                 log: Callable[[str], None] | None = None) -> Path:
    """Train C and the GAN (resuming from the work dir if it holds a checkpoint) and write the bundle to cfg.out.
    `log` gets the lines a person should see before training starts (skipped image files)."""
    check_replaceable(cfg.out)  # fail now, not after training, if out is a folder we must not replace
    data = load_dataset(cfg.data, cfg.image_size)
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
    st = State(cfg, k, shape)
    if (work / CHECKPOINT_FILE).exists():
        st.load(work / CHECKPOINT_FILE)
    _train_classifier(st, train, test, work, progress)
    metrics = MetricsLog(work / "metrics.jsonl", truncate_after_step=st.global_step)
    with _Bar(progress, cfg.gan_steps, min(st.g_step, cfg.gan_steps)) as bar:
        bar.phase("GAN")
        _train_gan(st, data, k, work, metrics, bar)
    from .cli import command_line  # the command's own options spell the line, so it always runs

    g, c = st.g_ema.module.eval(), st.classifier.eval()
    gen_acc = generated_accuracy(g, c, k, cfg.latent_dim, seed=cfg.seed)
    info = {
        "command": command or command_line(cfg),
        "config": cfg.model_dump(mode="json"),
        "classifier_arch": cfg.classifier_arch,
        "classifier_test_accuracy": round(st.c_acc or 0.0, 4),
        "classifier_test_size": len(test),
        "generated_accuracy": round(gen_acc, 4),  # C's accuracy on one-hot G samples
        "train_images": len(data),
        "skipped": {"count": len(data.skipped), "files": data.skipped[:SKIPPED_LISTED]},
        "image_shape": list(shape),
        "wall_time_s": round(st.elapsed, 1),
        "resumed_from_step": st.resumed_from,
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
    text = f"""# Source bundle: {', '.join(classes)}

A class-conditional generator G(z, p) and a source classifier C(x) as ONNX graphs (see `manifest.json`:
every file's sha256, checked on load; `signature.json`, when present, signs the manifest).

Reproduce with:

```
{info['command']}
```

- data: `{cfg['data']}` ({info['train_images']} images of shape {info['image_shape']}{skipped})
- classifier `{info['classifier_arch']}`: held-out accuracy **{info['classifier_test_accuracy']:.1%}** \
on {info['classifier_test_size']} images
- generator: C recognises {info['generated_accuracy']:.1%} of one-hot samples as the class asked for
- GAN steps: {cfg['gan_steps']}, classifier steps: {cfg['classifier_steps']}, seed {cfg['seed']}
- training wall time: {info['wall_time_s'] / 60:.1f} min with {info['threads']} CPU thread(s) (torch {info['torch']})

`samples.png`: one row per class (one-hot p), the last row interpolates p between two classes.
"""
    atomic_write_text(out / "README.md", text)
