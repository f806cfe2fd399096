"""The wizard: upload checks, each step under Streamlit's AppTest, and the whole flow in headless Chromium."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
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

from edgeppt.app.uploads import UploadError, extract_bundle, extract_image_folders, extract_images

ROOT = Path(__file__).resolve().parents[1]
WIZARD = str(ROOT / "app" / "wizard.py")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


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
    # PowerShell 5's zips name cats\1.png; macOS's leave ._1.png resource forks and Windows desktop.ini beside
    windows = make_zip({**{f"{c}\\{i}.png": png_bytes(40 * k + i) for k, c in enumerate(["cat", "dog"])
                           for i in range(2)}, "cat\\._0.png": b"\x00\x05\x16\x07", "dog\\desktop.ini": b"[x]"})
    ds = load_dataset(str(extract_image_folders(windows, tmp_path / "windows")))
    assert ds.classes == ["cat", "dog"] and ds.counts() == [2, 2]


@pytest.mark.parametrize("members, symlinks, message", [
    ({"../evil/0.png": png_bytes()}, None, "path traversal"),
    ({"/etc/cat/0.png": png_bytes()}, None, "path traversal"),
    ({"cat/0.png": png_bytes(), "dog/0.png": png_bytes()}, {"dog/link.png": "/etc/passwd"}, "symbolic link"),
    ({"cat/0.png": png_bytes(), "dog/run.sh": b"#!/bin/sh\nrm -rf /\n"}, None, "is not an image"),
    ({"cat/0.png": png_bytes(), "dog/0.png": b"not really a png"}, None, "not a readable image"),
    ({"cat/0.png": png_bytes()}, None, "at least 2"),
    ({"cat/0.png": png_bytes(), "loose.png": png_bytes()}, None, "outside a class folder"),
    ({"cat/0.png": png_bytes(), "cat/0.png/1.png": png_bytes()}, None, "cannot be unpacked here"),  # a file, a folder
    ({"cat/0.png": png_bytes(), f"dog/{'d' * 300}.png": png_bytes()}, None, "cannot be unpacked here"),  # too long
])
def test_bad_archives_are_refused_with_a_clear_message(tmp_path, members, symlinks, message):
    with pytest.raises(UploadError, match=message):
        extract_image_folders(make_zip(members, symlinks), tmp_path / "target")
    assert not (tmp_path / "target").exists()  # nothing half-unpacked is left behind
    assert not (tmp_path / "evil").exists() and not list(tmp_path.glob(".target.*"))


def test_encrypted_and_corrupt_members_are_refused_with_a_clear_message(tmp_path):
    data = bytearray(make_zip({"cat/0.png": png_bytes(), "dog/0.png": png_bytes()}))
    flagged = bytearray(data)
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):  # the encrypted bit in every local and central header
        at = 0
        while (at := flagged.find(sig, at)) >= 0:
            flagged[at + (6 if sig == b"PK\x03\x04" else 8)] |= 1
            at += 4
    with pytest.raises(UploadError, match="is encrypted; upload an archive without a password"):
        extract_image_folders(bytes(flagged), tmp_path / "target")
    body = data.find(b"PK\x03\x04") + 30 + len("cat/0.png")  # the first member's compressed bytes
    data[body:body + 8] = b"\xff" * 8
    with pytest.raises(UploadError, match="corrupt zip archive"):
        extract_image_folders(bytes(data), tmp_path / "target")
    assert not (tmp_path / "target").exists()


def test_oversized_archives_and_zip_bombs_are_refused(tmp_path):
    with pytest.raises(UploadError, match="limit is"):
        extract_image_folders(class_zip(), tmp_path / "t", max_archive=100)
    bomb = make_zip({"cat/0.png": png_bytes(), "dog/0.png": b"\0" * 5_000_000})  # compresses to a few KiB
    assert len(bomb) < 50_000
    with pytest.raises(UploadError, match="unpacks to more than"):
        extract_image_folders(bomb, tmp_path / "t", max_content=1_000_000)
    with pytest.raises(UploadError, match="not a zip"):
        extract_image_folders(b"PK-but-not-really", tmp_path / "t")


def test_a_decompression_bomb_image_in_an_upload_is_refused_from_its_header(tmp_path, huge_png):
    huge_png(tmp_path / "huge.png", 15_000)  # 225 megapixels in well under 1 MB
    data = make_zip({"cat/0.png": png_bytes(), "dog/0.png": (tmp_path / "huge.png").read_bytes()})
    with pytest.raises(UploadError, match=r"dog/0.png is not a readable image \(ImageTooLarge: image too large"):
        extract_image_folders(data, tmp_path / "t", max_content=10**9)


def test_a_bundle_zip_is_unpacked_and_verified(tmp_path, tiny_bundle):
    from edgeppt.bundle import load_bundle

    members = {f"tiny/{p.name}": p.read_bytes() for p in Path(tiny_bundle).iterdir() if p.is_file()}
    path = extract_bundle(make_zip(members), tmp_path / "src")
    assert load_bundle(path).classes == [f"src{i}" for i in range(5)]
    with pytest.raises(UploadError, match="no manifest.json"):
        extract_bundle(make_zip({"x/readme.md": b"hello"}), tmp_path / "src2")
    with pytest.raises(UploadError, match="not a bundle file"):
        extract_bundle(make_zip({**members, "tiny/hook.py": b"import os"}), tmp_path / "src3")


def test_a_zip_of_unlabelled_images_unpacks_in_any_layout_and_loads(tmp_path):
    from edgeppt.data import load_unlabeled

    root = extract_images(make_zip({f"device/day{i % 2}/{i}.png": png_bytes(10 * i) for i in range(5)}),
                          tmp_path / "u")
    x, skipped, offered = load_unlabeled(str(root), 8, 1)
    assert offered == 5
    assert x.shape == (5, 1, 8, 8) and not skipped
    with pytest.raises(UploadError, match="no images"):
        extract_images(make_zip({"empty/": b""}), tmp_path / "u2")
    with pytest.raises(UploadError, match="not a readable image"):
        extract_images(make_zip({"a.png": png_bytes(), "b.png": b"not a png"}), tmp_path / "u3")
    assert not (tmp_path / "u3").exists()  # nothing written where a refused archive would have gone


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


def test_the_preview_shows_photos_of_mixed_sizes(tmp_path):
    """A folder of photos of mixed sizes trains (at the bundle's side); its preview is drawn at a fixed side, with a
    note, instead of an error that asks for a setting the wizard does not have."""
    from edgeppt.app.wizard import PREVIEW_SIDE, target_preview

    for c in ("a", "b"):
        (tmp_path / "t" / c).mkdir(parents=True)
        for i, size in enumerate((20, 24, 30)):
            Image.new("RGB", (size, size + i), (40 * i, 0, 0)).save(tmp_path / "t" / c / f"{i}.png")
    info = target_preview(str(tmp_path / "t"), str(tmp_path / "p.png"), 0)
    assert info["mixed_sizes"] and info["shape"] == [3, PREVIEW_SIDE, PREVIEW_SIDE] and info["counts"] == [3, 3]
    assert (tmp_path / "p.png").stat().st_size > 100


def test_step2_verifies_the_bundle_and_draws_its_samples(wizard):
    at = goto(wizard.run(), 1)
    assert any("verified" in s.value for s in at.success)
    assert any("bear, bird, cat, cow, dog" in m.value for m in at.markdown)
    assert (Path(os.environ["EDGEPPT_RUNS"]) / "apptest" / "wizard" / "source_samples.png").stat().st_size > 1000


def test_step3_builds_a_valid_config_and_explains_a_bad_one(wizard):
    at = goto(wizard.run(), 2)
    caption = next(c.value for c in at.caption if c.value.startswith("Budgets:"))
    assert caption == ("Budgets: latency 2 ms · 2M parameters · MACs: no limit · peak activations: no limit. "
                       "Export formats: onnx, int8 (the bundle runs the fastest one measured here within the "
                       "accuracy budget).")
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


def test_an_upload_chosen_but_missing_never_runs_the_example_bundle_in_its_place(wizard):
    at = goto(wizard.run(), 1)
    next(r for r in at.radio if r.label == "Source bundle").set_value("upload").run()
    at = goto(at, 2)
    assert any("Upload the source bundle first" in w.value for w in at.warning), [w.value for w in at.warning]
    assert not any(b.label == "Run all stages" for b in at.button)


def test_unlabelled_images_and_the_ssl_algorithm_reach_the_config(wizard):
    import yaml

    at = wizard.run()
    unlabeled = next(r for r in at.radio if r.label == "Unlabelled images (optional)")
    assert unlabeled.value == "none"
    unlabeled.set_value("rest").run()
    at = goto(at, 2)
    next(r for r in at.radio if r.label == "Budget").set_value("tiny").run()
    algorithm = next(s for s in at.selectbox if s.label == "Semi-supervised algorithm")
    assert algorithm.value == "anchor" and "labelprop" in algorithm.options[-1]  # the registry's names, described
    algorithm.set_value("fixmatch").run()
    transfer = yaml.safe_load(at.code[0].value)["transfer"]
    # The choice joins the budget's own P-SSL settings instead of replacing them.
    assert transfer["unlabeled"] == "rest" and transfer["pssl"] == {"algorithm": "fixmatch", "pool_size": 32,
                                                                    "steps": 10, "real_steps": 10}
    next(b for b in at.button if b.label == "Reset to the budget's defaults").click().run()
    transfer = yaml.safe_load(at.code[0].value)["transfer"]
    assert transfer["unlabeled"] == "rest"  # step 1's choice stays
    assert transfer["pssl"] == {"pool_size": 32, "steps": 10, "real_steps": 10}


def test_step4_shows_a_finished_search_with_its_finalists(wizard):
    from edgeppt.app import display
    from edgeppt.config import SearchConfig
    from edgeppt.search import run_search
    from edgeppt.search.ledger import read_trials
    from edgeppt.search.record import read_best

    folder = Path(os.environ["EDGEPPT_RUNS"]) / "apptest" / "search"
    run_search(SearchConfig(target="digits", image_size=8, test_fraction=0.3, labels_per_class=3, val_per_class=5,
                            trials=3, strategy="random", latency_ms=50, latency_repeats=3, finalists=2, final_seeds=1,
                            proxy=dict(pretrain_steps=0, finetune_steps=40, batch_size=8)), folder, progress=False)
    at = goto(wizard.run(), 3)  # the fourth step
    assert at.header[0].value == "Architecture search"
    table = at.dataframe[0].value
    assert list(table.columns) == list(display.TRIAL_COLUMNS)  # names a person reads, not the ledger's fields
    shown = [r for r in table.to_dict("records") if r["status"] == "trained"]
    # 3 trials and the hand-designed reference, always re-ranked: with the 2 finalists, or as one of them (empty:
    # not a finalist)
    assert len(shown) == 4 and sum(r["mean of seeds"] != "" for r in shown) in (2, 3)
    ref = [r for r in shown if r["trial"].startswith("hand-designed x")]
    assert [r["trial"] for r in ref] == ["hand-designed x2"] and ref[0]["mean of seeds"]
    assert all(re.fullmatch(r"\d+\.\d%", r["proxy accuracy"]) and re.fullmatch(r"\d+\.\d", r["training s"])
               for r in shown)
    assert not {"None", "nan"} & {str(v) for r in table.to_dict("records") for v in r.values()}
    trained = [r for r in read_trials(folder) if r["status"] == "trained"]
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    finals = {r["latency_ms"]: r["final_accuracy"] for r in trained if r.get("final_accuracy") is not None}
    plotted = dict(zip(chart["data"][0]["x"], chart["data"][0]["y"]))
    # Finalists are drawn at the mean of their seeds, not at their first seed's accuracy (these settings make the
    # seeds disagree, so the two differ).
    assert len(finals) == sum(r["mean of seeds"] != "" for r in shown)
    assert all(plotted[lat] == pytest.approx(acc) for lat, acc in finals.items())
    assert any(r["final_accuracy"] != pytest.approx(r["accuracy"]) for r in trained if r["latency_ms"] in finals)
    # The chosen architecture: a table of its stages beside its costs and the budgets, the raw record folded away.
    best = read_best(folder)
    assert best is not None
    stages = at.dataframe[1].value.to_dict("records")
    assert len(stages) == len(best.config["stages"]) and {"width", "kernel", "expansion", "squeeze-excite"} <= \
        set(stages[0])
    costs = {r[""]: r for r in at.dataframe[2].value.to_dict("records")}
    assert costs["latency, batch 1"]["budget"] == "50 ms"
    assert re.search(r"\(measured, (onnx|int8)\)$", costs["latency, batch 1"]["chosen"])  # the format that ships
    assert any(j.value for j in at.json)  # best.json, in its expander


def test_a_run_from_the_command_line_opens_in_the_stage_steps(wizard, tiny_bundle):
    """A past run (made by `edgeppt run`, digits) reopened: steps 4-6 show its results; starting it again from step 3
    runs a background job in which every stage is found cached."""
    from edgeppt.pipeline import jobs
    from edgeppt.pipeline.config import parse_config
    from edgeppt.pipeline.runner import read_state, run_pipeline

    run = Path(os.environ["EDGEPPT_RUNS"]) / "apptest"
    cfg = parse_config({"source": str(tiny_bundle), "target": "digits:0,1,2", "threads": 1,
                        "seed": 3, "test_fraction": 0.3, "augment": {"hflip": False},  # no widget: kept as they are
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
    per_class = at.table[0].value.to_dict("records")
    assert [r["class"] for r in per_class] == ["0", "1", "2"]
    assert all(re.fullmatch(r"\d+\.\d%", r["accuracy"]) for r in per_class)  # not 0.8333 or 83.3333
    at = goto(at, 5)
    rows = at.dataframe[0].value.to_dict("records")
    assert [r["format"] for r in rows] == ["pytorch", "onnx", "int8"]
    assert rows[0]["batch-1 median ms"] == "-" and all(float(r["batch-1 median ms"]) > 0 for r in rows[1:])
    assert any(re.search(r"The bundle runs \*\*(onnx|int8)\*\* \(`model(\.int8)?\.onnx`\) by default: the fastest at "
                         r"batch 1 on this host \(", m.value) for m in at.markdown)
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
def test_wizard_end_to_end_in_headless_chromium(tmp_path):
    """Built-in example, tiny budget: every step in a real browser, then a reload shows the same finished job."""
    if CHROMIUM is None:  # the one real-browser test fails rather than vanish as a skip, as the SSH tests do
        pytest.fail("Chromium not installed: run scripts/install (or apt-get install -y chromium)")
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
            expect(page.get_by_text("Budgets: latency 2 ms · 2M parameters")).to_be_visible(timeout=30_000)
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
            expect(page.get_by_text("Test accuracy", exact=True)).to_be_visible(timeout=60_000)
            page.wait_for_timeout(1500)  # let the figures finish drawing before the picture
            shots = Path(os.environ.get("EDGEPPT_SCREENSHOTS", tmp_path))  # where to keep the pictures
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / "wizard-transfer.png"), full_page=True)
            page.get_by_text("6 · Export").click()
            settle(page)
            expect(page.get_by_role("button", name="Download the bundle (zip)")).to_be_visible(timeout=60_000)
            expect(page.get_by_text("by default: the fastest at batch 1 on this host")).to_be_visible()
            page.wait_for_timeout(1000)
            page.screenshot(path=str(shots / "wizard-export.png"), full_page=True)
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


# ---------------------------------------------------------------- what the pages show
def test_display_counts_percentages_and_budgets_read_as_words():
    from edgeppt.app import display
    from edgeppt.devices import DeviceProfile

    assert [display.count(n) for n in (None, 999, 34_701, 3_745_800, 2_000_000)] == \
        ["", "999", "34,701", "3.75M", "2M"]
    assert display.percent(0.83333) == "83.3%" and display.percent(None) == "" and display.number(47.4312, 1) == "47.4"
    profile = DeviceProfile.model_validate({"name": "board", "latency": "predicted", "predictor": "p.json",
                                            "budgets": {"macs": 5_000_000, "peak_activation_kib": 96},
                                            "export": {"formats": ["onnx"], "default_format": "onnx"}})
    assert display.budget_caption(profile) == ("Budgets: latency: no limit · parameters: no limit · 5M MACs · "
                                               "96 KiB peak activations. Export formats: onnx (the bundle runs onnx "
                                               "by default).")


def test_display_trial_rows_leave_cells_empty_where_nothing_applies():
    from edgeppt.app import display

    rows = display.trial_rows([
        {"order": 0, "status": "rejected", "latency_ms": 3.21, "latency_kind": "predicted", "params": 10_229,
         "macs": 945_352, "peak_activation_kib": 98.0},
        {"order": 1, "trial": 1, "status": "trained", "accuracy": 0.65, "final_accuracy": 0.745, "latency_ms": 0.61389,
         "latency_kind": "measured", "params": 169_689, "macs": 9_572_944, "peak_activation_kib": 196.0,
         "train_s": 15.372453}])
    assert rows == [
        {"trial": "", "status": "rejected", "proxy accuracy": "", "mean of seeds": "", "latency ms": "3.210",
         "latency from": "predicted", "parameters": "10,229", "MACs": "945,352", "peak activations KiB": "98.0",
         "training s": ""},
        {"trial": "1", "status": "trained", "proxy accuracy": "65.0%", "mean of seeds": "74.5%", "latency ms": "0.614",
         "latency from": "measured", "parameters": "169,689", "MACs": "9.57M", "peak activations KiB": "196.0",
         "training s": "15.4"}]


def test_display_the_chosen_architecture_as_stages_beside_its_costs():
    from edgeppt.app import display
    from edgeppt.search.record import SearchResult

    best = SearchResult.model_validate({
        "family": "mobilenet",
        "config": {"stem": 16, "head_width": 128, "act": "hswish", "stages": [
            {"width": 16, "depth": 1, "kernel": 3, "expand": 1.0, "se": False, "stride": 1},
            {"width": 32, "depth": 2, "kernel": 5, "expand": 3.0, "se": True, "stride": 2}]},
        "search": {"device": "x86-cpu", "budgets": {"latency_ms": 2.0, "params": 2_000_000}, "proxy_accuracy": 0.84,
                   "proxy_seed_accuracies": [0.81, 0.87], "trial": 3,
                   "costs": {"latency_ms": 0.2394, "latency_kind": "measured", "macs": 3_745_800, "params": 34_701,
                             "peak_activation_kib": 147.0}}})
    assert display.arch_summary(best) == "mobilenet · stem 16 channels · hswish activations · a 128-channel 1x1 head"
    assert display.arch_stage_rows(best)[1] == {"stage": "2", "width": "32", "blocks": "2", "kernel": "5x5",
                                                "expansion": "3x", "squeeze-excite": "yes", "stride": "2"}
    assert display.arch_cost_rows(best) == [
        {"": "proxy accuracy", "chosen": "84.0% (mean of 2 seeds)", "budget": ""},
        {"": "latency, batch 1", "chosen": "0.239 ms (measured)", "budget": "2 ms"},
        {"": "parameters", "chosen": "34,701", "budget": "2M"},
        {"": "MACs", "chosen": "3.75M", "budget": "no limit"},
        {"": "peak activations", "chosen": "147 KiB", "budget": "no limit"}]


def test_display_says_which_artifact_the_bundle_runs_and_why():
    from edgeppt.app import display

    manifest = {"device": "jetson", "default_format": "onnx", "device_profile": {"export": {"default_format": "fp16"}},
                "artifacts": {"onnx": {"file": "model.onnx"}, "int8": {"file": "model.int8.onnx"}}}
    assert display.default_artifact_note(manifest) == (
        "The bundle runs **onnx** (`model.onnx`) by default: the jetson profile asks for fp16, which this bundle "
        "does not hold, so the plain ONNX model. Another one runs with `--model`, e.g. "
        "`python runner.py classify IMAGE --model model.int8.onnx`.")
    manifest = {"device": "x86-cpu", "default_format": "int8", "device_profile": {"export": {"default_format": "int8"}},
                "artifacts": {"int8": {"file": "model.int8.onnx",
                                       "accuracy_guard": {"met": False, "note": "drops 3.1 points"}}}}
    assert display.default_artifact_note(manifest) == (
        "The bundle runs **int8** (`model.int8.onnx`) by default: the x86-cpu profile's default format (its "
        "export.default_format). Its accuracy guard was not met: drops 3.1 points.")
    manifest["default_reason"] = "the fastest at batch 1 on this host (int8 0.1 ms, onnx 0.2 ms)"
    assert display.default_artifact_note(manifest).startswith(
        "The bundle runs **int8** (`model.int8.onnx`) by default: the fastest at batch 1 on this host (int8 0.1 ms")
    manifest["latency_budget"] = {"budget_ms": 0.08, "default_ms": 0.1, "within": False}
    assert display.default_artifact_note(manifest).endswith(
        "It takes 0.100 ms at batch 1 here, over the device's latency budget of 0.08 ms.")
    assert display.per_class_rows({"per_class_accuracy": {"cat": 0.83333}}) == [{"class": "cat", "accuracy": "83.3%"}]
