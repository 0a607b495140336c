"""The PNG chart: grouped bars, base vs tuned per benchmark, and, when the run gated a training
run's checkpoints, the forgetting curves below them in the same image (one panel per benchmark:
delta vs step with the interval band, the threshold line and the first proven drop).
``write_curve_plot`` writes the curves alone. matplotlib is imported only inside the writers (and
checked by ``require_matplotlib``)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_ftgate.curve import Curve
from pytest_ftgate.errors import ConfigError
from pytest_ftgate.reporting.curve import with_curves
from pytest_ftgate.reporting.files import atomic_write
from pytest_ftgate.reporting.record import GateRecord
from pytest_ftgate.reporting.summary import models_line, signed
from pytest_ftgate.text import safe

PLOT_INSTALL_HINT = "pip install 'pytest-ftgate[plot]'"



def require_matplotlib() -> None:
    """Raise ``ConfigError`` with the install command when matplotlib is missing.

    Call it when ``--ftgate-plot`` is given (at configure time), so the user learns before a long
    evaluation rather than after it.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(f"--ftgate-plot needs matplotlib, which is not installed: {PLOT_INSTALL_HINT}") from None


_BASE_COLOR = "#9aa5b1"  # grey: before
_TUNED_COLOR = "#2f6db5"  # blue: after
_OUTCOME_COLOR = {"pass": "#1a7f37", "fail": "#cf222e", "inconclusive": "#9a6700"}
_FLOOR_COLOR = "#cf222e"
_TARGET_COLOR = "#1a7f37"


def write_plot(
    path: str | os.PathLike[str],
    records: Sequence[GateRecord],
    *,
    title: str = "Baseline vs after fine-tuning",
    dpi: int = 150,
) -> Path:
    """PNG: grouped bars, base vs tuned per benchmark, like the seed study's figure.

    The tuned bar carries the paired interval as a whisker (``base + ci``); a dashed red line marks
    the allowed floor (``base - max_drop``) and a dashed green one the required score
    (``base + min_gain``) where the marker sets them. Values are printed on the bars; each
    benchmark's verdict and delta sit under its name. Records with a forgetting curve add its
    panels below the bars, in the same PNG (``--ftgate-plot`` writes one file; without curves the
    image is the bars alone). Renders with the Agg canvas (no pyplot, no global backend change).
    Raises ``ConfigError`` naming the install command without matplotlib.
    """
    require_matplotlib()
    bars = _bars_figure(records, title=title, dpi=dpi)
    curves = _first_curves(records)
    if not curves:
        return _save(path, bars, dpi)
    return _save_stacked(path, [bars, _curves_figure(curves, dpi=dpi)])


def write_curve_plot(path: str | os.PathLike[str], records: Sequence[GateRecord], *, dpi: int = 150) -> Path:
    """PNG of the forgetting curves alone: one panel per benchmark with a curve (the first gated
    test's curve of each benchmark), delta vs step, the paired interval as a band, the threshold
    line at ``-max_drop`` (and ``+min_gain``), and the first step whose drop is proven beyond the
    margin marked. ``ConfigError`` when no record has a curve, or without matplotlib."""
    require_matplotlib()
    curves = _first_curves(records)
    if not curves:
        raise ConfigError("no forgetting curve to plot: gate a training run's checkpoints (--ftgate-adapter=DIR)")
    return _save(path, _curves_figure(curves, dpi=dpi), dpi)


