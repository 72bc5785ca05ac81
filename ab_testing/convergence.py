"""The A/B report's federated convergence section: test AUC and gAUC per round of the federated runs whose
global models are among the arms (``recfl run``'s ``fedsubavg`` and ``fedavg`` stages, from their ``metrics.jsonl``)."""

from __future__ import annotations

from ab_testing.plots import COLORS, _figure, _png
from ab_testing.report import Heading, Image, Para

CURVES = (("test_auc", "test AUC"), ("test_gauc", "test gAUC"))


def convergence_blocks(curves: dict[str, list[dict]]) -> list:
    """Report blocks for ``{algorithm: its metrics.jsonl records}``: none when no round was evaluated."""
    evaluated = {name: [r for r in records if "test_auc" in r] for name, records in curves.items()}
    evaluated = {name: records for name, records in evaluated.items() if records}
    if not evaluated:
        return []
    last = "; ".join(f"{name}: round {rs[-1]['round']}, AUC {rs[-1]['test_auc']:.4f}, gAUC {rs[-1]['test_gauc']:.4f}"
                     for name, rs in evaluated.items())
    return [Heading("Federated convergence"),
            Para("Test AUC and gAUC of each federated run's global model on the test events of all its clients "
                 f"(the device users), in the rounds it was evaluated. Last evaluated: {last}."),
            Image("convergence.png", convergence_plot(evaluated), "test AUC and gAUC per federated round")]


def convergence_plot(curves: dict[str, list[dict]]) -> bytes:
    """One panel per metric, one line per federated run."""
    fig, axes = _figure(len(CURVES), width=4.2)
    for ax, (key, label) in zip(axes, CURVES):
        for i, (name, records) in enumerate(curves.items()):
            ax.plot([r["round"] for r in records], [r[key] for r in records], "o-", ms=3, color=COLORS[(i + 1) % len(COLORS)],
                    label=name)
        ax.set_xlabel("round")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Federated convergence", fontsize=11)
    return _png(fig)
