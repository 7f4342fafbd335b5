"""Results to look at without Jupyter: executed notebooks as self-contained HTML reports,
outputs/index.html, both opened in a real browser (headless Chromium through Playwright)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest

from segkit.core.paths import outputs_dir
from segkit.flow.cli import main
from segkit.flow.reports import caption_figures, web_image, write_html_report

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGBA picture (smooth colours and noise): large as a PNG."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) % 256)], -1)
    rgb = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)
    return np.dstack([rgb, np.full((height, width), 255, np.uint8)])


def _chart(dpi: int = 100) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3), dpi=dpi)
    ax.plot([0, 1, 2, 3], [0.1, 0.4, 0.35, 0.6])
    ax.set_title("mIoU")
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=dpi)
    plt.close(fig)
    return out.getvalue()


def test_web_image_scales_large_pictures_down_and_keeps_charts_sharp():
    from PIL import Image

    photo = _png(_photo(1600, 2400))
    mime, data = web_image(photo)
    image = Image.open(io.BytesIO(data))
    assert mime == "image/jpeg" and image.size == (1200, 800)
    assert len(data) < len(photo) / 8, (len(photo), len(data))

    chart = _chart()
    mime, data = web_image(chart)
    assert mime == "image/png" and data == chart  # small: kept as it is
    big_chart = _chart(dpi=600)
    mime, data = web_image(big_chart)
    assert mime == "image/png" and Image.open(io.BytesIO(data)).size == (1200, 900)
    assert len(data) < len(big_chart)  # a chart stays a sharp PNG, smaller

    tall = _png(_photo(3000, 200)[..., :3])
    assert Image.open(io.BytesIO(web_image(tall, max_side=600)[1])).size == (40, 600)


def _notebook(picture: bytes, failed: bool = False):
    """An executed notebook as papermill leaves it: a heading, a commented plotting cell, a
    cell drawing two pictures, a pandas table (text/html), and maybe a failed cell."""
    import nbformat
    import pandas as pd
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    png = base64.b64encode(picture).decode()
    table = pd.DataFrame({"IoU": [0.91, 0.42]}, index=["Background", "Paper"])
    cells = [
        new_markdown_cell("# 05 · Predict\n\nSome text."),
        new_markdown_cell("## Validation fold"),
        new_code_cell("# Confusion matrix of the best checkpoint\nviz.plot_confusion(cm)",
                      outputs=[new_output("display_data", data={"image/png": png,
                                                                "text/plain": "<Figure>"})]),
        new_code_cell("viz.show_samples(root, val, classes, ids)\nplt.show()",
                      outputs=[new_output("display_data", data={"image/png": png}),
                               new_output("display_data", data={"image/png": png})]),
        new_code_cell("table", outputs=[new_output(
            "execute_result", data={"text/html": table.to_html(), "text/plain": str(table)},
            execution_count=4)]),
    ]
    if failed:
        cells.append(new_code_cell("1 / 0", outputs=[new_output(
            "error", ename="ZeroDivisionError", evalue="division by zero", traceback=[])]))
    nb = new_notebook(cells=cells)
    nb.metadata["papermill"] = {"parameters": {"run_dir": "new_run", "n_worst": 2},
                                "start_time": "2026-12-01T10:00:00+00:00", "duration": 12.5,
                                "exception": failed or None}
    nbformat.validate(nb)
    return nb


def test_captions_come_from_the_comment_or_the_section():
    nb = _notebook(_chart())
    assert caption_figures(nb) == 3
    captions = [o.metadata["segkit"]["caption"] for c in nb.cells if c.cell_type == "code"
                for o in c.outputs if "image/png" in o.get("data", {})]
    assert captions == ["Confusion matrix of the best checkpoint",
                        "Validation fold: samples (1 of 2)", "Validation fold: samples (2 of 2)"]


def test_html_report_is_self_contained_with_small_captioned_pictures_and_tables():
    import nbformat

    picture = _png(_photo(1500, 2000))
    folder = outputs_dir() / "pipelines" / "unit"
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "05_predict.ipynb"
    nbformat.write(_notebook(picture, failed=True), str(source))

    report = write_html_report(source)
    assert report == folder / "05_predict.html"
    text = report.read_text()
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"http", text)  # nothing fetched
    assert 'alt="Confusion matrix of the best checkpoint (Validation fold)"' in text
    assert "<figcaption>Validation fold: samples (2 of 2)</figcaption>" in text
    assert text.count('src="data:image/jpeg;base64,') == 3 and 'src="data:image/png' not in text
    assert '<table border="1" class="dataframe">' in text and "<td>0.91</td>" in text
    assert "failed in cell 6: ZeroDivisionError: division by zero" in text
    assert 'href="../../index.html"' in text and "<th>run_dir</th>" in text
    # three 1500x2000 photos: scaled to 1200 px and re-encoded, far below their PNG bytes
    assert report.stat().st_size < len(picture) / 2, (report.stat().st_size, len(picture))


def _set_time(path: Path, seconds: float) -> None:
    os.utime(path, (seconds, seconds))


def _fake_outputs(root: Path) -> None:
    """Every kind of result the index lists, written as segkit writes them (no training)."""
    from segkit.submission.codec import HEADER
    from segkit.submission.leaderboard import record_score, write_local_score

    now = time.time()
    for k, (name, miou) in enumerate([("old_run", 0.5), ("new_run", 0.6)]):
        run = root / "runs" / name
        run.mkdir(parents=True)
        (run / "params.json").write_text(json.dumps({"model": "efficientnet_lite0",
                                                     "fold": k, "iters": 100}))
        (run / "summary.json").write_text(json.dumps({"best_miou": miou, "seconds": 90}))
        _set_time(run / "summary.json", now - 1000 + 500 * k)
    pred = root / "predictions" / "new_run" / "test"
    pred.mkdir(parents=True)
    (pred / "meta.json").write_text(json.dumps({"split": "test", "images": [{"id": 1}],
                                                "flips": ["h"], "checkpoint": "/x/best.pth"}))
    (pred / "submission.csv").write_text(f"{HEADER}\na.jpg,0 0\n")
    write_local_score(pred / "submission.csv", 0.61, "validation mIoU")
    ensembles = root / "ensembles"
    ensembles.mkdir()
    (ensembles / "vote.csv").write_text(f"{HEADER}\na.jpg,1 1\n")
    write_local_score(ensembles / "vote.csv", 0.64, "OOF mIoU")
    oof = root / "oof" / "lite0_oof"
    oof.mkdir(parents=True)
    (oof / "score.json").write_text(json.dumps({"OOF mIoU": 0.633, "mean mIoU": 0.63,
                                                "std": 0.01, "folds": 3, "images": 24}))
    record_score(ensembles / "vote.csv", 0.59, note="3 folds")
    import nbformat

    pipeline = root / "pipelines" / "demo"
    pipeline.mkdir(parents=True)
    nbformat.write(_notebook(_chart(), failed=True), str(pipeline / "05_predict.ipynb"))
    write_html_report(pipeline / "05_predict.ipynb")
    study = root / "search" / "lite0_lr"
    study.mkdir(parents=True)
    (study / "best.json").write_text(json.dumps({"best_value": 0.71}))
    (study / "history.html").write_text("<!DOCTYPE html><title>h</title><p>trials</p>")


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.links += [v for k, v in attrs if k == "href"]


def test_index_lists_every_kind_of_result_newest_first(tmp_path, monkeypatch, capsys):
    root = tmp_path / "outputs"
    monkeypatch.setenv("SEGKIT_OUTPUTS", str(root))
    _fake_outputs(root)
    assert main(["index"]) == 0
    assert "index.html" in capsys.readouterr().out
    text = (root / "index.html").read_text()
    for expected in ("new_run", "0.6000", "0.6100", "vote.csv", "0.6400", "lite0_oof",
                     "0.6330", "0.6300 &plusmn; 0.0100", "3 folds", "0.5900", "lite0_lr", "0.7100"):
        assert expected in text, expected
    assert text.index("new_run") < text.index("old_run")  # newest first
    assert "<script" not in text and "http" not in text.split("<body>")[1]
    parser = _Links()
    parser.feed(text)
    local = [h for h in parser.links if not h.startswith("#")]
    assert local and all((root / unquote(h)).exists() for h in local), local
    assert "search/lite0_lr/history.html" in local and "pipelines/demo/05_predict.html" in local
    assert '<span class="failed">failed</span>' in text
    # linked from the pipelines, from the run it names (used by) and from that run's predictions
    assert text.count('href="pipelines/demo/05_predict.html"') == 3


def _browse(start: Path, root: Path) -> dict:
    """Open `start` in headless Chromium and every page it links to under `root` (and theirs):
    {url: problems} for every page visited, problems being failed navigations, pictures that
    did not load, links to a missing anchor, console errors and uncaught page errors."""
    from playwright.sync_api import sync_playwright

    root_url = root.resolve().as_uri()
    seen: dict[str, list[str]] = {}
    waiting = [start.resolve().as_uri()]
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
            offline=True)
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        while waiting:
            url = waiting.pop(0)
            if url in seen:
                continue
            problems = seen[url] = []
            errors.clear()
            try:
                page.goto(url, wait_until="load")
            except Exception as exc:  # noqa: BLE001 - a link that does not navigate
                problems.append(f"does not open: {exc}")
                continue
            broken = page.evaluate("""() => [...document.images]
                .filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt || i.src)""")
            problems += [f"picture not loaded: {b[:80]}" for b in broken]
            if not urlparse(url).path.endswith("/"):  # a page of ours, not a folder listing
                problems += [f"picture without alt text: {s[:60]}" for s in page.evaluate(
                    "() => [...document.images].filter(i => !i.alt).map(i => i.src)")]
                for href in page.evaluate("() => [...document.links].map(a => a.href)"):
                    target, _, anchor = href.partition("#")
                    if target == url and anchor:
                        if not page.evaluate("(id) => !!document.getElementById(id)", anchor):
                            problems.append(f"no anchor #{anchor}")
                    elif target.startswith(root_url) and target not in seen:
                        waiting.append(target)
            problems += [f"console: {e}" for e in errors]
        context.close()
    return seen


def _browser_missing() -> str:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is absent (Debian: apt-get install -y chromium; .ci/run installs it)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (the dev extra installs it)"
    return ""


@pytest.mark.skipif(bool(_browser_missing()), reason=_browser_missing() or "browser present")
def test_pipeline_reports_and_index_in_a_browser(sample_root, tmp_path, monkeypatch):
    """A one-step pipeline (a tiny 04_train, fanned out so that it lands in its run folder),
    predictions, a hard-vote ensemble, a leaderboard entry, then outputs/index.html opened in
    Chromium: every link navigates, every picture loads, no console error."""
    from segkit.flow.pipeline import run_pipeline
    from segkit.submission.leaderboard import record_score

    root = tmp_path / "outputs"
    monkeypatch.setenv("SEGKIT_OUTPUTS", str(root))
    spec = tmp_path / "browser.yaml"
    spec.write_text(f"""
