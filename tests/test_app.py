"""The wizard: upload checks, each step under Streamlit's AppTest, and the whole flow in headless Chromium."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeppt.app.uploads import UploadError, extract_bundle, extract_image_folders

ROOT = Path(__file__).resolve().parents[1]
WIZARD = str(ROOT / "app" / "wizard.py")
CHROMIUM = "/usr/bin/chromium"


# ---------------------------------------------------------------- uploads
def png_bytes(value: int = 128, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def make_zip(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def class_zip(prefix: str = "") -> bytes:
    return make_zip({f"{prefix}{c}/{i}.png": png_bytes(40 * k + i)
                     for k, c in enumerate(["cat", "dog"]) for i in range(3)})


def test_a_zip_of_class_folders_unpacks_and_loads(tmp_path):
    from edgeppt.data import load_dataset

    root = extract_image_folders(class_zip("mydata/"), tmp_path / "target")
    assert root == tmp_path / "target" / "mydata"  # the wrapping folder is descended through
    ds = load_dataset(str(root))
    assert ds.classes == ["cat", "dog"] and ds.counts() == [3, 3]


@pytest.mark.parametrize("members, symlinks, message", [
    ({"../evil/0.png": png_bytes()}, None, "path traversal"),
    ({"/etc/cat/0.png": png_bytes()}, None, "path traversal"),
    ({"cat/0.png": png_bytes(), "dog/0.png": png_bytes()}, {"dog/link.png": "/etc/passwd"}, "symbolic link"),
    ({"cat/0.png": png_bytes(), "dog/run.sh": b"#!/bin/sh\nrm -rf /\n"}, None, "is not an image"),
    ({"cat/0.png": png_bytes(), "dog/0.png": b"not really a png"}, None, "not a readable image"),
    ({"cat/0.png": png_bytes()}, None, "at least 2"),
    ({"cat/0.png": png_bytes(), "loose.png": png_bytes()}, None, "outside a class folder"),
])
def test_bad_archives_are_refused_with_a_clear_message(tmp_path, members, symlinks, message):
    with pytest.raises(UploadError, match=message):
        extract_image_folders(make_zip(members, symlinks), tmp_path / "target")
    assert not (tmp_path / "target").exists()  # nothing half-unpacked is left behind
    assert not (tmp_path / "evil").exists() and not list(tmp_path.glob(".target.*"))


def test_oversized_archives_and_zip_bombs_are_refused(tmp_path):
    with pytest.raises(UploadError, match="limit is"):
        extract_image_folders(class_zip(), tmp_path / "t", max_archive=100)
    bomb = make_zip({"cat/0.png": png_bytes(), "dog/0.png": b"\0" * 5_000_000})  # compresses to a few KiB
    assert len(bomb) < 50_000
    with pytest.raises(UploadError, match="unpacks to more than"):
        extract_image_folders(bomb, tmp_path / "t", max_content=1_000_000)
    with pytest.raises(UploadError, match="not a zip"):
        extract_image_folders(b"PK-but-not-really", tmp_path / "t")


def test_a_bundle_zip_is_unpacked_and_verified(tmp_path, tiny_bundle):
    from edgeppt.bundle import load_bundle

    members = {f"tiny/{p.name}": p.read_bytes() for p in Path(tiny_bundle).iterdir() if p.is_file()}
    path = extract_bundle(make_zip(members), tmp_path / "src")
    assert load_bundle(path).classes == [f"src{i}" for i in range(5)]
    with pytest.raises(UploadError, match="no manifest.json"):
        extract_bundle(make_zip({"x/readme.md": b"hello"}), tmp_path / "src2")
    with pytest.raises(UploadError, match="not a bundle file"):
        extract_bundle(make_zip({**members, "tiny/hook.py": b"import os"}), tmp_path / "src3")


# ---------------------------------------------------------------- AppTest: each step
@pytest.fixture
def wizard(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("EDGEPPT_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(WIZARD, default_timeout=120)
    at.query_params["run"] = "apptest"
    return at


def goto(at, step: int):
    at.sidebar.radio(key="step").set_value(at.sidebar.radio(key="step").options[step]).run()
    assert not at.exception, at.exception
    return at


def test_step1_previews_the_example_classes(wizard):
    at = wizard.run()
    assert not at.exception
    assert at.header[0].value == "Target data"
    assert [r["class"] for r in at.table[0].value.to_dict("records")] == \
        ["elephant", "giraffe", "horse", "sheep", "zebra"]
    assert (Path(os.environ["EDGEPPT_RUNS"]) / "apptest" / "wizard" / "target_preview.png").stat().st_size > 1000


def test_step2_verifies_the_bundle_and_draws_its_samples(wizard):
    at = goto(wizard.run(), 1)
    assert any("verified" in s.value for s in at.success)
    assert any("bear, bird, cat, cow, dog" in m.value for m in at.markdown)
    assert (Path(os.environ["EDGEPPT_RUNS"]) / "apptest" / "wizard" / "source_samples.png").stat().st_size > 1000


def test_step3_builds_a_valid_config_and_explains_a_bad_one(wizard):
    at = goto(wizard.run(), 2)
    budget = next(r for r in at.radio if r.label == "Budget")
    budget.set_value("tiny").run()
    yaml_text = at.code[0].value
    assert "pretrain_steps: 10" in yaml_text and "finetune_steps: 10" in yaml_text
    # A setting the stages refuse is explained, not crashed on.
    draft = Path(os.environ["EDGEPPT_RUNS"]) / "apptest" / "wizard" / "draft.json"
    import json
    d = json.loads(draft.read_text())
    d["transfer"]["method"] = "ppp"
    draft.write_text(json.dumps(d))
    at = goto(at, 3)
    assert any("transfer.method" in e.value for e in at.error), [e.value for e in at.error]


def test_step4_shows_a_finished_search_with_its_finalists(wizard):
    from edgeppt.config import SearchConfig
    from edgeppt.search import run_search

    folder = Path(os.environ["EDGEPPT_RUNS"]) / "apptest" / "search"
    run_search(SearchConfig(target="digits", test_fraction=0.3, labels_per_class=3, val_per_class=5, trials=3,
                            strategy="random", latency_ms=50, latency_repeats=3, finalists=2, final_seeds=1,
                            proxy=dict(pretrain_steps=0, finetune_steps=40, batch_size=8)), folder, progress=False)
    at = goto(wizard.run(), 3)  # the fourth step
    assert at.header[0].value == "Architecture search"
    rows = [r for r in at.dataframe[0].value.to_dict("records") if r["status"] == "trained"]
    assert len(rows) == 3 and sum(r["final_accuracy"] == r["final_accuracy"] for r in rows) == 2  # NaN: not a finalist
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    finals = {r["latency_ms"]: r["final_accuracy"] for r in rows if r["final_accuracy"] == r["final_accuracy"]}
    plotted = dict(zip(chart["data"][0]["x"], chart["data"][0]["y"]))
    # Finalists are drawn at the mean of their seeds, not at their first seed's accuracy (these settings make the
    # seeds disagree, so the two differ).
    assert all(plotted[lat] == pytest.approx(acc) for lat, acc in finals.items())
    assert any(r["final_accuracy"] != pytest.approx(r["accuracy"]) for r in rows if r["latency_ms"] in finals)
    assert any(j.value for j in at.json)  # best.json


def test_a_run_from_the_command_line_opens_in_the_stage_steps(wizard, tiny_bundle):
    """A past run (made by `edgeppt run`, digits) reopened: steps 4-6 show its results; starting it again from step 3
    runs a background job in which every stage is found cached."""
    from edgeppt.pipeline import jobs
    from edgeppt.pipeline.config import parse_config
    from edgeppt.pipeline.runner import read_state, run_pipeline

    run = Path(os.environ["EDGEPPT_RUNS"]) / "apptest"
    cfg = parse_config({"source": str(tiny_bundle), "target": "digits:0,1,2", "threads": 1,
                        "search": {"enabled": False},
                        "transfer": {"arch": "resnet_xs", "pretrain_steps": 5, "finetune_steps": 6, "eval_every": 3,
                                     "batch_size": 8, "pretrain_batch": 8, "pssl": {"pool_size": 16, "steps": 3}},
                        "export": {"bench_runs": 3, "calibration_size": 16}})
    before = run_pipeline(cfg, run, progress=False, log=lambda s: None)
    at = goto(wizard.run(), 3)
    assert any("Search is off" in i.value for i in at.info)
    assert any("Job: done" in m.value for m in at.markdown)
    at = goto(at, 4)
    assert any(m.label == "Test accuracy" for m in at.metric)
    assert [r["class"] for r in at.table[0].value.to_dict("records")] == ["0", "1", "2"]
    at = goto(at, 5)
    rows = at.dataframe[0].value.to_dict("records")
    assert [r["format"] for r in rows] == ["pytorch", "onnx", "int8"]
    assert rows[0]["batch-1 median ms"] == "-" and all(float(r["batch-1 median ms"]) > 0 for r in rows[1:])
    assert any(b.label == "Download the bundle (zip)" for b in at.get("download_button"))

    at = goto(at, 2)
    at.button(key="start-None").click().run()
    assert not at.exception and (run / "job.json").exists()
    deadline = time.time() + 120
    while jobs.is_running(run) and time.time() < deadline:
        time.sleep(0.5)
    status = jobs.job_status(run)
    assert status["status"] == "done", status["log"]
    assert any("unchanged inputs, skipped" in line for line in status["log"])
    after = read_state(run)["stages"]
    assert {k: v["finished"] for k, v in after.items()} == {k: v["finished"] for k, v in before["stages"].items()}


# ---------------------------------------------------------------- the browser
def settle(page) -> None:
    """Wait until the script run triggered by the last click has finished (no stale duplicates on the page)."""
    page.wait_for_timeout(300)
    page.locator("[data-testid=stStatusWidget]").wait_for(state="hidden", timeout=60_000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed at /usr/bin/chromium")
def test_wizard_end_to_end_in_headless_chromium(tmp_path):
    """Built-in example, tiny budget: every step in a real browser, then a reload shows the same finished job."""
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    log = open(tmp_path / "streamlit.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "edgeppt.cli", "app", "--port", str(port),
                               "--runs", str(tmp_path / "runs")],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/?run=e2e"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            for _ in range(120):
                try:
                    page.goto(url)
                    break
                except Exception:
                    time.sleep(0.5)
            expect(page.get_by_text("Preview per class")).to_be_visible(timeout=60_000)
            expect(page.locator("img").first).to_be_visible()

            # A bad upload is refused with the reason.
            settle(page)
            page.get_by_text("Upload a zip of class folders").click()
            settle(page)
            bad = tmp_path / "bad.zip"
            bad.write_bytes(make_zip({"../up/0.png": png_bytes()}))
            page.locator("input[type=file]").set_input_files(str(bad))
            expect(page.get_by_text("path traversal")).to_be_visible(timeout=30_000)
            settle(page)
            page.get_by_text("Built-in example: animals").click()
            settle(page)
            expect(page.get_by_text("Preview per class")).to_be_visible(timeout=30_000)

            page.get_by_text("2 · Source bundle").click()
            settle(page)
            expect(page.get_by_text("verified:")).to_be_visible(timeout=60_000)

            page.get_by_text("3 · Device & budget").click()
            settle(page)
            page.get_by_text("tiny", exact=True).click()
            settle(page)
            expect(page.get_by_text("finetune_steps: 10")).to_be_visible(timeout=30_000)
            page.get_by_role("button", name="Run all stages").click()
            expect(page.get_by_text("Job: running")).to_be_visible(timeout=30_000)

            page.get_by_text("5 · Transfer").click()
            settle(page)
            expect(page.get_by_text(re.compile(r"training step \d+ / \d+"))).to_be_visible(timeout=120_000)  # live

            page.get_by_text("6 · Export").click()
            settle(page)
            expect(page.get_by_role("button", name="Download the bundle (zip)")).to_be_visible(timeout=300_000)
            page.reload()  # the job lives in the run directory, not in the page
            expect(page.get_by_text("Job: done")).to_be_visible(timeout=60_000)
            expect(page.get_by_role("button", name="Download the bundle (zip)")).to_be_visible(timeout=60_000)
            with page.expect_download() as dl:
                page.get_by_role("button", name="Download the bundle (zip)").click()
            names = zipfile.ZipFile(dl.value.path()).namelist()
            assert "bundle/manifest.json" in names and "bundle/model.int8.onnx" in names

            page.get_by_text("5 · Transfer").click()
            settle(page)
            expect(page.get_by_text("Test accuracy")).to_be_visible(timeout=60_000)
            page.wait_for_timeout(1500)  # let the figures finish drawing before the picture
            shots = Path(os.environ.get("EDGEPPT_SCREENSHOTS", tmp_path))  # where to keep the pictures
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / "wizard-transfer.png"), full_page=True)
            page.get_by_text("6 · Export").click()
            settle(page)
            expect(page.get_by_role("button", name="Download the bundle (zip)")).to_be_visible(timeout=60_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(shots / "wizard-export.png"), full_page=True)
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
