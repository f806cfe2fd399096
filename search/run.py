"""`run_search`: device budgets -> NNI multi-trial search (filter, proxy evaluator) -> trials, Pareto plot, best.json.

NNI drives the exploration: its strategy proposes samples of the ModelSpace, a Filter middleware rejects every
over-budget sample before any training, and the evaluator trains the survivors under the proxy budget. The
sequential engine runs trials in this process (no web server); the training-service engine ("local") runs them
as NNI trial processes. After the trials, the best few are re-trained with more proxy seeds and the winner is the
best mean (the single-seed best is partly luck). NNI's working directory is `<run>/nni`. Our own ledger
(`<run>/trials.jsonl`) makes an interrupted search resumable: the strategy replays from its seed and finished
candidates are answered from it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeppt.config import SearchConfig, validate
from edgeppt.devices import Budgets, DeviceProfile, load_profile
from edgeppt.errors import EdgepptError
from edgeppt.runs import (
    added_settings,
    added_settings_warning,
    atomic_write_json,
    read_run_json,
    resume_conflicts,
    sha256_file,
)
from edgeppt.train.augment_rules import RULE_FIELDS

from . import reference, report
from .costmodel import LIMITS, CostModel, predictor_path
from .latency_cache import LatencyCache, machine
from .ledger import Ledger
from .proxy import ProxyData, evaluate_arch, prepare
from .record import CONFIG_FILE, PROFILE_FILE
from .space import extreme_sample, sample_key, to_arch
from .workers import check_workers, manager_ip, remote_service


def budgets_of(cfg: SearchConfig, profile: DeviceProfile) -> Budgets:
    """The profile's budgets, each overridden by the search settings where given."""
    over = {k: getattr(cfg, k) for k in Budgets.model_fields if getattr(cfg, k) is not None}
    return Budgets(**{**profile.budgets.model_dump(), **over})


