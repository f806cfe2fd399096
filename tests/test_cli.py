import json
import os

import pytest
from typer.testing import CliRunner

from edgeppt.cli import app

runner = CliRunner()


def test_transfer_through_the_cli_then_resume_is_a_no_op(tiny_bundle, tmp_path):
    out = tmp_path / "run"
    args = ["transfer", "--source", str(tiny_bundle), "--target", "digits:0,1,2", "--method", "pp",
            "--arch", "resnet_xs", "--labels-per-class", "3", "--out", str(out), "--quiet",
            "--set", "pretrain_steps=5", "--set", "finetune_steps=10"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["labels_per_class"] == 3 and report["settings"]["method"] == "pp"
    assert "test accuracy" in res.output
    # --resume alone reuses the saved settings, and a finished run trains nothing again.
    before = {f: (out / f).read_bytes() for f in ("model.pt", "metrics.jsonl", "report.json")}
    res = runner.invoke(app, ["transfer", "--resume", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    after = {f: (out / f).read_bytes() for f in before}
    assert after["model.pt"] == before["model.pt"] and after["metrics.jsonl"] == before["metrics.jsonl"]
    a, b = (json.loads(r["report.json"]) for r in (after, before))
    for r in (a, b):  # what the resume itself took: its own time and memory
        del r["peak_rss_mib"], r["timings_s"]["total"]
    assert a == b


def test_resume_of_a_run_an_earlier_version_started_names_the_settings_it_lacked(tiny_bundle, tmp_path):
    """A run whose config.json lacks settings a later edgeppt added (one nested, one top-level) resumes with their
    values now, says which, and records them; a changed setting it does name is still refused."""
    out = tmp_path / "run"
    args = ["transfer", "--source", str(tiny_bundle), "--target", "digits:0,1,2", "--method", "scratch",
            "--arch", "resnet_xs", "--labels-per-class", "3", "--out", str(out), "--quiet",
            "--set", "finetune_steps=10"]
    assert runner.invoke(app, args).exit_code == 0
    saved = json.loads((out / "config.json").read_text())
    del saved["pssl"]["lp_reach_gap"], saved["max_unlabeled"]
    (out / "config.json").write_text(json.dumps(saved))
    res = runner.invoke(app, ["transfer", "--resume", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())  # as wrapped at any terminal width
    assert "started by an earlier edgeppt, without the settings max_unlabeled=10000, pssl.lp_reach_gap=8.0" in said
    report = json.loads((out / "report.json").read_text())
    assert report["added_on_resume"] == {"pssl.lp_reach_gap": 8.0, "max_unlabeled": 10000}
    assert json.loads((out / "config.json").read_text())["pssl"]["lp_reach_gap"] == 8.0  # named from now on
    res = runner.invoke(app, ["transfer", "--resume", str(out), "--quiet"])  # resumed again: still recorded
    assert res.exit_code == 0 and "earlier edgeppt" not in res.output
    assert json.loads((out / "report.json").read_text())["added_on_resume"] == report["added_on_resume"]
    res = runner.invoke(app, ["transfer", "--resume", str(out), "--quiet", "--set", "pssl.lp_reach=0.5"])
    assert res.exit_code == 2 and "pssl.lp_reach: run has 0.3, now 0.5" in " ".join(res.output.split())


def test_cli_errors_are_one_clear_line(tiny_bundle, tmp_path):
    res = runner.invoke(app, ["transfer", "--target", "digits", "--out", str(tmp_path / "a"),
                              "--set", "pssl.tempreature=2"])
    assert res.exit_code == 2 and "unknown field 'pssl.tempreature'" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["transfer", "--target", "digits", "--method", "pp+ssl", "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "method" in res.output
    res = runner.invoke(app, ["transfer", "--target", "no/such/dir", "--method", "scratch",
                              "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "not found" in res.output
    res = runner.invoke(app, ["transfer", "--resume", str(tmp_path / "none")])
    assert res.exit_code == 2 and "nothing to resume" in res.output


def test_yaml_config_with_a_typo_names_the_field(tmp_path):
    (tmp_path / "c.yaml").write_text("target: digits\nlabels_per_clas: 3\n")
    res = runner.invoke(app, ["transfer", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "labels_per_clas" in res.output and "labels_per_class" in res.output


def test_models_lists_the_registry():
    res = runner.invoke(app, ["models"], env={"COLUMNS": "200"})  # a name folded at 30 columns is not a name
    assert res.exit_code == 0 and "resnet_s" in res.output and "mobilenet_s" in res.output


def digit_folders(root, per_class: int = 15):
    """digits 0, 1 and 2 as a folder of class folders of 8x8 PNGs, plus one unreadable and one too-large file
    (over a limit the test lowers): returns those two."""
    from PIL import Image

    from edgeppt.data import load_dataset
    ds = load_dataset("digits:0,1,2")
    for c in range(3):
        (root / str(c)).mkdir(parents=True)
        for i, x in enumerate(ds.x[ds.y == c][:per_class]):
            Image.fromarray((x[0].numpy() * 255).astype("uint8"), "L").save(root / str(c) / f"{i}.png")
    bad, big = root / "1" / "broken.png", root / "2" / "big.png"
    bad.write_bytes(b"not a png")
    Image.new("L", (40, 40)).save(big)
    return bad, big


def test_unreadable_and_too_large_target_images_are_counted_and_named(tmp_path, monkeypatch):
    """A folder target with an unreadable and a too-large file: the run goes on, both are named in the output
    and the report."""
    import edgeppt.data

    monkeypatch.setattr(edgeppt.data, "MAX_IMAGE_PIXELS", 1000)  # 8x8 digits pass, the 40x40 image does not
    bad, big = digit_folders(tmp_path / "d")
    out = tmp_path / "run"
    res = runner.invoke(app, ["transfer", "--target", str(tmp_path / "d"), "--method", "scratch", "--arch",
                              "resnet_xs", "--labels-per-class", "3", "--out", str(out), "--quiet",
                              "--set", "finetune_steps=5"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # unwrapped, whatever the terminal width
    assert "skipped 2 image file(s): " in text
    assert "broken.png" in text and "big.png: image too large" in text
    skipped = json.loads((out / "report.json").read_text())["data"]["skipped_files"]
    assert len(skipped) == 2 and skipped[0].startswith(str(bad)) and skipped[1].startswith(f"{big}: image too large")


# A tiny source training: the bundle is written in seconds.
TINY_SOURCE = ["--gan-steps", "6", "--set", "latent_dim=8", "--set", "gen_channels=8", "--set", "disc_channels=8",
               "--set", "batch_size=16", "--set", "classifier_steps=4", "--set", "checkpoint_every=2",
               "--set", "hflip=false"]


def parsed_by_the_cli(line: str, monkeypatch):
    """The SourceTrainConfig the real `edgeppt` app makes of a printed command line (training replaced by a stub)."""
    import shlex

    import edgeppt.source.train

    seen = []

    def train_source(cfg, **kw):
        seen.append(cfg)
        return cfg.out

    monkeypatch.setattr(edgeppt.source.train, "train_source", train_source)
    words = shlex.split(line)
    assert words[:3] == ["edgeppt", "source", "train"]
    res = runner.invoke(app, words[1:])
    assert res.exit_code == 0, res.output
    return seen[0]


def test_source_train_names_skipped_images_and_its_reproduce_line_runs(tmp_path, monkeypatch):
    """Unreadable and too-large files in the class folders are named on the console and in the manifest; the
    README's "Reproduce with" line parses with the real command into the same settings."""
    import edgeppt.data

    monkeypatch.setattr(edgeppt.data, "MAX_IMAGE_PIXELS", 1000)  # 8x8 digits pass, the 40x40 image does not
    bad, big = digit_folders(tmp_path / "d", per_class=10)
    res = runner.invoke(app, ["source", "train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "b"),
                              *TINY_SOURCE])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # unwrapped, whatever the terminal width
    assert "skipped 2 image file(s): " in text
    assert "broken.png" in text and "big.png: image too large" in text
    info = json.loads((tmp_path / "b" / "manifest.json").read_text())["info"]
    assert info["skipped"]["count"] == 2 and info["skipped"]["files"][0].startswith(str(bad))
    assert info["skipped"]["files"][1].startswith(f"{big}: image too large")
    readme = (tmp_path / "b" / "README.md").read_text()
    assert "2 unreadable or too-large image file(s) skipped" in readme
    line = readme.split("Reproduce with:")[1].split("```")[1].strip()
    assert line == info["command"] and "--set" in line
    assert parsed_by_the_cli(line, monkeypatch).model_dump(mode="json") == info["config"]


def test_the_source_command_line_round_trips_every_kind_of_field(tmp_path, monkeypatch):
    from edgeppt.config import SourceTrainConfig
    from edgeppt.source.cli import command_line

    cfg = SourceTrainConfig(data=str(tmp_path / "my images"), out=tmp_path / "out dir", seed=3, gan_steps=7,
                            image_size=16, lr_g=1e-5, hflip=False, classifier_arch="resnet_s", ema_decay=0.5)
    line = command_line(cfg)
    assert "--seed 3" in line and "--gan-steps 7" in line and "--set hflip=false" in line
    assert parsed_by_the_cli(line, monkeypatch) == cfg


def commands(command, path: tuple[str, ...] = ()):
    """Every command of the `edgeppt` app, with its path of sub-command names."""
    subs = getattr(command, "commands", {})
    if not subs:
        yield path, command
    for name, sub in subs.items():
        yield from commands(sub, (*path, name))


def option_help(command, path: tuple[str, ...]) -> dict[str, tuple[object, str]]:
    """Each option's default and the text --help shows beside it (from the option itself: no terminal width)."""
    ctx = command.context_class(command, info_name=" ".join(path))
    return {p.name: (p.default, p.get_help_record(ctx)[1]) for p in command.params
            if p.param_type_name == "option" and p.name != "help"}


def test_help_shows_every_options_default():
    """An option with a default shows it; an option that stands for a config field (None until given, so a
    --config YAML still applies) shows the field's default."""
    import typer

    from edgeppt.config import PSSLConfig, SearchConfig, SourceTrainConfig, TransferConfig

    configs = {("source", "train"): SourceTrainConfig, ("search",): SearchConfig, ("transfer",): TransferConfig}
    fields = {"ssl": (PSSLConfig, "algorithm"), "peak_kib": (SearchConfig, "peak_activation_kib")}
    walked = dict(commands(typer.main.get_command(app)))
    assert {("source", "train"), ("search",), ("transfer",), ("export",), ("run",), ("app",)} <= set(walked)
    checked = 0
    for path, command in walked.items():
        for name, (default, text) in option_help(command, path).items():
            flag = next(p for p in command.params if p.name == name)
            if default not in (None, [], (), False) or (default is False and flag.secondary_opts):
                assert "default: " in text, (path, name, text)
                checked += 1
            elif default is None and path in configs:
                model, field = fields.get(name, (configs[path], name))
                info = model.model_fields.get(field)
                if info is not None and not info.is_required() and info.default is not None:
                    assert f"default: ({info.default})" in text, (path, name, text)
                    checked += 1
    assert checked > 40


@pytest.mark.parametrize("argv, message", [
    (["source", "pack"], "Missing option '--out'"),
    (["transfer", "--labels-per-class", "abc"], "Invalid value for '--labels-per-class'"),
    (["source", "inspect", "--per-class", "0", "x"], "Invalid value for '--per-class'"),
    (["nosuch"], "No such command 'nosuch'"),
])
def test_usage_errors_of_the_real_command_are_one_line(argv, message):
    """What click rejects before a command runs is one error line too, in a real process at a narrow width."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "edgeppt.cli", *argv], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "COLUMNS": "40"})
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_the_command_line_loads_no_heavy_library_until_a_command_runs():
    """`edgeppt --help` and usage errors answer in well under a second: assembling the commands imports neither
    torch nor onnxruntime, onnx, NNI or Streamlit (a stage's package loads its modules on first use)."""
    import subprocess
    import sys

    heavy = ("torch", "onnxruntime", "onnx", "nni", "streamlit", "numpy")
    code = f"import sys, edgeppt.cli; print([m for m in {heavy!r} if m in sys.modules])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
    import edgeppt.export as export_stage  # the names still resolve, on first use
    assert callable(export_stage.export_run) and "export_run" in export_stage.__all__
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        export_stage.nosuch  # noqa: B018


def test_unexpected_errors_are_one_line_with_the_traceback_in_a_file(monkeypatch, tmp_path, capsys):
    """What no stage turned into an EdgepptError: an OSError is its own message; anything else names the file that
    holds its traceback (and EDGEPPT_DEBUG=1 raises it)."""
    import edgeppt.cli as cli

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    monkeypatch.delenv("EDGEPPT_DEBUG", raising=False)
    for error, code, expected in ((PermissionError(13, "Permission denied", "/out/run"), 2,
                                   "error: [Errno 13] Permission denied: '/out/run'"),
                                  (RuntimeError("boom"), 1, "error: internal error, RuntimeError: boom")):
        class Command:
            def main(self, standalone_mode: bool, error: Exception = error):
                raise error
        monkeypatch.setattr(cli.typer.main, "get_command", lambda app: Command())
        with pytest.raises(SystemExit) as e:
            cli.main()
        err = capsys.readouterr().err
        assert e.value.code == code and expected in err and "Traceback" not in err
    logs = list(tmp_path.glob("edgeppt-error-*.log"))
    assert len(logs) == 1 and "RuntimeError: boom" in logs[0].read_text() and str(logs[0]) in err.replace("\n", "")
    monkeypatch.setenv("EDGEPPT_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        cli.main()


def test_trust_comes_from_the_command_line_only(tmp_path):
    """A run folder or a config can come with a bundle, from its sender: neither lets a .pt2 bundle's code load."""
    from edgeppt.cli_support import run_dir_and_settings
    from edgeppt.config import TransferConfig
    from edgeppt.pipeline.config import dump_yaml, parse_config

    saved = TransferConfig(target="digits", trust_code=True, trusted_keys=[tmp_path / "theirs.pub"])
    _, settings = run_dir_and_settings(lambda _: saved, None, tmp_path, {"trust_code": None, "trusted_keys": None},
                                       needs_target=True)
    assert settings["target"] == "digits" and "trust_code" not in settings and "trusted_keys" not in settings
    _, settings = run_dir_and_settings(lambda _: saved, None, tmp_path, {"trust_code": True}, needs_target=True)
    assert settings["trust_code"] is True
    cfg = parse_config({"source": "b", "target": "digits", "trust_code": True, "trusted_keys": ["k.pub"]})
    assert "trust" not in dump_yaml(cfg)  # the run's own pipeline.yaml: re-read without being refused
