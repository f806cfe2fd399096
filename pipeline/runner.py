"""`run_pipeline`: the stages in order into one run directory, each cached by a hash of its inputs.

The run directory:
    pipeline.yaml     the config as given          state.json   per stage: input key, status, seconds, summary
    search/ transfer/ export/   one folder each    cache/       pseudo pre-training weights, reused across reruns
    report/           index.md with pictures       job.json     the background process, when started by pipeline.jobs
A stage whose key and status are unchanged is skipped; one interrupted with the same key resumes, and so does one
whose settings changed only where its config allows on resume (its RESUME_FREE, e.g. more search trials); one whose
inputs changed otherwise starts afresh: its old folder is set aside, removed when the new run succeeds and put
back when it fails, so a re-run with a bad input loses nothing; a re-run that was cancelled keeps it aside, and it is
put back when a later run asks for its inputs again (the settings changed and then changed back).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgeppt.errors import EdgepptError
from edgeppt.runs import atomic_write_json, atomic_write_text, resume_conflicts

from .config import STAGE_NAMES, PipelineConfig, dump_yaml
from .report import write_report
from .stages import STAGE_BY_NAME, bundle_fingerprint, data_fingerprint, input_key, search_config, transfer_config
from .state import CONFIG_FILE, LOCK_FILE, STATE_FILE, read_state

__all__ = ["CONFIG_FILE", "STATE_FILE", "is_locked", "preflight", "read_state", "run_lock", "run_pipeline"]
INTERRUPTED = ("running", "failed", "cancelled")


@contextmanager
def run_lock(run: Path) -> Iterator[None]:
    """One process per run directory: a second `edgeppt run` on it (a second browser tab) is refused."""
    run.mkdir(parents=True, exist_ok=True)
    f = open(run / LOCK_FILE, "a+")
    for attempt in range(10):  # a second: is_locked takes the lock for an instant to test it
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if attempt == 9:
                f.close()
                raise EdgepptError(f"{run} is being run by another process; wait for it or cancel it") from None
            time.sleep(0.1)
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def is_locked(run: Path) -> bool:
    if not (run / LOCK_FILE).exists():
        return False
    with open(run / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def run_pipeline(cfg: PipelineConfig, run: str | Path, until: str | None = None, force: tuple[str, ...] = (),
                 progress: bool = True, log: Callable[[str], None] = print, origin: Path | None = None
                 ) -> dict[str, Any]:
    """Run (or skip, or resume) each stage up to `until`; returns the state. `force` re-runs the named stages;
    `origin`, the config file the run was started from, is recorded (`edgeppt run` checks it: default_run_dir)."""
    run = Path(run)
    for name in (*force, *([until] if until else [])):
        if name not in STAGE_NAMES:
            raise EdgepptError(f"unknown stage {name!r}; choose one of {list(STAGE_NAMES)}")
        if name not in cfg.stages():  # (search, with search.enabled false): it would be passed over in silence
            raise EdgepptError(f"stage {name!r} is not in this run (its stages: {', '.join(cfg.stages())})")
    preflight(cfg)
    with run_lock(run):
        atomic_write_text(run / CONFIG_FILE, dump_yaml(cfg))
        state = read_state(run)
        state.update(pid=os.getpid(), status="running", started=time.time(), stage_order=cfg.stages())
        if origin is not None:
            state["origin"] = str(origin.resolve())
        state.pop("error", None)
        atomic_write_json(run / STATE_FILE, state)
        try:
            with _recorded(state, state, run):
                for i, name in enumerate(cfg.stages()):
                    try:
                        _run_stage(cfg, run, name, state, name in force, progress, log)
                    except BaseException:  # a stage that did not finish (and was not put back as it was): what
                        if state["stages"].get(name, {}).get("status") != "done":  # follows is of earlier outputs
                            _outdate(run, state, cfg.stages()[i + 1:])
                        raise
                    if name == until:
                        _mark_outdated(cfg, run, state, cfg.stages()[cfg.stages().index(name) + 1:])
                        break
        finally:
            _write_report(cfg, run, log)
    return state


@contextmanager
def _recorded(record: dict, state: dict, run: Path) -> Iterator[None]:
    """As the block ends, mark `record` (the run's or one stage's) done, cancelled or failed, add its time, and save
    the state file: the one place both levels record how they ended."""
    t0 = time.perf_counter()
    try:
        yield
        record["status"] = "done"
    except KeyboardInterrupt:
        record["status"] = "cancelled"
        raise
    except BaseException as e:
        record["status"], record["error"] = "failed", str(e) or type(e).__name__
        raise
    finally:
        record["finished"] = time.time()
        record["seconds"] = record.pop("seconds_before", 0.0) + time.perf_counter() - t0
        atomic_write_json(run / STATE_FILE, state)


def preflight(cfg: PipelineConfig) -> None:
    """Fail in a second, before any run directory is made, on inputs that cannot be read, and on stage settings
    that their stage would refuse (its rules across fields, e.g. engine remote needs workers)."""
    bundle_fingerprint(cfg.source)
    data_fingerprint(cfg.target)
    data_fingerprint(cfg.test)
    if cfg.search.enabled:
        search_config(cfg, Path("search"))
    transfer = transfer_config(cfg, Path("."))
    from edgeppt.transfer.methods import check_inputs

    check_inputs(transfer, source="source", unlabeled="transfer.unlabeled")  # not after the search's minutes
    if cfg.transfer.unlabeled and cfg.transfer.unlabeled != "rest":
        data_fingerprint(cfg.transfer.unlabeled)
    if cfg.export.sign is not None:  # the key, and its .pub beside it, before any stage
        from edgeppt.signing import load_private_key, public_key_beside

        load_private_key(cfg.export.sign)
        public_key_beside(cfg.export.sign)


def _keys(cfg: PipelineConfig, run: Path, name: str) -> tuple[str, str, dict[str, Any]]:
    """(key, others, settings) of a stage's inputs now: its own section's settings, and the rest (data, device,
    earlier stages' outputs)."""
    inputs = STAGE_BY_NAME[name].inputs(cfg, run)
    settings = inputs.pop(name, {})
    return input_key({**inputs, name: settings}), input_key(inputs), settings


def _mark_outdated(cfg: PipelineConfig, run: Path, state: dict, later: list[str]) -> None:
    """After --until: a later stage whose recorded result is of other inputs is `outdated`, so the report and the
    wizard do not show an earlier model's numbers as this run's (the next run without --until runs it)."""
    behind = False  # a stage after an outdated one is outdated too: its inputs are that stage's old outputs
    for name in later:
        entry = state["stages"].get(name)
        if entry and entry.get("status") == "done" and (behind or entry.get("key") != _keys(cfg, run, name)[0]):
            entry["status"] = "outdated"
        behind = behind or bool(entry and entry.get("status") == "outdated")
    atomic_write_json(run / STATE_FILE, state)


def _outdate(run: Path, state: dict, later: list[str]) -> None:
    """After a stage failed or was cancelled: the finished stages after it hold results of its earlier outputs (or
    of none), so the report and the wizard must not show them as this run's; a later run whose inputs are theirs
    again skips them and marks them done."""
    for name in later:
        entry = state["stages"].get(name)
        if entry and entry.get("status") == "done":
            entry["status"] = "outdated"
    atomic_write_json(run / STATE_FILE, state)


def _run_stage(cfg: PipelineConfig, run: Path, name: str, state: dict, force: bool, progress: bool,
               log: Callable[[str], None]) -> None:
    stage = STAGE_BY_NAME[name]
    folder = run / name
    key, others, settings = _keys(cfg, run, name)
    prev = state["stages"].get(name, {})
    same = prev.get("key") == key and not force
    finished = prev.get("status") in ("done", "outdated")  # outdated: finished, for inputs it may have again
    if same and finished and (folder / stage.output).exists():
        if prev.get("status") == "outdated":  # its inputs are back to those it was made of: current again
            prev["status"] = "done"
            atomic_write_json(run / STATE_FILE, state)
        log(f"{name}: unchanged inputs, skipped (cached result from {time.ctime(prev.get('finished', 0))})")
        return
    # Changed only in settings the stage allows to change on resume (the same rule the stage applies itself)
    free_change = (not force and "settings" in prev and prev.get("others") == others
                   and not resume_conflicts(prev["settings"], settings, stage.resume_free))
    interrupted = prev.get("status") in INTERRUPTED
    resume = folder.exists() and ((interrupted and (same or free_change)) or (free_change and not same and finished))
    replaced = run / f".{name}.replaced"  # outputs of other inputs, kept until this run of the stage succeeds
    aside = state.setdefault("replaced", {})  # the state entry of what lies in each .NAME.replaced
    back = aside.get(name) or {}
    if (not force and not resume and back.get("key") == key and back.get("status") in ("done", "outdated")
            and (replaced / stage.output).exists()):
        # a re-run with other inputs was cancelled or failed mid-way; these inputs are the set-aside outputs' own
        shutil.rmtree(folder, ignore_errors=True)
        replaced.rename(folder)
        state["stages"][name] = aside.pop(name)
        atomic_write_json(run / STATE_FILE, state)
        log(f"{name}: the earlier outputs of these inputs were put back (a later run of other inputs had stopped)")
        return
    set_aside = not resume and folder.exists()
    if set_aside and prev.get("status") not in ("done", "outdated") and (replaced / stage.output).exists():
        shutil.rmtree(folder)  # unfinished work of other inputs: the finished outputs set aside before it stay
        set_aside = False
    elif set_aside:
        shutil.rmtree(replaced, ignore_errors=True)
        folder.rename(replaced)
        aside[name] = prev
    log(f"{name}: {'resuming' if resume else 'running'}")
    entry = {"key": key, "others": others, "settings": settings, "status": "running", "started": time.time(),
             "resumed": resume, "seconds_before": prev.get("seconds", 0.0) if resume else 0.0}
    state["stages"][name] = entry
    atomic_write_json(run / STATE_FILE, state)
    ran = False
    try:
        with _recorded(entry, state, run):
            entry["summary"] = stage.run(cfg, run, resume, progress, log)
            ran = True
    except Exception:  # a failed re-run puts the earlier outputs back (an interrupted one stays, to resume); a
        if set_aside and not ran:  # finished one whose state could not be written (a full disk) keeps its outputs
            shutil.rmtree(folder, ignore_errors=True)
            replaced.rename(folder)
            state["stages"][name] = aside.pop(name, prev)
            atomic_write_json(run / STATE_FILE, state)
        raise
    shutil.rmtree(replaced, ignore_errors=True)
    aside.pop(name, None)
    atomic_write_json(run / STATE_FILE, state)
    log(f"{name}: done in {entry['seconds']:.1f}s")


def _write_report(cfg: PipelineConfig, run: Path, log: Callable[[str], None]) -> None:
    try:
        path = write_report(cfg, run)
        log(f"report: {path}")
    except Exception as e:  # a report problem must not hide the stage's own result or error
        log(f"report not written: {type(e).__name__}: {e}")