@dataclass
class SearchContext:
    """Everything a trial needs, built once per process from the run directory."""
    cfg: SearchConfig
    out: Path
    profile: DeviceProfile
    data: ProxyData
    cost: CostModel
    ledger: Ledger
    progress: bool = False
    interrupted: bool = False  # NNI swallows Ctrl-C; remember it so run_search can report it

    def check(self, sample: dict) -> bool:
        """The Filter's test: costs of the candidate (measured once, then from the ledger) within budget?"""
        key = sample_key(sample)
        rec = self.ledger.get(key)
        if rec is None:
            arch = to_arch(sample, self.cfg.space)
            try:
                costs = self.cost.costs(arch, screen=True)
            except KeyboardInterrupt:
                self.interrupted = True
                raise
            bad = self.cost.violations(costs)
            if costs["latency_kind"] == "screened":
                bad = [f"latency_ms about {costs['latency_ms']:.3g} ms (screened, not measured) > "
                       f"{self.cost.budgets.latency_ms:g} ms"]
            rec = self.ledger.add({"key": key, "order": len(self.ledger.records), "sample": sample, "arch": arch,
                                   **costs, "status": "rejected" if bad else "admitted", "violations": bad})
            if bad and self.progress:
                report.console.print(f"[dim]rejected before training: {', '.join(bad)}[/]")
        return rec["status"] != "rejected"

    def trial(self, sample: dict) -> float:
        """Train the candidate under the proxy budget (or recall its result) and return its accuracy."""
        key = sample_key(sample)
        self.ledger.reload()  # trial processes of the training-service engine share the file
        rec = self.ledger.get(key)
        if rec is not None and rec.get("status") == "trained":
            return rec["accuracy"]
        if rec is None:  # a trial process started without the filter's record (training-service engine)
            self.check(sample)
            rec = self.ledger.get(key)
            assert rec is not None  # check() records every sample it sees
        if rec.get("status") == "rejected":  # over a budget: never trained, never a result
            return 0.0
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        # Marked before training: a record left "training" is a trial that died (run_search retries it).
        self.ledger.add({"key": key, "status": "training", "pid": os.getpid()})
        try:
            result = evaluate_arch(rec["arch"], self.data, self.cfg.proxy, seed=self.cfg.seed)
        except KeyboardInterrupt:
            self.interrupted = True
            raise
        n = len(self.ledger.trials()) + 1
        rec = self.ledger.add({"key": key, "status": "trained", "trial": n, "pid": os.getpid(), **result})
        if self.progress:
            best = max(r["accuracy"] for r in self.ledger.trained())
            report.console.print(f"trial {n}/{self.cfg.trials}: accuracy {rec['accuracy']:.3f}, "
                                 f"latency {rec['latency_ms']:.3f} ms ({rec['latency_kind']}), "
                                 f"{rec['macs'] / 1e6:.2f} M MACs, {rec['params']:,} params, "
                                 f"train {rec['train_s']:.0f}s; best {best:.3f}")
        return rec["accuracy"]

    def train_reference(self) -> None:
        """Train the hand-designed reference (search/reference.py) once, as a candidate outside the strategy."""
        cfg = self.cfg
        if not (cfg.reference and cfg.finalists) or self.ledger.get(reference.KEY):
            return
        found = reference.widest_fitting(self.cost)
        if found is None:  # recorded, so a resumed search does not scan again
            self.ledger.add({"key": reference.KEY, "order": len(self.ledger.records), "status": "unfit",
                             "reference": "none of x0.25-x2.0 fits", "arch": None, "latency_ms": None})
            return
        width, arch, costs = found
        result = evaluate_arch(arch, self.data, cfg.proxy, seed=cfg.seed)
        rec = self.ledger.add({"key": reference.KEY, "order": len(self.ledger.records), "sample": None, "arch": arch,
                               **costs, "violations": [], "reference": f"hand-designed x{width:g}",
                               "status": "trained", "trial": 0, "pid": os.getpid(), **result})
        if self.progress:
            report.console.print(f"hand-designed reference (MobileNet-like x{width:g}): accuracy "
                                 f"{rec['accuracy']:.3f}, latency {rec['latency_ms']:.3f} ms, "
                                 f"{rec['macs'] / 1e6:.2f} M MACs")

    def rerank(self) -> None:
        """Re-train the `finalists` best candidates, and the reference, with `final_seeds` more proxy seeds; store
        each one's mean.

        One proxy run's seed noise (initialisation, batch order, 4 labels per class) is as large as the gaps
        between good candidates, so the single-seed best is partly luck: the winner's curse. Finalists are chosen
        by their first-seed accuracy, so a resumed search picks the same ones; seeds already run are kept.
        """
        cfg = self.cfg
        if cfg.finalists == 0:
            return
        trained = self.ledger.trained()
        # the searched candidates' best, then the reference: it never takes a searched network's finalist place
        top = sorted((r for r in trained if not r.get("reference")), key=lambda r: (-r["accuracy"], r["order"]))
        top = top[:cfg.finalists] + [r for r in trained if r.get("reference")]  # the bar every search must clear
        keys = {r["key"] for r in top}
        for rec in trained:  # finalists of a resumed search that asked for more: no longer finalists
            if rec["key"] not in keys and rec.get("final_accuracy") is not None:
                self.ledger.add({"key": rec["key"], "finalist": None, "final_accuracy": None})
        for rank, rec in enumerate(top, 1):
            accs = list(rec.get("seed_accuracies") or [rec["accuracy"]])
            if len(accs) > 1 + cfg.final_seeds:  # a resumed search that asks for fewer seeds: the first ones
                accs = accs[:1 + cfg.final_seeds]
                rec = self.ledger.add({"key": rec["key"], "seed_accuracies": accs, "finalist": rank,
                                       "final_accuracy": sum(accs) / len(accs)})
            for s in range(len(accs), 1 + cfg.final_seeds):
                res = evaluate_arch(rec["arch"], self.data, cfg.proxy, seed=cfg.seed + s)
                accs.append(res["accuracy"])
                rec = self.ledger.add({"key": rec["key"], "seed_accuracies": accs, "finalist": rank,
                                       "final_accuracy": sum(accs) / len(accs),
                                       "train_s": rec.get("train_s", 0.0) + res["train_s"]})
                if self.progress:
                    report.console.print(f"finalist {rank}/{len(top)}, proxy seed {s + 1}: accuracy "
                                         f"{res['accuracy']:.3f}; mean {rec['final_accuracy']:.3f} over {len(accs)}")


_CONTEXTS: dict[str, SearchContext] = {}


def load_run_config(out: str | Path) -> SearchConfig:
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        raise EdgepptError(f"{out}: nothing to resume (no {CONFIG_FILE}); start the search without --resume")
    return validate(SearchConfig, read_run_json(path), str(path))


