"""segkit.viz: overlays, legends and the figures the notebooks show."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from segkit import viz  # noqa: E402
from segkit.coco.files import load_coco  # noqa: E402
from segkit.core.classes import TRASH  # noqa: E402
from segkit.core.errors import ParameterError  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_overlay_blends_palette_and_leaves_ignore_unpainted():
    image = np.full((2, 3, 3), 100, np.uint8)
    label = np.array([[0, 9, 255], [10, 10, 1]], np.uint8)
    out = viz.overlay(image, label, TRASH, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert out[0, 0].tolist() == [50, 50, 50]  # half black
    assert out[0, 1].tolist() == [82, 82, 114]  # halfway to (64, 64, 128)
    assert out[0, 2].tolist() == [100, 100, 100]  # ignore: the image itself
    assert viz.overlay(image, label, TRASH, alpha=0.0).tolist() == image.tolist()
    with pytest.raises(ParameterError, match="does not match"):
        viz.overlay(image, label[:1], TRASH)
    with pytest.raises(ParameterError, match="alpha"):
        viz.overlay(image, label, TRASH, alpha=2)


def test_legend_handles_use_palette_colours():
    handles = viz.legend_handles(TRASH, present=[10, 0, 9, 9, 255])
    assert [h.get_label() for h in handles] == ["Background", "Battery", "Clothing", "ignore"]
    assert np.allclose(handles[1].get_facecolor()[:3], np.array([64, 64, 128]) / 255)
    assert len(viz.legend_handles(TRASH)) == len(TRASH)
    with pytest.raises(ParameterError, match="outside 0..10"):
        viz.legend_handles(TRASH, present=[11])


def test_show_grid_lays_out_rows_and_titles():
    img = np.zeros((5, 5, 3), np.uint8)
    fig = viz.show_grid([[img, img, img], [img, img]], titles=["a", "b", "c"],
                        row_titles=["r1", "r2"], size=1.0)
    axes = np.array(fig.axes).reshape(2, 3)
    assert [ax.get_title() for ax in axes[0]] == ["a", "b", "c"]
    assert axes[1, 0].get_ylabel() == "r2"
    assert len(axes[1, 2].images) == 0 and len(axes[1, 1].images) == 1
    with pytest.raises(ParameterError, match="titles has 2 entries for 3 columns"):
        viz.show_grid([[img, img, img]], titles=["a", "b"])


def test_show_samples_with_predictions(sample_root, tmp_path):
    coco = load_coco(sample_root / "train_all.json")
    ids = [coco.images[0]["id"], coco.images[1]["id"]]
    preds = {i: np.full((96, 96), 9, np.uint8) for i in ids}
    fig = viz.show_samples(sample_root, coco, TRASH, ids, predictions=preds)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image", "truth", "prediction"]
    legend_names = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "Battery" in legend_names and "Background" in legend_names
    fig.savefig(tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000
    with pytest.raises(ParameterError, match="no label map for image ids"):
        viz.show_samples(sample_root, coco, TRASH, ids, predictions={ids[0]: preds[ids[0]]})


def test_plot_confusion_normalises_rows():
    cm = np.zeros((11, 11))
    cm[1, 1], cm[1, 2] = 3, 1
    ax = viz.plot_confusion(cm, TRASH)
    values = ax.collections[0].get_array().reshape(11, 11)
    assert values[1, 1] == pytest.approx(0.75) and values[0].sum() == 0
    assert ax.get_xlabel() == "prediction" and ax.get_ylabel() == "truth"
    with pytest.raises(ParameterError, match="does not match 11 classes"):
        viz.plot_confusion(np.zeros((3, 3)), TRASH)


def test_plot_curves_skips_nans():
    log = pd.DataFrame({"iter": [1, 2, 3, 4], "loss": [1.0, 0.8, 0.6, 0.5],
                        "mIoU": [np.nan, 0.3, np.nan, 0.4]})
    ax = viz.plot_curves(log, "iter", ["loss", "mIoU"], title="fold 0")
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["mIoU"].get_xdata()) == [2, 4]
    assert len(lines["loss"].get_xdata()) == 4 and ax.get_title() == "fold 0"
    with pytest.raises(ParameterError, match=r"columns \['acc'\] not in the table"):
        viz.plot_curves(log, "iter", ["acc"])


def test_plot_class_bars_one_group_per_row():
    df = pd.DataFrame({"fold 0": [0.5, 0.2, 0.9], "fold 1": [0.4, 0.3, 0.8]},
                      index=["Background", "Paper", "Battery"])
    ax = viz.plot_class_bars(df)
    assert len(ax.patches) == 6
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Background", "Paper", "Battery"]
    heights = sorted(round(p.get_height(), 2) for p in ax.patches)
    assert heights == [0.2, 0.3, 0.4, 0.5, 0.8, 0.9]


def test_save_figure_writes_a_png(tmp_path):
    fig = viz.show_grid([[np.zeros((4, 4, 3), np.uint8)]])
    path = viz.save_figure(fig, tmp_path / "deep" / "g.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["g.png"]


def test_plot_leaderboard_names_each_submission():
    import pandas as pd

    from segkit.core.errors import ParameterError
    from segkit.viz import plot_leaderboard

    table = pd.DataFrame({"local": [0.70, 0.72], "leaderboard": [0.69, 0.73],
                          "note": ["fold 0", ""], "submission": ["a/x.csv", "b/y.csv"]})
    ax = plot_leaderboard(table)
    assert [t.get_text() for t in ax.texts] == ["fold 0", "y.csv"]
    assert ax.get_ylabel() == "public leaderboard mIoU"
    with pytest.raises(ParameterError, match="no leaderboard scores"):
        plot_leaderboard(table.iloc[:0])