name: browser
parameters: {{data_root: "{sample_root}", num_workers: 0}}
steps:
  - notebook: 04_train
    foreach: {{seed: [3]}}
    parameters: {{run_name: "tiny_s{{seed}}", fold: null, train_file: "{sample_root}/train.json",
                 val_file: "{sample_root}/val.json", image_size: 96, crop_size: 64,
                 batch_size: 4, iters: 4, val_interval: 2, log_interval: 2, warmup_iters: 2,
                 weights: none, vis_images: 2}}
""")
    executed = run_pipeline(spec, progress=False)
    assert executed == [root / "runs" / "tiny_s3" / "04_train.ipynb"]
    assert (root / "runs" / "tiny_s3" / "04_train.html").exists()
    assert (root / "index.html").exists()  # written by the pipeline

    assert main(["predict", "tiny_s3", "--flips", "--batch-size", "8"]) == 0
    submission = root / "predictions" / "tiny_s3" / "test" / "submission.csv"
    other = tmp_path / "other_model.csv"  # a second member for the vote
    other.write_bytes(submission.read_bytes())
    assert main(["ensemble", "--method", "hard", "--out", str(root / "ensembles" / "vote.csv"),
                 str(submission), str(other)]) == 0
    record_score(submission, 0.42, note="browser test")
    assert main(["index"]) == 0

    index = root / "index.html"
    text = index.read_text()
    assert "tiny_s3" in text and "vote.csv" in text and "0.4200" in text
    visited = _browse(index, root)
    problems = {url: p for url, p in visited.items() if p}
    assert not problems, problems
    pages = [unquote(urlparse(u).path) for u in visited]
    assert str(root / "runs" / "tiny_s3" / "04_train.html") in pages
    assert str(root / "predictions" / "tiny_s3" / "test") + "/" in pages  # a folder link
    assert len(visited) >= 5, sorted(pages)