def context(out: str | Path, cfg: SearchConfig | None = None, progress: bool | None = None) -> SearchContext:
    key = str(Path(out).resolve())
    if key not in _CONTEXTS:
        main = cfg is not None  # the search's own process (a trial process reads the settings from the run)
        cfg = cfg or load_run_config(out)
        profile = load_profile(cfg.device)
        if cfg.image_size is None and profile.input_size:
            cfg = cfg.model_copy(update={"image_size": profile.input_size})
        data = prepare(cfg)
        if profile.input_channels and profile.input_channels != data.in_shape[0]:
            raise EdgepptError(f"device {profile.name!r} takes {profile.input_channels}-channel input, but the "
                               f"images have {data.in_shape[0]} channels")
        # Local trials train on the cores the filter times candidates on: their latencies are this search's only,
        # never kept for later searches
        loaded = cfg.engine == "local" and cfg.concurrency > 1
        cost = CostModel(profile, budgets_of(cfg, profile), data.in_shape, data.num_classes,
                         cfg.latency_warmup, cfg.latency_repeats, cfg.latency_band,
                         LatencyCache() if cfg.latency_cache and not loaded else None)
        ledger = Ledger(out, repair=main)
        cost.remember(sorted((r for r in ledger.records.values() if "order" in r), key=lambda r: r["order"]))
        _CONTEXTS[key] = SearchContext(cfg, Path(out), profile, data, cost, ledger)
    if progress is not None:
        _CONTEXTS[key].progress = progress
    return _CONTEXTS[key]


def nni_trial(model, run_dir: str) -> None:
    """NNI's evaluator function (importable by name, so training-service trial processes can run it too)."""
    import nni

    sample = nni.get_current_parameter().sample
    nni.report_final_result(context(run_dir).trial(sample))


def check_feasible(ctx: SearchContext) -> dict:
    """Refuse a budget no candidate can meet, naming what the smallest architecture of the space costs."""
    arch = to_arch(extreme_sample(ctx.cfg.space, smallest=True), ctx.cfg.space)
    costs = ctx.cost.costs(arch)
    bad = ctx.cost.violations(costs)
    if bad:
        raise EdgepptError(
            f"no architecture in the search space fits the budget on {ctx.profile.name}: even the smallest one "
            f"breaks it ({'; '.join(bad)}). Smallest achievable: latency {costs['latency_ms']:.3g} ms "
            f"({costs['latency_kind']}), {costs['params']:,} params, {costs['macs']:,} MACs, peak activation "
            f"{costs['peak_activation_kib']:.1f} KiB. Raise the budget or shrink the space (space.stems, "
            f"space.stages[*].widths).")
    return costs


def _strategy(cfg: SearchConfig, ctx: SearchContext):
    from nni.nas import strategy

    if cfg.strategy == "evolution":
        base = strategy.RegularizedEvolution(population_size=cfg.population,
                                             sample_size=min(cfg.tournament, cfg.population),
                                             mutation_prob=cfg.mutation_prob, seed=cfg.seed)
    elif cfg.strategy == "random":
        base = strategy.Random(seed=cfg.seed)
    else:
        base = strategy.TPE(optimize_mode="maximize", seed=cfg.seed)
    # Rejected candidates score 0 for the strategy (so evolution and TPE learn to avoid them) and never train.
    from nni.nas.strategy.middleware import Chain, Filter

    return Chain(base, Filter(lambda m: ctx.check(m.sample), metric_for_invalid=0.0,
                                                           patience=cfg.max_rejections))


def _experiment(cfg: SearchConfig, ctx: SearchContext, out: Path):
    from nni.nas.evaluator import FunctionalEvaluator
    from nni.nas.experiment import NasExperiment, NasExperimentConfig

    from .space import EdgeCNNSpace

    space = EdgeCNNSpace(cfg.space, ctx.data.num_classes, ctx.data.in_shape[0])
    evaluator = FunctionalEvaluator(nni_trial, run_dir=str(out.resolve()))
    if cfg.engine == "sequential":
        from nni.nas.experiment.config import SequentialEngineConfig
        engine = SequentialEngineConfig(max_model_count=cfg.trials)
        conf = NasExperimentConfig(engine, "raw")
    else:
        conf = NasExperimentConfig("ts", "simplified", cfg.engine, trial_concurrency=cfg.concurrency,
                                   max_trial_number=cfg.trials)
        if cfg.engine == "remote":
            conf.training_service = remote_service(cfg)
            # NNI's trial dispatcher tells each worker's runner the manager's address from the experiment-level
            # field, not the training service's (which NNI's remote service itself reads).
            conf.nni_manager_ip = manager_ip(cfg)

    conf.experiment_working_directory = str((out / "nni").resolve())
    conf.experiment_name = out.name

    class RunDirExperiment(NasExperiment):
        """Without NNI's manager, NNI would still list the experiment in ~/nni-experiments/.experiment (for its
        web UI). Keep everything in the run directory instead."""

        def _start_without_nni_manager(self):
            pass

        def _stop_without_nni_manager(self):
            pass

    return RunDirExperiment(space, evaluator, _strategy(cfg, ctx), conf)


