"""Test-time figures: the paper's softmax heatmap (Fig. 5), a reliability diagram and a confusion matrix.

matplotlib is imported inside the functions, and only its object API is used (`matplotlib.figure.Figure`,
rendered by the Agg canvas): nothing changes the global pyplot backend or opens a window, so this works
on headless machines and inside notebooks alike.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from crl_lightning.runs.files import write_bytes_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "confusion_matrix_figure",
    "learning_curves",
    "paired_differences_figure",
    "reliability_diagram",
    "save_figure",
    "save_test_figures",
    "softmax_heatmap",
]

#: Above this many classes, cells are not annotated with numbers (they would not be readable).
MAX_ANNOTATED_CLASSES = 20
#: Above this many classes, the axes carry no class names (above `MAX_ANNOTATED_CLASSES` they are small).
MAX_LABELLED_CLASSES = 100


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _names(names: Sequence[str] | None, n: int, what: str) -> list[str]:
    if names is None:
        return [str(i) for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{what}: expected {n} names, got {len(names)}")
    return [str(s) for s in names]


def _label_classes(ax: Any, names: list[str], y: bool) -> None:
    """Class names as the x (and, with ``y``, the y) tick labels, unless there are over `MAX_LABELLED_CLASSES`."""
    if len(names) > MAX_LABELLED_CLASSES:
        return
    size = None if len(names) <= MAX_ANNOTATED_CLASSES else 5
    rotated = max(map(len, names)) > 3
    ax.set_xticks(range(len(names)), names, rotation=45 if rotated else 0, ha="right" if rotated else "center",
                  fontsize=size)
    if y:
        ax.set_yticks(range(len(names)), names, fontsize=size)


def softmax_heatmap(
    probs: Tensor,
    targets: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    title: str = "Softmax outputs of sample test images",
) -> Figure:
    """The softmax output heatmap of sample images, as the paper's Fig. 5.

    Rows are images, columns predicted classes (named when C <= `MAX_LABELLED_CLASSES`), each cell the
    probability (annotated when C <= `MAX_ANNOTATED_CLASSES`); the true class of each row is boxed. With one
    image per class in class order, a well-trained model puts its mass on the diagonal.

    Args:
        probs: (K, C) softmax probabilities in [0, 1], rows summing to 1.
        targets: (K,) int true class of each row, or ``None``.
        class_names: C column labels (default ``0..C-1``).
        row_labels: K row labels (default ``"#<row>"``, plus ``" (<true class>)"`` with ``targets``).
        title: axes title.

    Returns:
        A `matplotlib.figure.Figure` (Agg canvas); save it with `save_figure`.

    Raises:
        ValueError: ``probs`` not 2-D or empty, ``targets`` of another length, label counts that do not match.
    """
    probs = torch.as_tensor(probs, dtype=torch.float32).detach().cpu()
    if probs.ndim != 2 or probs.numel() == 0:
        raise ValueError(f"probs: expected a non-empty (K, C) matrix, got shape {tuple(probs.shape)}")
    k, c = probs.shape
    cols = _names(class_names, c, "class_names")
    if targets is not None:
        targets = torch.as_tensor(targets).detach().cpu().long()
        if targets.shape != (k,):
            raise ValueError(f"targets: expected shape ({k},), got {tuple(targets.shape)}")
    if row_labels is None:
        row_labels = [f"#{i}" + (f" ({cols[int(targets[i])]})" if targets is not None else "") for i in range(k)]
    rows = _names(row_labels, k, "row_labels")
    fig = _figure(min(2.0 + 0.6 * c, 16.0), min(1.5 + 0.45 * k, 12.0))
    ax = fig.add_subplot()
    image = ax.imshow(probs.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    fig.colorbar(image, ax=ax, label="softmax probability")
    _label_classes(ax, cols, y=False)
    if c <= MAX_ANNOTATED_CLASSES:
        for i in range(k):
            for j in range(c):
                p = float(probs[i, j])
                ax.text(j, i, f"{p:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if p > 0.5 else "white")
    ax.set_yticks(range(k), rows)
    if targets is not None:
        from matplotlib.patches import Rectangle

        for i, t in enumerate(targets.tolist()):
            ax.add_patch(Rectangle((t - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("image (true class)" if targets is not None else "image")
    ax.set_title(title)
    return fig


def reliability_diagram(
    confidence: Tensor, accuracy: Tensor, count: Tensor, ece: float | None = None, title: str = "Reliability diagram"
) -> Figure:
    """Accuracy against confidence per bin, the gap between them beside each bar, and the samples per bin.

    In each confidence bin the left half holds the accuracy bar and the right half the gap: a bar from the
    bin's accuracy to its mean confidence (above the accuracy: over-confident). The lower axes give the samples
    per bin on a log scale, so that a bin of a few samples does not look like one of hundreds.

    Args:
        confidence: (B,) mean top-1 confidence per bin, fraction (``nan`` for an empty bin).
        accuracy: (B,) top-1 accuracy per bin, fraction (``nan`` for an empty bin).
        count: (B,) samples per bin.
        ece: the expected calibration error, a fraction (as in ``test_metrics.json``), shown in the title.
        title: axes title.

    Returns:
        A `matplotlib.figure.Figure` with two stacked axes (diagram, histogram).

    Raises:
        ValueError: the three inputs are not 1-D of the same length.
    """
    confidence, accuracy, count = (torch.as_tensor(x, dtype=torch.float64).cpu() for x in (confidence, accuracy, count))
    if not (confidence.ndim == accuracy.ndim == count.ndim == 1 and len(confidence) == len(accuracy) == len(count)):
        raise ValueError(
            "confidence, accuracy, count: expected three (B,) vectors, got shapes "
            f"{tuple(confidence.shape)}, {tuple(accuracy.shape)}, {tuple(count.shape)}"
        )
    b = len(count)
    width = 1.0 / b
    centers = (torch.arange(b, dtype=torch.float64) + 0.5) * width
    filled = count > 0
    acc = torch.where(filled, accuracy, torch.zeros_like(accuracy))
    conf = torch.where(filled, confidence, centers)
    fig = _figure(5.0, 6.0)
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar((centers - width / 4).numpy(), acc.numpy(), width=width / 2, edgecolor="black", color="tab:blue",
           label="accuracy")
    gap = (acc - conf).abs() * filled
    ax.bar((centers + width / 4).numpy(), gap.numpy(), bottom=torch.minimum(acc, conf).numpy(), width=width / 2,
           color="tab:red", alpha=0.6, edgecolor="tab:red", label="gap: accuracy to mean confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left")
    ax.set_title(title + (f" (ECE = {ece:.4f})" if ece is not None else ""))
    hist.bar(centers.numpy(), count.numpy(), width=width, edgecolor="black", color="tab:gray")
    hist.set_yscale("log")
    hist.set_xlabel("confidence (top-1 softmax probability)")
    hist.set_ylabel("samples (log)")
    return fig


def confusion_matrix_figure(
    confusion: Tensor, class_names: Sequence[str] | None = None, normalize: bool = True,
    title: str = "Confusion matrix",
) -> Figure:
    """A confusion-matrix heatmap, rows = true class, columns = predicted class.

    Args:
        confusion: (C, C) counts.
        class_names: C labels (default ``0..C-1``).
        normalize: show each row as percent of its true class (empty rows stay 0); else raw counts.
        title: axes title.

    Returns:
        A `matplotlib.figure.Figure`; the axes carry the class names when C <= `MAX_LABELLED_CLASSES`, and
        the cells their values when C <= `MAX_ANNOTATED_CLASSES`.

    Raises:
        ValueError: ``confusion`` not square 2-D, or wrong number of names.
    """
    confusion = torch.as_tensor(confusion).detach().cpu()
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or confusion.numel() == 0:
        raise ValueError(f"confusion: expected a square (C, C) matrix, got shape {tuple(confusion.shape)}")
    c = confusion.shape[0]
    names = _names(class_names, c, "class_names")
    counts = confusion.double()
    values = 100.0 * counts / counts.sum(dim=1, keepdim=True).clamp_min(1) if normalize else counts
    size = min(3.0 + 0.5 * c, 14.0)
    fig = _figure(size + 1.5, size)
    ax = fig.add_subplot()
    image = ax.imshow(values.numpy(), cmap="Blues", vmin=0.0, vmax=100.0 if normalize else None)
    fig.colorbar(image, ax=ax, label="% of true class" if normalize else "samples")
    _label_classes(ax, names, y=True)
    if c <= MAX_ANNOTATED_CLASSES:
        top = float(values.max()) if values.numel() else 0.0
        for i in range(c):
            for j in range(c):
                v = float(values[i, j])
                ax.text(j, i, f"{v:.0f}" if normalize else f"{int(v)}", ha="center", va="center", fontsize=8,
                        color="white" if v > 0.5 * top else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title + f" ({int(counts.sum())} samples)")
    return fig


def learning_curves(
    curves: Mapping[str, Sequence[tuple[Sequence[float], Sequence[float]]]],
    ylabel: str = "validation top-1 error (%)",
    title: str = "Validation error per epoch",
) -> Figure:
    """One thin line per run and a bold mean line per group (criterion), as the paper's Fig. 3.

    The mean of a group is taken at the epochs that all its runs reached.

    Args:
        curves: group label -> runs, each ``(epochs, values)`` of equal length (e.g. from ``history.csv``).
        ylabel: y-axis label, with its unit.
        title: figure title.

    Returns:
        The figure (not saved; see `save_figure`).

    Raises:
        ValueError: a run whose epochs and values differ in length.
    """
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    colors = [f"C{i}" for i in range(10)]
    for k, (label, runs) in enumerate(curves.items()):
        color = colors[k % len(colors)]
        by_epoch: dict[float, list[float]] = {}
        for epochs, values in runs:
            if len(epochs) != len(values):
                raise ValueError(f"curves[{label!r}]: expected as many values as epochs, got {len(values)} "
                                 f"and {len(epochs)}")
            ax.plot(epochs, values, color=color, linewidth=0.7, alpha=0.45)
            for e, v in zip(epochs, values, strict=True):
                by_epoch.setdefault(e, []).append(v)
        common = sorted(e for e, vs in by_epoch.items() if len(vs) == len(runs))
        means = [sum(by_epoch[e]) / len(by_epoch[e]) for e in common]
        ax.plot(common, means, color=color, linewidth=2.5, label=f"{label} (mean of {len(runs)} runs)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


def paired_differences_figure(
    rows: Sequence[tuple[str, Sequence[float], float | None, float | None, float | None]],
    title: str = "Paired differences per seed",
) -> Figure:
    """One row per comparison (criterion x metric): a dot per seed's difference, the zero line, the mean and its CI.

    Each row has its own x axis, in its metric's unit (the rows mix percent, nats and fractions).

    Args:
        rows: ``(label, differences, mean, ci_low, ci_high)`` per row: the row's label (with the unit), the
            per-seed differences (criterion − reference), their mean and the confidence interval's ends
            (``None`` when there is none, e.g. fewer than 2 seeds: then only the mean is marked).
        title: figure title.

    Returns:
        The figure (not saved; see `save_figure`).

    Raises:
        ValueError: no rows, or a row without differences.
    """
    if not rows:
        raise ValueError("rows: expected at least one comparison, got none")
    fig = _figure(7.0, 0.9 + 0.75 * len(rows))
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, (label, diffs, mean, low, high) in zip(axes, rows, strict=True):
        if not diffs:
            raise ValueError(f"rows: expected per-seed differences for {label!r}, got none")
        jitter = [0.12 * ((i % 3) - 1) for i in range(len(diffs))]  # keep equal values apart
        ax.scatter(list(diffs), jitter, s=18, color="tab:blue", zorder=3, label="seed")
        ax.axvline(0.0, color="black", linewidth=0.8)
        if mean is not None:
            xerr = None if low is None or high is None else [[mean - low], [high - mean]]
            ax.errorbar([mean], [-0.35], xerr=xerr, fmt="D", color="tab:red", capsize=4, markersize=5,
                        label="mean, 95 % CI")
        ax.set_ylim(-0.6, 0.4)
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=7, ncols=2)
    axes[0].set_title(title)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG, atomically (`crl_lightning.runs.write_bytes_atomic`), and return the path."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return write_bytes_atomic(path, buffer.getbuffer())


def save_test_figures(
    results: dict[str, Any], out_dir: str | Path, class_names: Sequence[str] | None = None
) -> dict[str, Path]:
    """Draw and save the figures of `crl_lightning.callbacks.TestReport.results` as PNG files.

    Args:
        results: ``results`` of a `TestReport` after a test (any of ``samples``, ``calibration``,
            ``confusion_matrix`` may be missing; a figure without data is skipped).
        out_dir: folder of the PNG files (created).
        class_names: C class labels, or ``None`` for indices.

    Returns:
        ``{"softmax_heatmap" | "reliability_diagram" | "confusion_matrix": path}`` of the files written.
    """
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    samples = results.get("samples")
    if samples is not None and len(samples.get("probs", ())) > 0:
        index, target = samples["index"].tolist(), samples["target"].tolist()
        names = class_names if class_names is not None else [str(c) for c in range(samples["probs"].shape[1])]
        rows = [f"#{i} ({names[t]})" for i, t in zip(index, target, strict=True)]
        fig = softmax_heatmap(samples["probs"], samples["target"], class_names, rows,
                              title="Softmax outputs of sample test images (true class boxed)")
        paths["softmax_heatmap"] = save_figure(fig, out_dir / "softmax_heatmap.png")
    calibration = results.get("calibration")
    if calibration is not None and float(torch.as_tensor(calibration["count"]).sum()) > 0:
        fig = reliability_diagram(calibration["confidence"], calibration["accuracy"], calibration["count"],
                                  calibration.get("ece"))
        paths["reliability_diagram"] = save_figure(fig, out_dir / "reliability_diagram.png")
    confusion = results.get("confusion_matrix")
    if confusion is not None and int(torch.as_tensor(confusion).sum()) > 0:
        fig = confusion_matrix_figure(confusion, class_names)
        paths["confusion_matrix"] = save_figure(fig, out_dir / "confusion_matrix.png")
    return paths
