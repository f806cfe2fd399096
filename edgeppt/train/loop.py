"""The one training loop: phases of (objective, steps), checkpoints, resume, metrics, an EMA, torchrun.

Every stage trains through it: source's classifier, search's proxy, transfer's methods. Every step draws its
randomness from a generator seeded by (seed, phase, step), so a resumed run repeats exactly what an
uninterrupted run would have done. Under torchrun each process takes its slice of every batch and
DistributedDataParallel averages the gradients (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import os
import signal
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from edgeppt.errors import EdgepptError
from edgeppt.runs import CHECKPOINT_FILE, MetricsLog, atomic_torch_save, load_checkpoint, read_cache
from edgeppt.schedule import cosine_lr
from edgeppt.train.objective import Objective


@dataclass
class Phase:
    name: str
    steps: int
    objective: Objective
    lr: float
    weight_decay: float = 5e-4
    evaluate: bool = True  # evaluate on the target test split (False while the head is over source classes)
    ema: float = 0.0  # decay of an exponential moving average of the weights that the phase ends on (0: none)
    warmup: int | None = None  # linear warm-up steps (default: a tenth of the phase, at most 50)
    floor: float = 0.05  # the cosine schedule decays to this share of the rate (1: a constant rate)
    optimizer: Callable[[list[nn.Parameter], float], torch.optim.Optimizer] | None = None  # (params, lr); default
    # SGD with Nesterov momentum and the phase's weight decay
    on_end: Callable[[nn.Module], None] | None = None  # called (rank 0) with the model the phase ends on, before
    # its last checkpoint: a later choice can go back to it
    cache: Path | None = None  # where the model this phase ends on is kept for reuse: a later run whose phase has
    # the same key (the caller names the file by everything the phase computes from) loads it instead of training
    skip: Callable[[Objective], bool] | None = None  # asked once the phase's objective is set up (single process,
    # not on a resume inside the phase): True leaves the model as the phase found it, untrained


def ema_update(decay: float):
    """torch's EMA update with a warm-up (as in timm's ModelEmaV3 and StyleGAN's ramp): at update t the decay is
    min(decay, (1 + t) / (10 + t)), so the first, untrained weights fade fast."""
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor | int) -> None:
        t = int(n)
        get_ema_multi_avg_fn(min(decay, (1 + t) / (10 + t)))(averaged, current, n)
    return update


def ema_model(module: nn.Module, decay: float, warmup: bool = True) -> AveragedModel:
    """The one EMA of every stage: parameters and buffers, torch's AveragedModel; the first update copies. Without
    `warmup` the decay holds from the first update: for an average that starts from trained weights (a teacher
    that starts as the warm-started model), where the warm-up would let it follow the student step for step."""
    avg = ema_update(decay) if warmup else get_ema_multi_avg_fn(decay)
    return AveragedModel(module, multi_avg_fn=avg, use_buffers=True)


def ema_decay(share: float, steps: int) -> float:
    """The decay of an EMA that spans about `share` of a phase of `steps` steps (0: no EMA)."""
    return 1.0 - 1.0 / max(2, round(share * steps)) if share > 0 else 0.0


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_distributed(device: str = "auto") -> Dist:
    """Plain process, or one torchrun worker: join the group and pick this worker's device."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise EdgepptError("--device cuda was asked for, but no CUDA GPU is visible to PyTorch")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(0, 1, torch.device("cuda" if use_cuda else "cpu"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        # torchrun's static rendezvous keeps one store across restarts, and a restarted group would read the
        # killed group's connection addresses from it (gloo: "connection refused"): each attempt gets its own keys.
        store, rank, world = next(dist.rendezvous("env://"))
        store = dist.PrefixStore(f"edgeppt/attempt-{elastic_restarts()}", store)
        dist.init_process_group("nccl" if use_cuda else "gloo", store=store, rank=rank, world_size=world)
    if use_cuda:
        torch.cuda.set_device(local)
    return Dist(dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local}" if use_cuda else "cpu"))


