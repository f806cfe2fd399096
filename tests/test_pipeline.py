"""pipeline/: config errors, per-stage caching by inputs, resume after a crash, background jobs, the report, the CLI."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from edgeppt.cli import app
from edgeppt.errors import EdgepptError
from edgeppt.pipeline import jobs
from edgeppt.pipeline.config import load_config, parse_config
from edgeppt.pipeline.runner import read_state, run_pipeline

TARGET = "digits:0,1,2,3,4"


def raw_config(bundle, **sections) -> dict:
    raw: dict[str, Any] = {
        "source": str(bundle), "target": TARGET, "labels_per_class": 4, "device": "x86-cpu", "threads": 1,
        "search": {"enabled": False},
        "transfer": {"arch": "resnet_xs", "method": "pp+pssl", "pretrain_steps": 10, "finetune_steps": 12,
                     "pretrain_batch": 16, "batch_size": 8, "eval_every": 6, "checkpoint_every": 3,
                     "pssl": {"pool_size": 32, "steps": 6}},
        "export": {"formats": ["onnx", "int8"], "bench_runs": 3, "calibration_size": 16}}
    for name, values in sections.items():
        raw[name] = {**raw[name], **values} if isinstance(values, dict) else values
    return raw


def quiet(*_):
    pass


# ---------------------------------------------------------------- config
def test_a_typo_or_wrong_type_names_the_field_and_the_allowed_values(tiny_bundle, tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw_config(tiny_bundle, transfer={"finetune_step": 5})))
    with pytest.raises(EdgepptError) as e:
        load_config(path)
    msg = str(e.value)
    assert "unknown field 'transfer.finetune_step'" in msg and "'finetune_steps'" in msg and str(path) in msg

    with pytest.raises(EdgepptError,
                       match=r"transfer\.method: Input should be 'auto', 'scratch', 'kd', 'pp', 'pp\+kd', 'pssl', "
                             r"'pp\+pssl', 'ssl', 'pp\+ssl', 'ft', 'l2sp' or 'tred'"):
        parse_config(raw_config(tiny_bundle, transfer={"method": "ppssl"}))
    with pytest.raises(EdgepptError, match=r"unknown field 'exprt'; allowed: \[.*'export'.*\]"):
        parse_config({**raw_config(tiny_bundle), "exprt": {}})
    with pytest.raises(EdgepptError, match=r"export\.formats\.0: Input should be 'onnx', 'int8', 'fp16' or 'tensorrt'"):
        parse_config(raw_config(tiny_bundle, export={"formats": ["onxx"]}))
    with pytest.raises(EdgepptError, match=r"unknown device 'jetsn'; choose one of \[.*'jetson'.*\]"):
        parse_config({**raw_config(tiny_bundle), "device": "jetsn"})
    with pytest.raises(EdgepptError, match=r"labels_per_class: Input should be greater than or equal to 1"):
        parse_config({**raw_config(tiny_bundle), "labels_per_class": 0})


def test_cli_reports_a_config_error_in_one_line(tiny_bundle, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw_config(tiny_bundle, export={"bench_run": 1})))
    res = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2
    assert "unknown field 'export.bench_run'" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run" / "state.json").exists()

    path.write_text(yaml.safe_dump({**raw_config(tiny_bundle), "source": str(tmp_path / "missing")}))
    res = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "run")])
    one_line = " ".join(res.output.split())  # rich wraps long paths at the terminal width
    assert res.exit_code == 2 and "not a source bundle" in one_line and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()  # refused before anything was written


# ---------------------------------------------------------------- caching
@pytest.fixture
def calls(monkeypatch):
    """Count how often each stage really runs (the stages themselves run unchanged)."""
    from edgeppt.pipeline import stages

    counts: dict[str, int] = {}
    for s in stages.STAGES:
        def counted(*a, _run=s.run, _name=s.name, **k):
            counts[_name] = counts.get(_name, 0) + 1
            return _run(*a, **k)
        monkeypatch.setitem(stages.STAGE_BY_NAME, s.name, stages.Stage(s.name, s.inputs, counted, s.output))
    return counts


def test_rerun_skips_unchanged_stages_and_reruns_what_changed(tiny_bundle, tmp_path, calls):
    run = tmp_path / "run"
    cfg = parse_config(raw_config(tiny_bundle))
    lines: list[str] = []
    state = run_pipeline(cfg, run, progress=False, log=lines.append)
    assert calls == {"transfer": 1, "export": 1}
    assert [state["stages"][s]["status"] for s in ("transfer", "export")] == ["done", "done"]
    assert not [line for line in lines if "warning" in line], lines  # (the export was told of an unused --source)
    model_mtime = (run / "transfer" / "model.pt").stat().st_mtime_ns

    run_pipeline(cfg, run, progress=False, log=quiet)  # nothing changed: nothing runs
    assert calls == {"transfer": 1, "export": 1}
    logs = parse_config(raw_config(tiny_bundle, transfer={"eval_every": 5, "checkpoint_every": 4}))
    run_pipeline(logs, run, progress=False, log=quiet)  # how often transfer logs and saves: the same weights
    assert calls == {"transfer": 1, "export": 1}
    assert (run / "transfer" / "model.pt").stat().st_mtime_ns == model_mtime

    run_pipeline(parse_config(raw_config(tiny_bundle, export={"bench_runs": 4})), run, progress=False, log=quiet)
    assert calls == {"transfer": 1, "export": 2}  # only export's inputs changed

    run_pipeline(parse_config(raw_config(tiny_bundle, transfer={"finetune_steps": 9})), run, progress=False, log=quiet)
    assert calls == {"transfer": 2, "export": 3}  # a new model: export runs again on it
    assert json.loads((run / "transfer" / "config.json").read_text())["finetune_steps"] == 9
    assert read_state(run)["stages"]["transfer"]["resumed"] is False

    run_pipeline(parse_config(raw_config(tiny_bundle, transfer={"finetune_steps": 9})), run, force=("export",),
                 progress=False, log=quiet)
    assert calls == {"transfer": 2, "export": 4}

    # The report has every picture and table the stages produced.
    md = (run / "report" / "index.md").read_text()
    for picture in ("source_samples.png", "target_samples.png", "curves.png", "confusion.png"):
        assert f"]({picture})" in md and (run / "report" / picture).stat().st_size > 1000
    assert "| int8 | int8 |" in md and "Test accuracy" in md
    assert (run / "export" / "bundle.zip").stat().st_size > 1000


def test_a_cancelled_rerun_keeps_the_earlier_outputs_and_changing_back_puts_them_back(tiny_bundle, tmp_path, calls,
                                                                                      monkeypatch):
    """Settings changed, the re-run cancelled mid-stage, the settings changed back: the first run's outputs return
    without training again (they were set aside, not lost), and the export of them stays valid."""
    from edgeppt.pipeline import stages

    run = tmp_path / "run"
    cfg = parse_config(raw_config(tiny_bundle))
    run_pipeline(cfg, run, progress=False, log=quiet)
    model = (run / "transfer" / "model.pt").read_bytes()
    counted = stages.STAGE_BY_NAME["transfer"]

    def cancelled(cfg, run, resume, progress, log):
        (run / "transfer").mkdir(parents=True, exist_ok=True)
        (run / "transfer" / "partial").write_text("work of other inputs")
        raise KeyboardInterrupt

    monkeypatch.setitem(stages.STAGE_BY_NAME, "transfer", stages.Stage("transfer", counted.inputs, cancelled,
                                                                       counted.output))
    other = parse_config(raw_config(tiny_bundle, transfer={"finetune_steps": 9}))
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(other, run, progress=False, log=quiet)
    assert read_state(run)["stages"]["transfer"]["status"] == "cancelled"
    assert read_state(run)["stages"]["export"]["status"] == "outdated"  # the export of the set-aside model
    assert (run / ".transfer.replaced" / "model.pt").read_bytes() == model
    with pytest.raises(KeyboardInterrupt):  # cancelled twice: the finished outputs stay aside, the partial goes
        run_pipeline(parse_config(raw_config(tiny_bundle, transfer={"finetune_steps": 7})), run, progress=False,
                     log=quiet)
    assert (run / ".transfer.replaced" / "model.pt").read_bytes() == model

    monkeypatch.setitem(stages.STAGE_BY_NAME, "transfer", counted)
    lines: list[str] = []
    state = run_pipeline(cfg, run, progress=False, log=lines.append)
    assert calls == {"transfer": 1, "export": 1}  # neither trained nor exported again
    assert (run / "transfer" / "model.pt").read_bytes() == model and not (run / "transfer" / "partial").exists()
    assert not (run / ".transfer.replaced").exists() and state["stages"]["transfer"]["status"] == "done"
    assert any("put back" in line for line in lines) and "transfer" not in read_state(run)["replaced"]
    assert state["stages"]["export"]["status"] == "done"  # of the model put back: current again
    run_pipeline(other, run, progress=False, log=quiet)  # and the other settings still run as any change does
    assert calls == {"transfer": 2, "export": 2} and not (run / ".transfer.replaced").exists()


def test_the_search_costs_at_the_side_transfer_names(tiny_bundle, tmp_path):
    """transfer.image_size alone: the search ranks and costs candidates at that side too, and a change of it re-runs
    the search; a side of the search's own that differs from transfer's is refused (the budgets would not hold for
    what ships)."""
    from edgeppt.pipeline.stages import _search_inputs, search_config

    cfg = parse_config(raw_config(tiny_bundle, search={"enabled": True}, transfer={"image_size": 16}))
    assert search_config(cfg, tmp_path).image_size == 16
    other = parse_config(raw_config(tiny_bundle, search={"enabled": True}, transfer={"image_size": 24}))
    assert _search_inputs(cfg, tmp_path) != _search_inputs(other, tmp_path)
    own = parse_config(raw_config(tiny_bundle, search={"enabled": True, "image_size": 12}))
    assert search_config(own, tmp_path).image_size == 12
    with pytest.raises(EdgepptError, match="search.image_size 12 and transfer.image_size 16 differ"):
        parse_config(raw_config(tiny_bundle, search={"enabled": True, "image_size": 12}, transfer={"image_size": 16}))


def test_the_report_previews_a_folder_of_mixed_sizes(tiny_bundle, tmp_path):
    """Photos of mixed sizes train at one side; the report's preview of them is drawn the same way (it
    was not written at all)."""
    from PIL import Image

    from edgeppt.pipeline.report import write_report

    for c in ("a", "b"):
        (tmp_path / "t" / c).mkdir(parents=True)
        for i, size in enumerate((20, 24, 30)):
            Image.new("L", (size, size), 40 * i).save(tmp_path / "t" / c / f"{i}.png")
    cfg = parse_config({**raw_config(tiny_bundle), "target": str(tmp_path / "t")})
    (tmp_path / "run").mkdir()
    write_report(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "report" / "target_samples.png").stat().st_size > 100


def test_until_stops_after_a_stage_and_a_later_run_continues(tiny_bundle, tmp_path, calls):
    run = tmp_path / "run"
    cfg = parse_config(raw_config(tiny_bundle))
    run_pipeline(cfg, run, until="transfer", progress=False, log=quiet)
    assert calls == {"transfer": 1} and not (run / "export").exists()
    run_pipeline(cfg, run, progress=False, log=quiet)
    assert calls == {"transfer": 1, "export": 1}
    with pytest.raises(EdgepptError, match="unknown stage 'trasnfer'"):
        run_pipeline(cfg, run, until="trasnfer", log=quiet)
    with pytest.raises(EdgepptError, match="stage 'search' is not in this run"):  # search is off here
        run_pipeline(cfg, run, until="search", log=quiet)
    # Other transfer settings, --until transfer: the export of the earlier model is outdated, not this run's
    changed = parse_config(raw_config(tiny_bundle, transfer={"finetune_steps": 9}))
    state = run_pipeline(changed, run, until="transfer", progress=False, log=quiet)
    assert calls == {"transfer": 2, "export": 1} and state["stages"]["export"]["status"] == "outdated"
    md = (run / "report" / "index.md").read_text()
    assert "Not shown: export" in md and "## Export" not in md and "## Transfer" in md
    run_pipeline(changed, run, progress=False, log=quiet)  # and the next whole run brings it up to date
    assert calls == {"transfer": 2, "export": 2} and read_state(run)["stages"]["export"]["status"] == "done"


def test_an_architecture_file_is_keyed_by_its_contents_and_a_methods_unlabelled_images_are_checked_first(
        tiny_bundle, tmp_path, calls):
    from edgeppt.models import arch_spec

    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(arch_spec("resnet_xs")))
    cfg = parse_config(raw_config(tiny_bundle, transfer={"arch": str(arch)}, export={"formats": ["onnx"]}))
    run_pipeline(cfg, tmp_path / "run", progress=False, log=quiet)
    run_pipeline(cfg, tmp_path / "run", progress=False, log=quiet)
    assert calls == {"transfer": 1, "export": 1}
    spec = arch_spec("resnet_xs")
    spec["config"]["widths"] = [8, 16, 32]
    arch.write_text(json.dumps(spec))  # the same path, another network
    run_pipeline(cfg, tmp_path / "run", progress=False, log=quiet)
    assert calls == {"transfer": 2, "export": 2}
    ssl = parse_config(raw_config(tiny_bundle, transfer={"method": "pp+ssl"}))
    with pytest.raises(EdgepptError, match="method 'pp\\+ssl' trains on unlabelled target images: give "
                                           "transfer.unlabeled"):
        run_pipeline(ssl, tmp_path / "ssl", log=quiet)
    assert not (tmp_path / "ssl").exists()  # refused before a run directory is made
    for raw, why in ((raw_config(tiny_bundle, transfer={"method": "pp+ssl", "unlabeled": str(tmp_path / "nope")}),
                      "nope"),
                     (raw_config(tiny_bundle, export={"sign": str(tmp_path / "nokey.key")}), "nokey.key")):
        with pytest.raises(EdgepptError, match=why):  # a typo in either: before the stages' minutes, not after
            run_pipeline(parse_config(raw), tmp_path / "typo", log=quiet)
        assert not (tmp_path / "typo").exists()


def test_a_runs_own_pipeline_yaml_runs_in_its_folder_again(tmp_path):
    from edgeppt.pipeline.cli import default_run_dir

    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "pipeline.yaml").write_text("")
    assert default_run_dir(tmp_path / "demo" / "pipeline.yaml") == Path("runs") / "pipeline"  # not a run yet
    (tmp_path / "demo" / "state.json").write_text("{}")
    assert default_run_dir(tmp_path / "demo" / "pipeline.yaml") == tmp_path / "demo"
    assert default_run_dir(tmp_path / "mine.yaml") == Path("runs") / "mine"


# ---------------------------------------------------------------- resume
def test_an_interrupted_stage_resumes_from_its_checkpoint(tiny_bundle, tmp_path, monkeypatch):
    from edgeppt.train.loop import Trainer

    run = tmp_path / "run"
    cfg = parse_config(raw_config(tiny_bundle))
    save = Trainer._save

    def save_then_interrupt(self, phase, step, opt, ema, raw=None):  # Ctrl-C after the target phase's step 6
        save(self, phase, step, opt, ema, raw)
        if self.phases[phase].name != "pretrain" and step == 6:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, run, progress=False, log=quiet)
    state = read_state(run)
    assert state["status"] == "cancelled" and state["stages"]["transfer"]["status"] == "cancelled"
    monkeypatch.setattr(Trainer, "_save", save)

    state = run_pipeline(cfg, run, progress=False, log=quiet)
    assert state["stages"]["transfer"]["resumed"] is True and state["status"] == "done"
    steps = [r["global_step"] for r in map(json.loads, (run / "transfer" / "metrics.jsonl").read_text().splitlines())]
    assert steps == list(range(1, 12 + 6 + 1))  # steps 1-6 kept, the rest run once: not started over

    fresh = run_pipeline(cfg, tmp_path / "fresh", progress=False, log=quiet)
    accuracy = [s["stages"]["transfer"]["summary"]["test_accuracy"] for s in (fresh, state)]
    assert accuracy[0] == accuracy[1]  # resumed = uninterrupted, to the weights
    weights = [torch.load(r / "transfer" / "model.pt", weights_only=True)["state_dict"]
               for r in (tmp_path / "fresh", run)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def wait(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_background_job_killed_mid_stage_resumes_and_can_be_cancelled(tiny_bundle, tmp_path):
    run = tmp_path / "run"
    cfg = parse_config(raw_config(tiny_bundle, transfer={"finetune_steps": 400, "checkpoint_every": 2}))
    job = jobs.start_job(run, cfg)
    assert jobs.is_running(run)
    with pytest.raises(EdgepptError, match="already running"):
        jobs.start_job(run, cfg)  # a second tab cannot start a second job on the same run
    wait(lambda: (run / "transfer" / "checkpoint.pt").exists(), 120, "a transfer checkpoint")
    os.killpg(job["pid"], signal.SIGKILL)  # a crash: no chance to record anything
    wait(lambda: not jobs.is_running(run), 20, "the job to die")
    status = jobs.job_status(run)
    assert status["status"] == "interrupted" and status["stages"]["transfer"]["status"] == "running"

    jobs.start_job(run)  # the same config: transfer resumes
    wait(lambda: read_state(run)["stages"]["transfer"].get("resumed") and
         len((run / "transfer" / "metrics.jsonl").read_text().splitlines()) > 0, 120, "the resumed transfer")
    assert jobs.cancel_job(run)
    status = jobs.job_status(run)
    assert status["status"] == "cancelled" and not status["running"]
    assert status["stages"]["transfer"]["status"] == "cancelled"
    assert any("checkpoint" in line for line in status["log"])  # the CLI said how to continue
    assert [r["name"] for r in jobs.list_runs(tmp_path)] == ["run"]


def test_a_job_that_stops_before_its_first_stage_is_failed_with_the_reason(tiny_bundle, tmp_path):
    """A config the pipeline refuses in its first second (here: target images that are gone) leaves no state
    behind: the job is shown failed, with the error line its log holds, not as new or running."""
    run = tmp_path / "run"
    images = tmp_path / "gone"
    images.mkdir()
    cfg = parse_config(raw_config(tiny_bundle))
    jobs.write_config(run, cfg)
    text = (run / "pipeline.yaml").read_text().replace(TARGET, str(images / "nothing-here"))
    (run / "pipeline.yaml").write_text(text)
    jobs.start_job(run)
    wait(lambda: not jobs.is_running(run), 60, "the job to stop")
    status = jobs.job_status(run)
    assert status["status"] == "failed" and "not found" in status["error"], status


def test_a_jobs_pid_given_to_another_process_is_not_that_job(tmp_path):
    from edgeppt.pipeline.jobs import _job_alive, _started

    me = {"pid": os.getpid(), "start": _started(os.getpid())}
    assert _job_alive(me) and not _job_alive({**me, "start": "1"})  # the same pid, started at another time


def test_demo_writes_the_example_config(tmp_path, monkeypatch):
    """`edgeppt demo` runs the built-in example; here only through `--until`-free tiny budget's config writing."""
    from edgeppt.pipeline.example import example_config

    cfg = example_config("tiny")
    assert cfg.target == "animals:elephant,giraffe,horse,sheep,zebra" and cfg.device == "x86-cpu"
    assert (cfg.source / "manifest.json").is_file()
    with pytest.raises(EdgepptError, match="unknown budget 'huge'"):
        example_config("huge")
    path = jobs.write_config(tmp_path / "demo", example_config("demo"))
    assert load_config(path) == example_config("demo")  # the written YAML reads back to the same config


