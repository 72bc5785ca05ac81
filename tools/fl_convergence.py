"""FedSubAvg vs FedAvg convergence: rounds to a target test AUC over several seeds.

Runs ``recfl simulate`` for both algorithms and each seed on one prepared
data set (one client per user, same settings otherwise), chooses the target
from the FedAvg curve (98% of FedAvg's mean final gain over chance, so FedAvg
reaches it near its end) and reports rounds-to-target per run, a Markdown
table and a plot. Usage::

    python -m tools.fl_convergence --data runs/ml100k --out runs/fl-convergence [--rounds 200] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from recfl.core.atomic import write_json_atomic
from recfl.core.dataset import PreparedDataset
from recfl.core.federated.simulate import FederatedConfig, simulate

ALGORITHMS = ("fedavg", "fedsubavg")


def curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "test_auc" in r]
    return np.array([r["round"] for r in rows]), np.array([r["test_auc"] for r in rows])


def rounds_to(target: float, rounds: np.ndarray, auc: np.ndarray) -> int | None:
    hit = np.flatnonzero(auc >= target)
    return int(rounds[hit[0]]) if hit.size else None


def grid_parser(description: str) -> argparse.ArgumentParser:
    """The arguments of a grid of ``recfl simulate`` runs on MovieLens-sized data: where, how long, which seeds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--clients-per-round", type=int, default=50)
    parser.add_argument("--client-lr", type=float, default=0.1)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = grid_parser(__doc__.splitlines()[0])
    parser.add_argument("--eval-every", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    data, out = PreparedDataset(args.data), Path(args.out)
    curves = {}
    for algorithm in ALGORITHMS:
        for seed in args.seeds:
            run = out / f"{algorithm}-seed{seed}"
            fed = FederatedConfig(algorithm=algorithm, rounds=args.rounds, clients_per_round=args.clients_per_round,
                                  client_lr=args.client_lr, eval_every=args.eval_every, seed=seed)
            if not (run / "summary.json").is_file():
                simulate(data, run, fed, resume=(run / "checkpoint.npz").is_file())
            curves[algorithm, seed] = curve(run)

    final = np.mean([curves["fedavg", s][1][-1] for s in args.seeds])
    target = 0.5 + 0.98 * (final - 0.5)
    table = {a: [rounds_to(target, *curves[a, s]) for s in args.seeds] for a in ALGORITHMS}
    result = {"data": str(data.root), "target_auc": target, "rounds_to_target": table,
              "final_auc": {a: [float(curves[a, s][1][-1]) for s in args.seeds] for a in ALGORITHMS},
              "settings": {k: v for k, v in vars(args).items() if k not in ("data", "out")}}
    write_json_atomic(out / "convergence.json", result)

    lines = [f"Target test AUC {target:.4f} (98% of FedAvg's mean final gain over 0.5).", "",
             "| algorithm | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean rounds to target | mean final AUC |",
             "|---|" + "---|" * (len(args.seeds) + 2)]
    for a in ALGORITHMS:
        hits = [r for r in table[a] if r is not None]
        mean = f"{np.mean(hits):.1f}" if len(hits) == len(args.seeds) else f"{len(hits)}/{len(args.seeds)} reached"
        cells = " | ".join(str(r) if r is not None else "not reached" for r in table[a])
        lines.append(f"| {a} | {cells} | {mean} | {np.mean(result['final_auc'][a]):.4f} |")
    (out / "convergence.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for a, color in zip(ALGORITHMS, ("tab:blue", "tab:red")):
        for s in args.seeds:
            r, auc = curves[a, s]
            ax.plot(r, auc, color=color, alpha=0.8, lw=1.2, label=a if s == args.seeds[0] else None)
    ax.axhline(target, color="gray", ls="--", lw=1, label=f"target {target:.3f}")
    ax.set_xlabel("round")
    ax.set_ylabel("test AUC")
    ax.set_title(f"FedSubAvg vs FedAvg, {Path(data.manifest['path']).name or data.manifest['source']}, "
                 f"{args.clients_per_round} clients/round, seeds {args.seeds}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "convergence.png", dpi=120)
    print((out / "convergence.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