def elastic_restarts() -> int:
    """How often torchrun (`--max-restarts`) has restarted this worker group after a worker failed: a restarted
    worker resumes the run from its last checkpoint instead of starting it again."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def step_seed(seed: int, phase: str, step: int) -> int:
    """Keyed by the phase's name, not its position, so a run that reuses cached PP weights draws the same."""
    return (seed * 1_000_003 + zlib.crc32(phase.encode()) * 100_003 + step) % (2**62)


def lr_at(ph: Phase, step: int) -> float:
    """Linear warm-up, then cosine decay to the phase's floor: a pure function of the step (resumable)."""
    warmup = min(50, ph.steps // 10) if ph.warmup is None else ph.warmup
    return cosine_lr(ph.lr, step, ph.steps, warmup, floor=ph.floor)


class _Interrupted(Exception):
    pass


@dataclass
class Trainer:
    """Runs `phases` over `model`. With `out` None nothing is written (no checkpoint, log or resume): the
    search's proxy trains thousands of throw-away candidates this way."""
    model: nn.Module  # a ClassifierNet but for the source's GAN phase, which trains the generator
    phases: list[Phase]
    out: Path | None
    seed: int
    dist: Dist = field(default_factory=Dist)
    evaluate: Callable[[nn.Module], dict] | None = None
    checkpoint_every: int = 100
    eval_every: int = 100
    progress: bool = True
    # NHWC weights: on CPU a training step runs about 1.3x faster (ResNets) to 1.8x (depthwise convolutions)
    channels_last: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    images_seen: dict[str, int] = field(default_factory=dict)
    reused: dict[str, dict] = field(default_factory=dict)  # phases loaded from their cache: {name: its record}
    skipped: list[str] = field(default_factory=list)  # phases whose `skip` said so

    @property
    def ckpt_path(self) -> Path:
        assert self.out is not None
        return self.out / CHECKPOINT_FILE

    def _global_step(self, phase: int, step: int) -> int:
        return sum(p.steps for p in self.phases[:phase]) + step

    def _save(self, phase: int, step: int, opt: torch.optim.Optimizer, ema: AveragedModel | None,
              raw: dict[str, torch.Tensor] | None = None, finished: bool | None = None) -> None:
        """`raw`: at a phase's end, the weights it trained (`model` then holds what the phase hands on: an EMA's
        average, a baked head)."""
        if self.dist.main:
            atomic_torch_save(self.ckpt_path, {
                "phase": phase, "step": step, "model": self.model.state_dict(), "raw": raw,
                "finished": raw is not None if finished is None else finished,
                "objective": self.phases[phase].objective.state_dict(), "optimizer": opt.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "timings": self.timings, "images_seen": self.images_seen,
            })
        self.dist.barrier()

    def _diverged(self, phase: str, step: int, what: str, last_good: int) -> None:
        raise EdgepptError(f"{what} in phase {phase!r} at step {step}; stopped. The last good checkpoint "
                           f"(step {last_good}) is kept in {self.ckpt_path}. Try a lower learning rate.")

    def run(self, resume: bool = False) -> None:
        start_phase, start_step, state = 0, 0, None
        if resume and self.out is not None and self.ckpt_path.exists():
            try:
                state = load_checkpoint(self.ckpt_path)
                start_phase, start_step = int(state["phase"]), int(state["step"])
            except Exception as e:  # noqa: BLE001 - whatever is wrong, the file is kept and the user told in a line
                raise EdgepptError(f"{self.ckpt_path} cannot be resumed from: not a complete checkpoint of this "
                                   f"run ({type(e).__name__}). It is left as it is; start again with a new --out."
                                   ) from None
            if not 0 <= start_phase < len(self.phases):
                raise EdgepptError(f"{self.ckpt_path} is at phase {start_phase}, but this run has "
                                   f"{len(self.phases)}: it was written by other settings or another version. "
                                   "It is left as it is; start again with a new --out.")
            self.timings.update(state.get("timings", {}))
            self.images_seen.update(state.get("images_seen", {}))
        log = MetricsLog(self.out / "metrics.jsonl",
                         truncate_after_step=self._global_step(start_phase, start_step) if state else -1) \
            if self.dist.main and self.out is not None else None
        # Ctrl-C / SIGTERM: finish the current step, checkpoint, then stop.
        stop = {"flag": False}
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, lambda *_: stop.update(flag=True))
        try:
            for pi in range(start_phase, len(self.phases)):
                ph_state = state if (state and pi == start_phase) else None
                self._run_phase(pi, start_step if ph_state else 0, ph_state, log, stop)
        except _Interrupted:
            raise KeyboardInterrupt from None
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _load(self, ph: Phase, state: dict, parts: list[tuple[nn.Module | torch.optim.Optimizer, str]]) -> None:
        """Load each part from the checkpoint, or say in one line that it is not this run's (another version's
        objective buffers, another architecture): torch's own message runs to paragraphs."""
        try:
            for part, key in parts:
                part.load_state_dict(state[key])
        except (KeyError, RuntimeError, ValueError) as e:
            lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
            first = next((line for line in lines if not line.startswith("Error(s) in loading")), lines[0])[:160]
            raise EdgepptError(f"{self.ckpt_path} does not fit phase {ph.name!r} of this run ({first}): it was "
                               "written by other settings or another version. It is left as it is; start again "
                               "with a new --out.") from None

    def _run_phase(self, pi: int, start: int, state: dict | None, log: MetricsLog | None, stop: dict) -> None:
        ph = self.phases[pi]
        torch.manual_seed(step_seed(self.seed, ph.name, -1))  # seeded head init etc. in setup
        ph.objective.setup(self.model)
        self.model.to(self.dist.device)
        ph.objective.to(self.dist.device)
        if self.channels_last:  # the objective's copies too (frozen or EMA teachers)
            for module in (self.model, ph.objective):
                module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        net = ph.objective.trainable(self.model)
        if self.dist.world > 1:
            net = nn.parallel.DistributedDataParallel(
                net, device_ids=[self.dist.device.index] if self.dist.device.type == "cuda" else None)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = ph.optimizer(params, ph.lr) if ph.optimizer else \
            torch.optim.SGD(params, lr=ph.lr, momentum=0.9, nesterov=True, weight_decay=ph.weight_decay)
        if state is not None:
            self._load(ph, state, [(self.model, "model"), (ph.objective, "objective"), (opt, "optimizer")])
        if state is not None and state.get("raw") is not None and start < ph.steps:
            self.model.load_state_dict(state["raw"])  # a finished phase made longer goes on from its own weights
        ema = ema_model(self.model, ph.ema) if ph.ema > 0 else None  # from the resumed weights
        if ema is not None and state is not None and state.get("ema") is not None:
            self._load(ph, state, [(ema, "ema")])
        if start >= ph.steps:
            if state is not None and not state.get("finished", True):  # a phase made shorter on resume ends as
                if ema is not None:  # its last step would have: its average, then the objective's finish
                    self.model.load_state_dict(ema.module.state_dict())
                ph.objective.finish(self.model)
            return
        if state is None and ph.skip is not None and self.dist.world == 1 and ph.skip(ph.objective):
            self.skipped.append(ph.name)
            return
        cached = read_cache(ph.cache, ["model", "frozen", "seconds"]) \
            if state is None and ph.cache is not None and self.dist.world == 1 else None
        if cached is not None:
            self._reuse(pi, cached, opt, log)
            return
        t_phase = time.perf_counter() - self.timings.get(ph.name, 0.0)
        bar = Progress(TextColumn(f"[bold]{ph.name}[/]"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                       TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                       disable=not (self.progress and self.dist.main), transient=False)
        last_good = start
        with bar:
            task = bar.add_task(ph.name, total=ph.steps, completed=start, info="")
            for step in range(start, ph.steps):
                seed = step_seed(self.seed, ph.name, step)
                torch.manual_seed(seed)
                g = torch.Generator().manual_seed(seed)
                for group in opt.param_groups:
                    group["lr"] = lr_at(ph, step)
                net.train()
                loss, stats = ph.objective.update(net, opt, g, step, ph.steps, self.dist)
                if not torch.isfinite(loss):
                    self._diverged(ph.name, step, f"{stats.get('what', 'loss')} became {loss.item()}", last_good)
                ph.objective.after_step(self.model)
                if ema is not None:
                    ema.update_parameters(self.model)
                seen = int(stats.pop("images", 0)) * self.dist.world
                self.images_seen[ph.name] = self.images_seen.get(ph.name, 0) + seen
                done = step + 1
                raw = None
                if done == ph.steps:
                    raw = {k: v.detach().clone() for k, v in self.model.state_dict().items()}  # kept in the
                    if ema is not None:  # checkpoint: the phase hands on its average, then the objective's finish
                        self.model.load_state_dict(ema.module.state_dict())
                    ph.objective.finish(self.model)
                self.timings[ph.name] = time.perf_counter() - t_phase
                if ph.on_end is not None and done == ph.steps and self.dist.main:
                    ph.on_end(self.model)
                if ph.cache is not None and done == ph.steps and self.dist.main and self.dist.world == 1:
                    atomic_torch_save(ph.cache, {
                        "model": self.model.state_dict(), "seconds": self.timings[ph.name],
                        # what the phase leaves frozen (a cosine head's bias until its last step): as it left it
                        "frozen": [n for n, p in self.model.named_parameters() if not p.requires_grad]})
                record = {"phase": ph.name, "step": done, "global_step": self._global_step(pi, done),
                          "lr": opt.param_groups[0]["lr"], "loss": loss.item(), **stats}
                if ph.evaluate and self.evaluate and (done % self.eval_every == 0 or done == ph.steps):
                    if self.dist.main:
                        record.update({f"test_{k}": v for k, v in self.evaluate(self.model).items()
                                       if isinstance(v, float)})
                        self.model.train()
                if log:
                    log.write(record)
                bar.update(task, completed=done, info=f"loss {loss.item():.3f}" +
                           (f" acc {record['test_accuracy']:.3f}" if "test_accuracy" in record else ""))
                if self.out is not None and (done % self.checkpoint_every == 0 or done == ph.steps or stop["flag"]):
                    if not all(torch.isfinite(t).all() for t in self.model.state_dict().values()
                               if t.is_floating_point()):
                        self._diverged(ph.name, done, "weights became NaN/inf", last_good)
                    self._save(pi, done, opt, ema, raw)
                    last_good = done
                if stop["flag"]:
                    raise _Interrupted

    def _reuse(self, pi: int, cached: dict, opt: torch.optim.Optimizer, log: MetricsLog | None) -> None:
        """The phase's end, loaded from its cache: the same weights, buffers and frozen parameters that training
        it would leave, so every later phase computes what it would have."""
        ph = self.phases[pi]
        assert ph.cache is not None
        self.model.load_state_dict(cached["model"])
        frozen = set(cached["frozen"])
        for n, p in self.model.named_parameters():
            p.requires_grad_(n not in frozen)
        self.timings[ph.name], self.images_seen[ph.name] = 0.0, 0
        self.reused[ph.name] = {"cache": str(ph.cache), "seconds": float(cached["seconds"])}
        if ph.on_end is not None and self.dist.main:
            ph.on_end(self.model)
        record: dict = {"phase": ph.name, "step": ph.steps, "global_step": self._global_step(pi, ph.steps),
                        "reused": str(ph.cache)}
        if ph.evaluate and self.evaluate and self.dist.main:
            record.update({f"test_{k}": v for k, v in self.evaluate(self.model).items() if isinstance(v, float)})
        if log:
            log.write(record)
        if self.out is not None:
            self._save(pi, ph.steps, opt, None, finished=True)  # the cache holds the phase's end