def test_the_search_fits_its_augmentation_with_the_rules_transfer_will_use(tiny_bundle, tmp_path):
    """The search's proxy gets transfer's auto rules where transfer runs auto, none otherwise; they key the stage."""
    from edgeppt.pipeline.stages import _search_inputs, search_config

    auto = parse_config(raw_config(tiny_bundle, transfer={"method": "auto", "auto": {"mirror_share": 0.9}}))
    named = parse_config(raw_config(tiny_bundle, transfer={"method": "pp"}))
    assert search_config(auto, tmp_path).auto.mirror_share == 0.9
    rules = search_config(named, tmp_path).auto
    assert rules.mirror_share == rules.pose_score == rules.gain_spread == 0
    assert _search_inputs(auto, tmp_path) != _search_inputs(named, tmp_path)
    margin = parse_config(raw_config(tiny_bundle, transfer={"method": "auto", "auto": {"mirror_share": 0.9,
                                                                                        "pp_margin": 0.2}}))
    assert _search_inputs(margin, tmp_path) == _search_inputs(auto, tmp_path)  # a setting the proxy does not read
    with pytest.raises(EdgepptError, match="unknown field 'search.auto'"):  # set by transfer's, never on its own
        parse_config(raw_config(tiny_bundle, search={"auto": {"mirror_share": 0}}))