def _bars_figure(records: Sequence[GateRecord], *, title: str, dpi: int) -> Any:
    """The grouped-bar figure of ``write_plot``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    groups = _plot_groups(records)
    count = max(len(groups), 1)
    fig_width, fig_height = max(5.0, 1.9 * count + 1.6), 5.0
    fig = Figure(figsize=(fig_width, fig_height), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.36
    top = 0.0
    floors = targets = False
    for i, g in enumerate(groups):
        x_base, x_tuned = i - width / 2, i + width / 2
        ax.bar(x_base, g.base, width, color=_BASE_COLOR, edgecolor="white", linewidth=0.8, zorder=2)
        ax.bar(x_tuned, g.tuned, width, color=_TUNED_COLOR, edgecolor="white", linewidth=0.8, zorder=2)
        low = max(0.0, g.base + g.ci[0])
        high = min(100.0, g.base + g.ci[1])
        ax.errorbar(
            x_tuned,
            g.tuned,
            yerr=[[max(g.tuned - low, 0.0)], [max(high - g.tuned, 0.0)]],
            fmt="none",
            ecolor="#1f2328",
            elinewidth=1.2,
            capsize=5,
            capthick=1.2,
            zorder=4,
        )
        for x, value, above in ((x_base, g.base, g.base), (x_tuned, g.tuned, high)):
            ax.annotate(
                f"{value:.1f}",
                (x, above),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=9,
                color="#1f2328",
                zorder=5,
            )
        top = max(top, g.base, high)
        span = (x_tuned - width / 2 - 0.07, x_tuned + width / 2 + 0.07)  # the rule is for the tuned score
        if g.floor is not None:
            ax.hlines(g.floor, *span, colors=_FLOOR_COLOR, linestyles="--", linewidth=1.6, zorder=3)
            floors = True
        if g.target is not None:
            ax.hlines(g.target, *span, colors=_TARGET_COLOR, linestyles="--", linewidth=1.6, zorder=3)
            top = max(top, g.target)
            targets = True

    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g.label for g in groups], fontsize=10)
    for tick, g in zip(ax.get_xticklabels(), groups):
        tick.set_color("#1f2328")
    for i, g in enumerate(groups):
        ax.annotate(
            f"{g.outcome.upper()}  {signed(g.delta)}",
            (i, 0),
            xycoords=("data", "axes fraction"),
            xytext=(0, -30),
            textcoords="offset points",
            ha="center",
            va="top",
            fontsize=9,
            fontweight="bold",
            color=_OUTCOME_COLOR.get(g.outcome, "#1f2328"),
        )
    ax.set_xlim(-0.75, len(groups) - 0.25)
    ax.set_ylim(0, min(100.0, top) * 1.12 + 2 if top > 0 else 10)
    ax.set_ylabel("score (points)")
    ax.set_title(title, fontsize=13, fontweight="bold", pad=12)
    ax.yaxis.grid(True, color="#d0d7de", linewidth=0.8, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    conf = records[0].confidence if records else 0.95
    handles: list[Any] = [
        Patch(color=_BASE_COLOR, label="base"),
        Patch(color=_TUNED_COLOR, label=f"tuned ({conf:.0%} interval)"),
    ]
    if floors:
        handles.append(Line2D([], [], color=_FLOOR_COLOR, linestyle="--", label="allowed floor (base \u2212 max_drop)"))
    if targets:
        handles.append(Line2D([], [], color=_TARGET_COLOR, linestyle="--", label="required (base + min_gain)"))
    ncol = len(handles) if fig_width >= 2.0 * len(handles) else 2
    rows = -(-len(handles) // ncol)
    if not groups:
        empty = "no comparison could be computed" if records else "no gates ran"
        ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center", color="#57606a")
    subtitle = models_line(records)
    reserve = (0.28 * rows + 0.12 + (0.22 if subtitle else 0.0)) / fig_height  # legend and subtitle, below
    fig.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, (0.22 if subtitle else 0.04) / fig_height),
        ncol=ncol,
        frameon=False,
        fontsize=9,
    )
    if subtitle:
        fig.text(0.01, 0.04 / fig_height, subtitle, fontsize=7.5, color="#57606a", ha="left", va="bottom")
    fig.tight_layout(rect=(0, reserve, 1, 1))
    return fig


def _save(path: str | os.PathLike[str], fig: Any, dpi: int) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return atomic_write(Path(path), buffer.getvalue())


def _save_stacked(path: str | os.PathLike[str], figures: Sequence[Any]) -> Path:
    """One PNG of ``figures`` drawn one under the other (each left-aligned on white)."""
    import numpy
    from matplotlib.image import imsave

    images = []
    for fig in figures:
        fig.set_facecolor("white")
        fig.canvas.draw()
        images.append(numpy.asarray(fig.canvas.buffer_rgba()))
    width = max(image.shape[1] for image in images)
    padded = [
        numpy.pad(image, ((0, 0), (0, width - image.shape[1]), (0, 0)), constant_values=255) for image in images
    ]
    buffer = io.BytesIO()
    imsave(buffer, numpy.concatenate(padded, axis=0), format="png")
    return atomic_write(Path(path), buffer.getvalue())


def _first_curves(records: Sequence[GateRecord]) -> list[Curve]:
    """One curve per benchmark: the first gated test's (tests on one benchmark share its points)."""
    first: dict[str, Curve] = {}
    for _, _, curve in with_curves(records):
        first.setdefault(curve.benchmark, curve)
    return list(first.values())


_CURVE_COLOR = "#2f6db5"
_PANEL_COLUMNS = 3