def _run(exp, cfg: SearchConfig, out: Path) -> None:
    if cfg.engine == "sequential":
        exp.run()
        return
    # NNI's training services upload the working directory to every worker as the trial code (a NAS experiment
    # allows no other folder). The trial function is edgeppt's own, installed there, so run from an empty one.
    code = (out / "nni" / "trial-code").resolve()
    code.mkdir(parents=True, exist_ok=True)
    (code / "README").write_text("The trial code folder NNI copies to its workers: the trial is edgeppt's own "
                                 "(edgeppt.search.run.nni_trial), installed there.\n")  # NNI refuses an empty one
    port = _free_port()
    if cfg.engine == "remote":
        check_workers(cfg, port, (out / "nni").resolve())
    here = os.getcwd()
    os.chdir(code)
    try:
        exp.run(port=port)
    finally:
        os.chdir(here)


def run_search(cfg: SearchConfig, out: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Search `cfg.space` for `cfg.device`; write trials.jsonl/.csv/.json, pareto.png, best.json, summary.json."""
    out = Path(out)
    if resume:
        load_run_config(out)  # a damaged file is a one-line error
        saved, now = read_run_json(out / CONFIG_FILE), cfg.model_dump(mode="json")
        diff = resume_conflicts(saved, now, SearchConfig.RESUME_FREE)
        # of auto's settings the search reads only its augmentation rules: the others (transfer's) may change
        diff = {k: v for k, v in diff.items() if not (k.startswith("auto.") and k.split(".")[1] not in RULE_FIELDS)}
        if diff:
            raise EdgepptError(f"{out} was started with other settings ({', '.join(diff)} differ); resume with the "
                               "same settings or use a new --out")
        if added := added_settings(saved, now):
            print(added_settings_warning(out, added), file=sys.stderr)
    elif (out / CONFIG_FILE).exists():
        raise EdgepptError(f"{out} already holds a search; pass --resume {out} to continue it, or choose another --out")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter() - (_earlier_wall(out) if resume else 0.0)  # wall_s: every invocation's time
    key = str(out.resolve())
    _CONTEXTS.pop(key, None)  # this run's settings, never a context cached by an earlier call
    try:
        ctx = context(out, cfg, progress)
        profile = profile_record(ctx.profile)
        if resume and (out / PROFILE_FILE).is_file():  # a profile edited in place: its name is the same
            changed = resume_conflicts(read_run_json(out / PROFILE_FILE), profile)
            if changed:
                raise EdgepptError(f"{out}: device profile {cfg.device} changed since this search started "
                                   f"({', '.join(changed)}); its candidates were judged by the profile as it was. "
                                   "Restore it, or start a new search with another --out")
        smallest = check_feasible(ctx)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / CONFIG_FILE, cfg.model_dump(mode="json"))
        atomic_write_json(out / PROFILE_FILE, profile)
        done = len(ctx.ledger.trials())
        if progress:
            report.console.print(f"search on {ctx.profile.name} ({ctx.profile.latency} latency), budgets "
                                 f"{ctx.cost.budgets.model_dump(exclude_none=True)}; strategy {cfg.strategy}, "
                                 f"{cfg.trials} trials" + (f"; {done} already done" if done else ""))
            for line in ctx.data.augment_notes:
                report.console.print(line.replace("auto: ", "proxy (as transfer's auto): ", 1))
        logging.getLogger("nni").setLevel(logging.WARNING)
        for attempt in range(1 + cfg.trial_retries):
            if len(ctx.ledger.trials()) >= cfg.trials:
                break
            exp = _experiment(cfg, ctx, out)
            try:
                _run(exp, cfg, out)
            finally:
                try:
                    exp.stop()
                except Exception:  # noqa: BLE001  (already stopped; NNI logs the rest)
                    pass
            ctx.ledger.reload()
            lost = ctx.ledger.lost()
            if ctx.interrupted or not lost:
                break
            # NNI fails a trial whose process or worker is gone and goes on without it. The strategy replays from
            # its seed, as on resume: trained candidates are recalled from the ledger, the lost ones train again.
            report.console.print(f"[yellow]{len(lost)} trial(s) lost mid-training (their process or worker died)"
                                 + ("; running the experiment again for them" if attempt < cfg.trial_retries
                                    else f"; no retries left (trial_retries {cfg.trial_retries})") + "[/]")
        ctx.ledger.reload()
        if not ctx.interrupted and ctx.ledger.trained():
            try:
                ctx.train_reference()
                ctx.rerank()  # in this process, after the trials (threads already set above)
            except KeyboardInterrupt:
                ctx.interrupted = True  # reported below, with what is done so far
        if ctx.interrupted:
            if ctx.ledger.trained():  # what is done so far, then the usual "resume" message
                report.write_outputs(ctx, out, smallest, time.perf_counter() - t0)
            raise KeyboardInterrupt
        return report.write_outputs(ctx, out, smallest, time.perf_counter() - t0, source_candidate(ctx))
    finally:
        _CONTEXTS.pop(key, None)


def _earlier_wall(out: Path) -> float:
    """The wall time an interrupted invocation recorded (summary.json is written when one stops with results)."""
    try:
        wall = read_run_json(out / "summary.json").get("wall_s", 0.0)
    except (EdgepptError, OSError, AttributeError):
        return 0.0
    return float(wall) if isinstance(wall, (int, float)) else 0.0


def profile_record(profile: DeviceProfile) -> dict:
    """What the search judged candidates by: the profile, its predictor file's contents, and for a measured profile
    the host that measured (a resume on another machine, or after a re-calibration, would mix latencies)."""
    predictor = sha256_file(predictor_path(profile)) if profile.predictor and predictor_path(profile).is_file() \
        else None
    return {**profile.model_dump(mode="json"), "predictor_file": predictor,
            "measured_on": machine() if profile.latency == "measured" else None}


def source_candidate(ctx: SearchContext) -> dict | None:
    """The source classifier C as a candidate of its own: its costs on this device under the same budgets. When it
    fits, `edgeppt transfer --method ft|l2sp|tred` trains C itself (its proxy score is not comparable: the
    proxy trains from scratch or PP, fine-tuning C starts from the owner's weights)."""
    if ctx.cfg.source is None:
        return None
    from edgeppt.bundle import open_source
    from edgeppt.macs import onnx_macs
    from edgeppt.models.onnx_graph import from_bundle

    try:
        bundle = open_source(ctx.cfg.source, ctx.cfg)
        arch, _ = from_bundle(bundle)
        # C trains on the target in its own channels, at the bundle's side unless one is set (transfer's ft): its
        # costs are at that shape, not at the target's (a colour target for a grayscale C, say)
        side = ctx.cfg.image_size or bundle.image_shape[1]
        costs = ctx.cost.at((bundle.classifier_channels, side, side)).costs(arch)
    except EdgepptError as e:
        return {"fits": False, "why": str(e)}
    # C runs as functional torch ops, which the module-hook counters do not see: count its graph instead, and say
    # that its peak activation memory is not counted.
    costs.update(macs=onnx_macs(bundle.path / bundle.manifest.classifier.file), peak_activation_kib=None)
    if costs["latency_kind"] == "predicted":  # the predictor reads module layers; C's are functional ops
        costs.update(latency_ms=None, latency_kind="not predicted: C's layers are not the search space's; "
                     "measure it on the device (edgeppt deploy, or devices calibrate)")
    bad = ctx.cost.violations(costs)
    # a budget set for a cost not known here is not a budget met: unknown (None), unless another is broken
    unknown = [f for f, (cost, _) in LIMITS.items() if getattr(ctx.cost.budgets, f) is not None and costs[cost] is None]
    fits = False if bad else None if unknown else True
    return {**{k: costs[k] for k in ("latency_ms", "latency_kind", "macs", "params", "peak_activation_kib")},
            "fits": fits, "violations": bad, "unknown": unknown,
            "how": "edgeppt transfer --method tred (or ft, l2sp) fine-tunes C itself" if fits is not False else None}


def _free_port() -> int:
    """A port p with p + 1 free too: NNI's manager serves on p and its trials' command channel on p + 1."""
    import socket

    for _ in range(100):
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("", port + 1))
            return port
        except (OSError, OverflowError):  # taken, or port 65535 (no neighbour)
            continue
    raise EdgepptError("no two free neighbouring ports on this machine for NNI's manager")