def test_transfer_trains_at_the_side_the_search_costed_and_the_device_receives(tiny_bundle, tmp_path):
    """A device profile's input_size (or the search's image_size) is the side transfer trains and export ships."""
    from edgeppt.pipeline.stages import _transfer_inputs, transfer_config

    board = tmp_path / "board.yaml"
    board.write_text("name: board\nruntime: onnxruntime-cpu\nlatency: measured\ninput_size: 12\n")
    plain = parse_config(raw_config(tiny_bundle))
    on_board = parse_config(raw_config(tiny_bundle, device=str(board)))
    assert transfer_config(plain, tmp_path).image_size is None  # the target's own side, by load_target's rule
    assert transfer_config(on_board, tmp_path).image_size == 12
    assert _transfer_inputs(on_board, tmp_path) != _transfer_inputs(plain, tmp_path)
    searched = parse_config(raw_config(tiny_bundle, search={"enabled": True, "image_size": 16}))
    assert transfer_config(searched, tmp_path).image_size == 16
    own = parse_config(raw_config(tiny_bundle, device=str(board), transfer={"image_size": 10}))
    assert transfer_config(own, tmp_path).image_size == 10  # set for transfer itself: kept


def test_transfer_torch_device_is_its_own_setting(tiny_bundle, tmp_path):
    """The top level's `device` is the device profile; `transfer.torch_device` says where transfer trains, and, like
    threads, does not make a finished transfer stale."""
    from edgeppt.pipeline.stages import _transfer_inputs, transfer_config

    plain = parse_config(raw_config(tiny_bundle))
    on_cpu = parse_config(raw_config(tiny_bundle, transfer={"torch_device": "cpu"}))
    assert (transfer_config(plain, tmp_path).device, transfer_config(on_cpu, tmp_path).device) == ("auto", "cpu")
    assert _transfer_inputs(on_cpu, tmp_path) == _transfer_inputs(plain, tmp_path)
    with pytest.raises(EdgepptError, match="device"):  # the profile's name: not settable per stage
        parse_config(raw_config(tiny_bundle, transfer={"device": "cpu"}))
    with pytest.raises(EdgepptError, match="torch_device"):
        parse_config(raw_config(tiny_bundle, transfer={"torch_device": "tpu"}))