def _curves_figure(curves: Sequence[Curve], *, dpi: int) -> Any:
    """One panel per curve: delta vs step with its interval band, the thresholds, the first proven drop."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(len(curves), _PANEL_COLUMNS)
    rows = -(-len(curves) // columns)
    fig = Figure(figsize=(4.6 * columns + 0.4, 3.6 * rows + 0.5), dpi=dpi)
    FigureCanvasAgg(fig)
    for index, curve in enumerate(curves):
        _draw_curve(fig.add_subplot(rows, columns, index + 1), curve)
    fig.suptitle("Forgetting curve: change vs base at each checkpoint", fontsize=12, fontweight="bold")
    fig.tight_layout()
    return fig


def _draw_curve(ax: Any, curve: Curve) -> None:
    points = curve.points
    by_step = all(point.step is not None for point in points)
    xs = [float(point.step) if by_step else float(i) for i, point in enumerate(points)]  # type: ignore[arg-type]
    deltas = [point.delta for point in points]
    ax.fill_between(xs, [p.ci[0] for p in points], [p.ci[1] for p in points], color=_CURVE_COLOR, alpha=0.18,
                    linewidth=0, label=f"{points[0].numbers.confidence:.0%} paired interval", zorder=2)
    ax.plot(xs, deltas, color=_CURVE_COLOR, linewidth=1.8, zorder=3, label="delta (tuned − base)")
    for x, point in zip(xs, points):
        colour = _OUTCOME_COLOR.get(point.outcome or "", _CURVE_COLOR)
        ax.plot([x], [point.delta], marker="o", markersize=5, color=colour, zorder=4)  # the verdict there
    ax.axhline(0.0, color="#57606a", linewidth=0.8, zorder=1)
    if curve.max_drop is not None:
        ax.axhline(-curve.max_drop, color=_FLOOR_COLOR, linestyle="--", linewidth=1.4, zorder=2,
                   label=f"−max_drop ({-curve.max_drop:.1f})")
    if curve.min_gain is not None:
        ax.axhline(curve.min_gain, color=_TARGET_COLOR, linestyle="--", linewidth=1.4, zorder=2,
                   label=f"min_gain (+{curve.min_gain:.1f})")
    first = curve.first_proven_drop()
    if first is not None:
        x = xs[points.index(first)]
        ax.axvline(x, color=_FLOOR_COLOR, linestyle=":", linewidth=1.4, zorder=2)
        where = f"step {first.step}" if first.step is not None else _mpl_text(first.adapter)
        ax.annotate(f"forgetting proven\nfrom {where}", (x, 0.98), xycoords=("data", "axes fraction"),
                    xytext=(4, 0), textcoords="offset points", fontsize=8, color=_FLOOR_COLOR,
                    fontweight="bold", ha="left", va="top")
    low = min([0.0, *(p.ci[0] for p in points), *([-curve.max_drop] if curve.max_drop is not None else [])])
    high = max([0.0, *(p.ci[1] for p in points), *([curve.min_gain] if curve.min_gain is not None else [])])
    pad = max(1.0, 0.08 * (high - low))
    ax.set_ylim(low - pad, high + 2.5 * pad)  # room above for the annotation
    if by_step and len(points) <= 12:
        ax.set_xticks(xs)
        ax.set_xticklabels([str(point.step) for point in points], fontsize=8)
    elif by_step:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:  # steps unknown: checkpoints in order, named by their folder or file
        ax.set_xticks(xs)
        ax.set_xticklabels([_mpl_text(Path(point.adapter).name or point.adapter) for point in points],
                           rotation=30, ha="right", fontsize=7)
    ax.set_xlabel("training step" if by_step else "checkpoint")
    ax.set_ylabel("delta (points)")
    ax.set_title(_mpl_text(curve.title), fontsize=11, fontweight="bold")
    ax.yaxis.grid(True, color="#d0d7de", linewidth=0.8, zorder=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=7, frameon=False, loc="best")


def _mpl_text(text: str) -> str:
    """Data text for a chart: control characters escaped, ``$`` kept literal (no mathtext)."""
    return safe(text).replace("$", r"\$")


@dataclass
class _Group:
    label: str
    base: float
    tuned: float
    delta: float
    ci: tuple[float, float]
    outcome: str
    floor: float | None
    target: float | None


def _plot_groups(records: Sequence[GateRecord]) -> list[_Group]:
    """One bar group per benchmark; several gates on one benchmark share it with the tightest
    thresholds and the worst verdict. Errored gates have no numbers to draw."""
    order: list[str] = []
    groups: dict[str, _Group] = {}
    rank = {"measured": 0, "pass": 0, "inconclusive": 1, "fail": 2}
    for r in records:
        if r.outcome == "error":
            continue
        floor = None if r.max_drop is None else r.base - r.max_drop
        target = None if r.min_gain is None else r.base + r.min_gain
        g = groups.get(r.benchmark)
        if g is None:
            order.append(r.benchmark)
            groups[r.benchmark] = _Group(_mpl_text(r.title), r.base, r.tuned, r.delta, r.ci, r.outcome, floor, target)
            continue
        if floor is not None:
            g.floor = floor if g.floor is None else max(g.floor, floor)
        if target is not None:
            g.target = target if g.target is None else max(g.target, target)
        if rank.get(r.outcome, 0) > rank.get(g.outcome, 0):
            g.outcome = r.outcome
    return [groups[name] for name in order]


