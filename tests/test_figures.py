"""The test-time figures are drawn from real values and written as valid PNG files."""

from __future__ import annotations

import sys

import pytest
import torch
from PIL import Image

from crl_lightning.data import AdienceDataModule
from crl_lightning.figures import (
    confusion_matrix_figure,
    learning_curves,
    paired_differences_figure,
    reliability_diagram,
    save_figure,
    save_test_figures,
    softmax_heatmap,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_size=(200, 200)):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()  # checks the chunk CRCs
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
        extrema = image.convert("L").getextrema()
        assert extrema[0] < extrema[1]  # not a blank image


def fake_results(num_classes=8, n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, (n,), generator=g)
    logits = torch.randn(n, num_classes, generator=g) + 3 * torch.nn.functional.one_hot(target, num_classes)
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((target, pred), torch.ones(n, dtype=torch.long), accumulate=True)
    bins = 10
    index = (conf * bins).long().clamp(max=bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    first = [int((target == c).nonzero()[0]) for c in range(num_classes)]
    return {
        "confusion_matrix": confusion,
        "per_class_acc": 100 * confusion.diagonal() / confusion.sum(1),
        "calibration": {
            "count": count,
            "confidence": torch.bincount(index, conf.double(), minlength=bins) / count,
            "accuracy": torch.bincount(index, (pred == target).double(), minlength=bins) / count,
            "ece": 0.05,
        },
        "samples": {"index": torch.tensor(first), "target": target[first], "probs": probs[first]},
    }


def test_save_test_figures_writes_three_valid_pngs(tmp_path):
    names = ["0-2", "4-6", "8-12", "15-20", "25-32", "38-43", "48-53", "60-100"]  # Adience age groups
    paths = save_test_figures(fake_results(), tmp_path / "figures", class_names=names)
    assert set(paths) == {"softmax_heatmap", "reliability_diagram", "confusion_matrix"}
    for path in paths.values():
        assert path.parent == tmp_path / "figures"
        assert_png(path)


def tick_labels(ax, axis: str) -> list[str]:
    """The tick label texts of ``ax``'s x or y axis."""
    return [t.get_text() for t in (ax.get_xticklabels() if axis == "x" else ax.get_yticklabels())]


def test_saved_figures_name_the_classes(tmp_path, saved_figures):
    saved = saved_figures
    names = AdienceDataModule(data_dir=tmp_path).classes  # the age groups, as the Adience test report names them
    assert names == ["0-2", "4-6", "8-12", "15-20", "25-32", "38-43", "48-53", "60-100"]
    results = fake_results()
    save_test_figures(results, tmp_path, class_names=names)
    heatmap, confusion = saved["softmax_heatmap.png"].axes[0], saved["confusion_matrix.png"].axes[0]
    assert tick_labels(heatmap, "x") == names
    assert tick_labels(heatmap, "y") == [f"#{i} ({names[c]})" for i, c in zip(
        results["samples"]["index"].tolist(), results["samples"]["target"].tolist(), strict=True)]
    assert tick_labels(confusion, "x") == names and tick_labels(confusion, "y") == names
    assert (confusion.get_xlabel(), confusion.get_ylabel()) == ("predicted class", "true class")


def test_many_classes_keep_their_names_without_cell_numbers():
    names = [f"class_{i}" for i in range(50)]
    ax = confusion_matrix_figure(torch.eye(50, dtype=torch.long), class_names=names).axes[0]
    assert tick_labels(ax, "x") == names and tick_labels(ax, "y") == names
    assert not ax.texts  # 2,500 cells: no numbers
    assert tick_labels(confusion_matrix_figure(torch.eye(101, dtype=torch.long)).axes[0], "x") != [
        str(i) for i in range(101)]  # over MAX_LABELLED_CLASSES: matplotlib's own ticks


def test_save_test_figures_skips_missing_data(tmp_path):
    results = fake_results()
    results["samples"]["probs"] = torch.empty(0, 8)
    del results["calibration"]
    assert set(save_test_figures(results, tmp_path)) == {"confusion_matrix"}


def test_softmax_heatmap_content(tmp_path):
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    fig = softmax_heatmap(probs, torch.tensor([0, 2]), class_names=["a", "b", "c"])
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["0.70", "0.20", "0.10", "0.10", "0.80", "0.10"]  # the paper's per-cell numbers
    assert [t.get_text() for t in ax.get_yticklabels()] == ["#0 (a)", "#1 (c)"]
    assert len(ax.patches) == 2  # the true class of each row is boxed
    assert_png(save_figure(fig, tmp_path / "heatmap.png"), min_size=(100, 100))


def test_confusion_matrix_figure_normalizes_rows():
    fig = confusion_matrix_figure(torch.tensor([[3, 1], [0, 0]]), class_names=["x", "y"])
    assert [t.get_text() for t in fig.axes[0].texts] == ["75", "25", "0", "0"]
    assert fig.axes[0].get_title() == "Confusion matrix (4 samples)"
    counts = confusion_matrix_figure(torch.tensor([[3, 1], [0, 2]]), normalize=False)
    assert [t.get_text() for t in counts.axes[0].texts] == ["3", "1", "0", "2"]


def test_reliability_diagram_bars():
    fig = reliability_diagram(torch.tensor([0.25, float("nan")]), torch.tensor([0.5, float("nan")]),
                              torch.tensor([4.0, 0.0]), ece=0.125)
    ax, hist = fig.axes[:2]
    assert ax.get_title() == "Reliability diagram (ECE = 0.1250)"  # a fraction, as in test_metrics.json
    accuracy, gap = ax.patches[:2], ax.patches[2:4]
    assert [p.get_height() for p in accuracy] == pytest.approx([0.5, 0.0])  # an empty bin draws nothing
    assert [p.get_height() for p in gap] == pytest.approx([0.25, 0.0])  # |acc - conf|, from conf 0.25 up to 0.5
    assert gap[0].get_y() == pytest.approx(0.25)
    # beside, not over: the accuracy bar fills the left half of the bin [0, 0.5], the gap the right half
    assert (accuracy[0].get_x(), accuracy[0].get_width()) == pytest.approx((0.0, 0.25))
    assert (gap[0].get_x(), gap[0].get_width()) == pytest.approx((0.25, 0.25))
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["perfect calibration", "accuracy", "gap: accuracy to mean confidence"]
    assert hist.get_yscale() == "log" and [p.get_height() for p in hist.patches] == [4.0, 0.0]


def test_figure_argument_errors():
    with pytest.raises(ValueError, match=r"probs: expected a non-empty \(K, C\) matrix, got shape \(3,\)"):
        softmax_heatmap(torch.ones(3))
    with pytest.raises(ValueError, match=r"targets: expected shape \(1,\), got \(2,\)"):
        softmax_heatmap(torch.ones(1, 3) / 3, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class_names: expected 3 names, got 2"):
        softmax_heatmap(torch.ones(1, 3) / 3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="expected a square"):
        confusion_matrix_figure(torch.ones(2, 3))
    with pytest.raises(ValueError, match="expected three"):
        reliability_diagram(torch.ones(2), torch.ones(3), torch.ones(2))


def test_figures_leave_the_pyplot_backend_alone():
    before = sys.modules.get("matplotlib.pyplot")
    softmax_heatmap(torch.ones(2, 2) / 2)
    assert sys.modules.get("matplotlib.pyplot") is before  # object API only: no pyplot import, no window


def test_learning_curves_have_integer_epoch_ticks():
    fig = learning_curves({"ce": [([1, 2, 3], [50.0, 40.0, 35.0])], "crl": [([1, 2, 3], [52.0, 39.0, 33.0])]})
    fig.canvas.draw()
    ticks = fig.axes[0].get_xticks()
    assert len(ticks) > 1 and all(float(t).is_integer() for t in ticks)  # no 1.5, 2.5 on an epoch axis


def test_paired_differences_figure_has_a_row_per_comparison(tmp_path):
    rows = [("crl − ce\ntest top-1 error (%)", [-0.5, 0.2, -1.0], -0.43, -1.3, 0.45),
            ("crl − ce\ntest NLL (nats)", [0.01], 0.01, None, None)]  # one seed: no interval
    fig = paired_differences_figure(rows, title="Paired differences")
    assert len(fig.axes) == 2 and fig.axes[0].get_title() == "Paired differences"
    top = fig.axes[0]
    assert [tuple(line.get_xdata()) for line in top.get_lines() if tuple(line.get_xdata()) == (0.0, 0.0)]  # zero line
    assert sorted(top.collections[0].get_offsets()[:, 0].tolist()) == [-1.0, -0.5, 0.2]  # a dot per seed
    assert_png(save_figure(fig, tmp_path / "paired_differences.png"))
    with pytest.raises(ValueError, match="expected at least one comparison, got none"):
        paired_differences_figure([])
    with pytest.raises(ValueError, match="expected per-seed differences for 'x', got none"):
        paired_differences_figure([("x", [], None, None, None)])