def test_search_feeds_its_architecture_to_transfer(tiny_bundle, tmp_path, calls):
    """The search stage plugs in as one row of the table: transfer trains its best.json and is cached by its hash."""
    run = tmp_path / "run"
    search = {"enabled": True, "trials": 1, "val_per_class": 5, "latency_warmup": 1, "latency_repeats": 3,
              "proxy": {"pretrain_steps": 2, "finetune_steps": 2, "pretrain_pool": 16, "pretrain_batch": 8,
                        "batch_size": 8},
              "space": {"stems": [8], "head_widths": [0], "stages": [{"stride": 1, "widths": [8], "depths": [1]},
                                                                    {"stride": 2, "widths": [16], "depths": [1]}]}}
    cfg = parse_config(raw_config(tiny_bundle, search=search))
    state = run_pipeline(cfg, run, until="transfer", progress=False, log=quiet)
    assert calls == {"search": 1, "transfer": 1}
    best = json.loads((run / "search" / "best.json").read_text())
    trained = json.loads((run / "transfer" / "report.json").read_text())["model"]["arch"]
    assert trained == {"family": best["family"], "config": best["config"]}
    summary = state["stages"]["search"]["summary"]
    assert summary["trained"] == 2 and summary["reference"] is not None  # one trial and the hand-designed reference
    run_pipeline(cfg, run, until="transfer", progress=False, log=quiet)
    assert calls == {"search": 1, "transfer": 1}
    assert "![Pareto front](pareto.png)" in (run / "report" / "index.md").read_text()


