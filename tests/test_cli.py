import json

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
    # --resume alone reuses the saved settings.
    res = runner.invoke(app, ["transfer", "--resume", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "report.json").read_text())["test_accuracy"] == report["test_accuracy"]


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
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0 and "resnet_s" in res.output and "mobilenet_s" in res.output


def test_corrupt_target_image_is_counted_and_named(tmp_path):
    """A folder target with one unreadable file: the run goes on, and the file is named in the output and report."""
    from PIL import Image

    from edgeppt.data import load_dataset
    ds = load_dataset("digits:0,1,2")
    for c in range(3):
        (tmp_path / "d" / str(c)).mkdir(parents=True)
        for i, x in enumerate(ds.x[ds.y == c][:15]):
            Image.fromarray((x[0].numpy() * 255).astype("uint8"), "L").save(tmp_path / "d" / str(c) / f"{i}.png")
    bad = tmp_path / "d" / "1" / "broken.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "run"
    res = runner.invoke(app, ["transfer", "--target", str(tmp_path / "d"), "--method", "scratch", "--arch",
                              "resnet_xs", "--labels-per-class", "3", "--out", str(out), "--quiet",
                              "--set", "finetune_steps=5"])
    assert res.exit_code == 0, res.output
    assert "skipped 1 unreadable image" in res.output and "broken.png" in res.output
    skipped = json.loads((out / "report.json").read_text())["data"]["skipped_files"]
    assert len(skipped) == 1 and skipped[0].startswith(str(bad))
