"""The report's figures as PNG bytes (matplotlib's Agg canvas, no display and no pyplot state)."""

from __future__ import annotations

import io

import numpy as np

from ab_testing.evaluate import AbResult

COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def _figure(n_panels: int, width: float = 3.2, height: float = 2.8):
    from matplotlib.figure import Figure

    cols = min(n_panels, 4)
    rows = -(-n_panels // cols)
    fig = Figure(figsize=(width * cols, height * rows), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _point_and_interval(ax, at: float, value: float, ci: tuple[float, float], color: str, horizontal: bool = False,
                        filled: bool = True, capsize: float = 4, label: str | None = None) -> None:
    """A value as a marker and its interval as a bar drawn around the interval's own middle.

    A percentile interval need not contain the point: a skewed bootstrap
    distribution, or a metric that is constant over users, whose resampled
    values differ from the point in the last bits (whiskers measured from the
    point would then be negative, which matplotlib refuses).
    """
    low, high = ci
    if np.isfinite(low) and np.isfinite(high):
        middle, half = [(low + high) / 2], [(high - low) / 2]
        ax.errorbar(*((middle, [at]) if horizontal else ([at], middle)), **{"xerr" if horizontal else "yerr": half},
                    fmt="none", capsize=capsize, color=color)
    ax.plot(*(([value], [at]) if horizontal else ([at], [value])), "o", color=color, mfc=None if filled else "white",
            label=label)


def metric_per_arm(result: AbResult) -> bytes:
    """Each metric's value per arm (all users) with its bootstrap interval."""
    arms = (result.control, *result.treatments)
    fig, axes = _figure(len(result.metrics))
    for ax, metric in zip(axes, result.metrics):
        values = {v.arm: v for v in result.values if v.segment == "all" and v.metric == metric.name}
        for x, arm in enumerate(arms):
            _point_and_interval(ax, x, values[arm].value, values[arm].ci, color=COLORS[x % len(COLORS)])
        ax.set_xticks(range(len(arms)), arms, rotation=20)
        ax.set_title(f"{metric.name} ({'higher' if metric.higher_is_better else 'lower'} is better)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Metric per arm, {result.config.confidence:.0%} bootstrap intervals", fontsize=11)
    return _png(fig)


def lift_per_segment(result: AbResult) -> bytes:
    """Relative lift of each treatment over the control, per segment, with intervals (0 = no change)."""
    segments = list(result.segment_users)
    fig, axes = _figure(len(result.metrics), height=0.6 + 0.45 * len(segments) * len(result.treatments))
    for ax, metric in zip(axes, result.metrics):
        rows = [c for c in result.comparisons if c.metric == metric.name]
        for t, treatment in enumerate(result.treatments):
            for s, segment in enumerate(segments):
                c = next(c for c in rows if c.treatment == treatment and c.segment == segment)
                _point_and_interval(ax, s * (len(result.treatments) + 1) + t, 100 * c.lift.rel_lift,
                                    tuple(100 * b for b in c.lift.rel_ci), horizontal=True, filled=c.significant, capsize=3,
                                    color=COLORS[(t + 1) % len(COLORS)], label=treatment if s == 0 else None)
        step = len(result.treatments) + 1
        ax.set_yticks([s * step + (len(result.treatments) - 1) / 2 for s in range(len(segments))], segments)
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel(f"lift vs {result.control} (%)")
        ax.set_title(f"{metric.name} ({'higher' if metric.higher_is_better else 'lower'} is better)", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("Relative lift per segment (filled: significant after correction)", fontsize=11)
    return _png(fig)


def per_user_distributions(result: AbResult, limit: int = 4) -> bytes:
    """Histograms of the per-user values behind the per-user metrics (gAUC's user AUC, NDCG, ...)."""
    arms = (result.control, *result.treatments)
    order = ("gauc", "ndcg", "logloss", "ctr")  # per-user values that vary (hr and uctr are 0/1 per user)
    names = [m.name for kind in order for m in result.metrics if m.kind == kind][:limit]
    fig, axes = _figure(max(len(names), 1))
    if not names:
        axes[0].text(0.5, 0.5, "no per-user metric among the chosen metrics", ha="center", va="center")
        axes[0].set_axis_off()
    for ax, name in zip(axes, names):
        values = [result.per_user[arm][name] for arm in arms]
        finite = [v[np.isfinite(v)] for v in values]
        everything = np.concatenate(finite) if finite else np.zeros(0)
        bins = np.histogram_bin_edges(everything, bins=30) if len(everything) else 10
        for i, (arm, v) in enumerate(zip(arms, finite)):
            ax.hist(v, bins=bins, histtype="step", lw=1.5, color=COLORS[i % len(COLORS)],
                    label=f"{arm} (median {np.median(v):.3f})" if len(v) else arm)
        label = {"gauc": "AUC of each user"}.get(name, f"{name} of each user")
        ax.set_xlabel(label)
        ax.set_ylabel("users")
        ax.legend(fontsize=7)
    fig.suptitle("Per-user metric distributions (users who count for the metric)", fontsize=11)
    return _png(fig)