# ---------------------------------------------------------------- Docker images (no Docker engine here: lint + checks)
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_pass_hadolint_and_match_the_project(dockerfile):
    import re
    import shutil
    import subprocess

    import tomllib

    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is missing: it comes with the test extra (pip install -e '.[test]')"
    res = subprocess.run([hadolint, "--no-color", str(ROOT / dockerfile)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr

    text = (ROOT / dockerfile).read_text()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(d for d in deps if d.startswith("torch=="))
    assert f" {torch_pin}" in text  # the image installs the very torch the project pins
    for src in re.findall(r"^COPY (\S+) ", text, re.M):
        if src not in ("pyproject.toml",):
            assert (ROOT / src).exists(), f"{dockerfile} copies {src}, which is not in the repository"
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for pkg in setup["packages"]:  # each package's folder (edgeppt.search -> search/) must be in the image
        folder = setup.get("package-dir", {}).get(pkg, pkg.replace(".", "/")).split("/")[0]
        assert f"COPY {folder} " in text, f"{dockerfile} misses {folder}/ (package {pkg})"
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert re.search(r'^CMD \["edgeppt", "app"', text, re.M)  # the wizard by default
    assert "animal-mnist" in text and "--no-deps" in text


def test_dockerignore_keeps_runs_vcs_and_keys_out_of_the_build_context():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", "runs", "dist", "**/__pycache__", "keys", "**/keys", "**/*.key", "**/*.pem", "**/.env"):
        assert entry in ignored
    for needed in ("edgeppt", "pipeline", "app", "bundles"):
        assert needed not in ignored
    # the shipped bundles' public keys are let back in after **/keys (the last matching line wins), private
    # keys stay out through **/*.key
    assert ignored.index("!edgeppt/keys") > ignored.index("**/keys")
    assert not list((ROOT / "edgeppt" / "keys").glob("*.key"))


def test_the_wizard_port_is_published_on_localhost_only_everywhere_it_is_shown():
    """The wizard has no authentication: every `docker run -p` the project shows binds the host's 127.0.0.1."""
    import re

    pages = [ROOT / "Dockerfile", ROOT / "Dockerfile.gpu", ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    published = [(p.name, m) for p in pages for m in re.findall(r"-p\s+(\S+:8501)\b", p.read_text())]
    assert len(published) >= 4
    assert all(m == "127.0.0.1:8501:8501" for _, m in published), published
    assert "no authentication" in (ROOT / "docs" / "pipeline.md").read_text()


def test_the_run_table_shows_whole_result_items_one_per_line():
    """Each stage's result items stay whole at any width: nested records are left to the report, floats are short."""
    import io

    from rich.console import Console

    from edgeppt.pipeline.cli import run_table
    from edgeppt.pipeline.report import summary_items

    search = {"device": "x86-cpu", "strategy": "evolution", "budgets": {"latency_ms": 2.0}, "trained": 4,
              "best": {"arch": {}}, "train_s_total": 47.4312, "files": {"best.json": "x"}}
    export = {"formats": ["onnx", "int8"], "default_format": "int8", "results": [{"format": "onnx"}]}
    assert summary_items(search) == ["device=x86-cpu", "strategy=evolution", "trained=4", "train_s_total=47.43"]
    assert summary_items(export) == ["formats=onnx,int8", "default_format=int8"] and summary_items(None) == []
    state = {"stages": {"search": {"status": "done", "seconds": 50.0, "summary": search},
                        "export": {"status": "done", "seconds": 3.0, "summary": export}}}
    out = io.StringIO()
    Console(file=out, width=60).print(run_table(state, "run r"))  # a narrow terminal, set here
    lines = out.getvalue().splitlines()
    for item in summary_items(search) + summary_items(export):
        assert any(item in line for line in lines), (item, out.getvalue())


def test_a_hand_edited_state_file_reads_as_a_fresh_one(tmp_path):
    """state.json is written atomically, but a hand edit can leave valid JSON of another shape: it reads as no
    stages run yet (every stage then checks its own folder), never as an error deep in the runner."""
    from edgeppt.pipeline.state import STATE_FILE, read_state

    for text in ("[]", "{}", '{"stages": []}', "\xff", "{oops"):
        (tmp_path / STATE_FILE).write_text(text, encoding="latin-1")
        assert read_state(tmp_path) == {"stages": {}}
    (tmp_path / STATE_FILE).write_text('{"stages": {"search": {"status": "done"}}, "pid": 1}')
    assert read_state(tmp_path)["stages"] == {"search": {"status": "done"}}


def test_every_stage_that_reads_the_source_bundle_reruns_when_it_changes(tiny_bundle, tmp_path):
    """The search's proxy pre-trains on the bundle's samples and the export calibrates INT8 on them: another
    bundle (or one replaced under the same path) is a changed input of search, transfer and export alike."""
    import shutil

    from edgeppt.pipeline.stages import STAGES

    other = Path(shutil.copytree(tiny_bundle, tmp_path / "other"))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["files"] = {name: "0" * 64 for name in manifest["files"]}  # as if its graphs were others
    (other / "manifest.json").write_text(json.dumps(manifest))
    run = tmp_path / "run"
    cfgs = [parse_config(raw_config(b, search={"enabled": True})) for b in (tiny_bundle, other)]
    for stage in STAGES:
        assert stage.inputs(cfgs[0], run) != stage.inputs(cfgs[1], run), stage.name


def test_the_curves_take_a_phase_loaded_from_the_cache_and_a_line_cut_short(tmp_path):
    """A phase reused from the cache logs its end with no loss; a live log may end in half a line. The report's
    curves (and the wizard's progress, which reads the same log) take both."""
    from edgeppt.pipeline.report import training_curves
    from edgeppt.runs import read_jsonl

    log = tmp_path / "transfer" / "metrics.jsonl"
    log.parent.mkdir()
    lines = [{"phase": "pp", "step": 40, "global_step": 40, "reused": "cache/pp.pt", "test_accuracy": 0.5}]
    lines += [{"phase": "ssl", "step": s, "global_step": 40 + s, "loss": 1.0 / s} for s in range(1, 30)]
    log.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"phase": "ssl", "st')
    assert read_jsonl(log) == lines
    fig = training_curves(tmp_path)
    ax_loss, ax_acc = fig.axes
    assert [line.get_label() for line in ax_loss.get_lines()] == ["ssl"]  # the reused phase has no loss to draw
    assert list(ax_loss.get_lines()[0].get_xdata()) == list(range(41, 70))  # after the reused phase's 40 steps
    assert [line.get_label() for line in ax_acc.get_lines()] == ["pp"]


def test_the_documented_pipeline_yaml_is_a_valid_config():
    """docs/pipeline.md's example is what `edgeppt run` accepts, field for field."""
    text = (ROOT / "docs" / "pipeline.md").read_text().split("## `pipeline.yaml`")[1]
    cfg = parse_config(yaml.safe_load(text.split("```yaml")[1].split("```")[0]))
    assert cfg.search.trials == 4 and cfg.transfer.pssl.steps == 100 and cfg.export.formats == ["onnx", "int8"]


def test_stage_keys_follow_unlabelled_images_and_the_signing_key_not_their_paths(tiny_bundle, tmp_path):
    """Images added to the unlabelled folder re-run transfer; another key in the same signing-key file re-runs
    export; the paths alone, unchanged, said neither."""
    from PIL import Image

    from edgeppt.pipeline.stages import _export_inputs, _transfer_inputs, input_key
    from edgeppt.signing import keygen

    pool = tmp_path / "pool"
    pool.mkdir()
    Image.new("L", (8, 8), 10).save(pool / "a.png")
    keygen(tmp_path / "keys" / "owner")
    cfg = parse_config(raw_config(tiny_bundle, transfer={"unlabeled": str(pool)},
                                  export={"sign": str(tmp_path / "keys" / "owner.key")}))
    before = input_key(_transfer_inputs(cfg, tmp_path / "run")), input_key(_export_inputs(cfg, tmp_path / "run"))
    Image.new("L", (8, 8), 200).save(pool / "b.png")
    for f in (tmp_path / "keys").iterdir():
        f.unlink()
    keygen(tmp_path / "keys" / "owner")
    after = input_key(_transfer_inputs(cfg, tmp_path / "run")), input_key(_export_inputs(cfg, tmp_path / "run"))
    assert before[0] != after[0] and before[1] != after[1]


def test_a_finished_rerun_whose_state_cannot_be_written_keeps_its_outputs(tiny_bundle, tmp_path, monkeypatch):
    """A re-run with other inputs that finished, then found the disk full when it recorded so, keeps what it made:
    only a stage that failed puts the earlier outputs back."""
    from edgeppt.pipeline import runner

    run = tmp_path / "run"
    run_pipeline(parse_config(raw_config(tiny_bundle)), run, until="transfer", progress=False, log=quiet)
    before = (run / "transfer" / "model.pt").read_bytes()
    real = runner.atomic_write_json

    def full_disk(path, obj):
        entry = obj.get("stages", {}).get("transfer", {})
        if entry.get("status") == "done" and entry.get("settings", {}).get("finetune_steps") == 9:
            raise OSError(28, "No space left on device")
        return real(path, obj)

    monkeypatch.setattr(runner, "atomic_write_json", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run_pipeline(parse_config(raw_config(tiny_bundle, transfer={"finetune_steps": 9})), run, until="transfer",
                     progress=False, log=quiet)
    assert (run / "transfer" / "model.pt").read_bytes() != before


def test_export_holds_the_default_to_the_budgets_the_search_held_the_network_to(tiny_bundle, tmp_path):
    """search.latency_ms overrides the profile's budget for the search: the export's check of its default artifact
    uses the same budget, and a change of it re-keys the export."""
    from edgeppt.devices import load_profile
    from edgeppt.pipeline.stages import _export_inputs, export_device

    plain = parse_config(raw_config(tiny_bundle))
    tight = parse_config(raw_config(tiny_bundle, search={"enabled": True, "latency_ms": 0.5}))
    assert export_device(plain, tmp_path).budgets == load_profile("x86-cpu").budgets
    assert export_device(tight, tmp_path).budgets.latency_ms == 0.5
    assert _export_inputs(tight, tmp_path)["budgets"]["latency_ms"] == 0.5 and "budgets" not in \
        _export_inputs(plain, tmp_path)


def test_two_configs_of_one_name_never_share_a_run_by_default(tmp_path, monkeypatch):
    """projA/p.yaml and projB/p.yaml both default to runs/p: the second is refused until --out names the folder,
    so its stages never replace the first run's outputs."""
    from edgeppt.pipeline.cli import default_run_dir

    monkeypatch.chdir(tmp_path)
    for p in ("a", "b"):
        (tmp_path / p).mkdir()
        (tmp_path / p / "p.yaml").write_text("")
    (tmp_path / "runs" / "p").mkdir(parents=True)
    (tmp_path / "runs" / "p" / "state.json").write_text(json.dumps({"origin": str(tmp_path / "a" / "p.yaml")}))
    assert default_run_dir(Path("a/p.yaml")) == Path("runs/p")
    with pytest.raises(EdgepptError, match=r"runs/p holds the run of .*/a/p.yaml; give --out runs/p"):
        default_run_dir(Path("b/p.yaml"))


def test_demo_never_rewrites_the_config_of_a_run_in_progress(tmp_path):
    """`edgeppt demo --out DIR` while another process runs DIR: refused by the run's lock before its pipeline.yaml
    is touched (the config used to be written first, so the running run's results sat under another config)."""
    import fcntl

    from edgeppt.pipeline.state import LOCK_FILE

    run = tmp_path / "demo"
    run.mkdir()
    (run / "pipeline.yaml").write_text("the running run's\n")
    with open(run / LOCK_FILE, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        r = CliRunner().invoke(app, ["demo", "--out", str(run), "--budget", "tiny", "--quiet"])
    assert r.exit_code == 2 and "being run by another process" in " ".join(r.output.split())
    assert (run / "pipeline.yaml").read_text() == "the running run's\n"


def test_the_confusion_figure_of_a_thousand_classes_stays_drawable(tmp_path):
    """Past 30 classes the figure keeps its size and drops the per-cell counts: at 1,000 it would otherwise be wider
    than matplotlib can draw (and hold a million text labels)."""
    import numpy as np

    from edgeppt.pipeline.report import CONFUSION_LABELLED, confusion_figure

    for k in (5, 1000):
        fig = confusion_figure({"confusion_matrix": np.eye(k, dtype=int).tolist(), "test_accuracy": 1.0,
                                "classes": [f"c{i}" for i in range(k)]})
        fig.savefig(tmp_path / f"{k}.png")
        width = fig.get_size_inches()[0]
        assert width == 1.2 + 0.6 * min(k, CONFUSION_LABELLED)
        assert (len(fig.axes[0].texts) == k * k) if k <= CONFUSION_LABELLED else not fig.axes[0].texts
