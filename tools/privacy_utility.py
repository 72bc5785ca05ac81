"""Utility against privacy: test AUC and gAUC of FedSubAvg and FedAvg at several epsilons, several seeds.

For each algorithm and seed, runs ``recfl simulate`` without privacy (the
reference), with ``[privacy]`` but no noise (randomized-response union, secure
sums, clipping: epsilon infinite) and with the noise multiplier calibrated to
each target epsilon; then writes ``utility.json``, a Markdown table (mean and
standard deviation over seeds) and a plot, and measures what the clip norm is
compared with: the L2 norms of clients' unweighted updates at the initial
model (``--clip-norm`` defaults to about their median). Finished runs are reused, so an
interrupted grid continues where it stopped. Usage::

    python -m tools.privacy_utility --data runs/ml100k --out runs/privacy-utility \\
        [--rounds 200] [--seeds 0 1 2] [--epsilons 0.5 2 8 32] [--clip-norm 0.05] [--plot docs/privacy_utility_ml100k.png]

``--algorithms fedavg`` (or ``fedsubavg``) runs one half of the grid, e.g. in a second process.
"""

from __future__ import annotations

import collections
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from recfl.core.atomic import write_json_atomic
from recfl.core.dataset import PreparedDataset
from recfl.core.federated.clients import Population
from recfl.core.federated.computations import build, dense_names
from recfl.core.federated.process import client_input
from recfl.core.federated.runtime import Runtime
from recfl.core.federated.privacy.settings import PrivacyConfig
from recfl.core.federated.simulate import FederatedConfig, simulate
from recfl.core.models import ModelConfig, ModelSpec, init_params, vocabulary_sizes
from tools.fl_convergence import grid_parser

ALGORITHMS = ("fedsubavg", "fedavg")
METRICS = ("test_auc", "test_gauc")
LABELS = {"off": "without privacy", "no noise": "[privacy], no noise"}  # the table's names of the settings


def settings(epsilons: list[float], clip: float) -> dict[str, PrivacyConfig]:
    """The grid's privacy settings by name: off, on without noise, on at each target epsilon."""
    on = PrivacyConfig(enabled=True, clip_norm=clip, noise_multiplier=0.0)
    return {"off": PrivacyConfig(), "no noise": on, **{f"eps {e:g}": replace(on, target_epsilon=e) for e in epsilons}}


def _run(data: PreparedDataset, out: Path, fed: FederatedConfig, privacy: PrivacyConfig) -> dict:
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    return simulate(data, out, fed, resume=(out / "checkpoint.npz").is_file(), progress=False, privacy=privacy)


def update_norms(data: PreparedDataset, fed: FederatedConfig, clients: int = 100) -> np.ndarray:
    """L2 norms of the unweighted updates (rows and dense layers) of ``clients`` clients at the initial model."""
    spec = ModelSpec.build(ModelConfig(), vocabulary_sizes(data))
    population, params = Population(data, spec), init_params(spec, ModelConfig().init_seed)
    chosen = np.random.default_rng(0).choice(len(population), size=min(clients, len(population)), replace=False)
    dense = collections.OrderedDict((n, params.dense[n]) for n in dense_names(spec))
    with Runtime() as runtime:
        uploads = [runtime.invoke(build(spec, fed.work).client_work, (dense, client_input(c, params, (0, k))))
                   for k, c in enumerate(population.clients(np.sort(chosen)))]
    return np.array([np.sqrt(sum(np.sum(np.square(np.asarray(a, np.float64))) for a in
                                 [*(u["tables"][t]["rows"] for t in u["tables"]), *u["dense"].values()])) / float(u["examples"])
                     for u in uploads])


def _span(values: list) -> str:
    """A figure that varies over seeds (e.g. the epsilon against the server): its range, rounded."""
    low, high = (f"{v:.3g}" if isinstance(v, float) else str(v) for v in (min(values, key=float), max(values, key=float)))
    return low if low == high else f"{low}-{high}"


def _cell(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = grid_parser(__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 2.0, 8.0, 32.0])
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    parser.add_argument("--clip-norm", type=float, default=0.05)
    parser.add_argument("--plot", help="also save the plot here (e.g. docs/privacy_utility_ml100k.png)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    data, out = PreparedDataset(args.data), Path(args.out)
    grid = settings(args.epsilons, args.clip_norm)
    runs = {}
    for algorithm in args.algorithms:
        for name, privacy in grid.items():
            for seed in args.seeds:
                fed = FederatedConfig(algorithm=algorithm, rounds=args.rounds, clients_per_round=args.clients_per_round,
                                      client_lr=args.client_lr, eval_every=args.rounds, seed=seed)
                summary = _run(data, out / f"{algorithm}-{name.replace(' ', '')}-seed{seed}", fed, privacy)
                runs[algorithm, name, seed] = summary
                logging.info("%s, %s, seed %d: %s", algorithm, name, seed, summary["final"])

    rows = []
    for algorithm in args.algorithms:
        for name in grid:
            done = [runs[algorithm, name, s] for s in args.seeds]
            budgets = [r.get("privacy", {}) for r in done]
            rows.append({"algorithm": algorithm, "setting": name,
                         "epsilon": budgets[0].get("epsilon", "-") if name != "off" else "-",
                         "epsilon_known_cohort": _span([b["epsilon_known_cohort"] for b in budgets]) if name != "off" else "-",
                         "noise_multiplier": budgets[0].get("noise_multiplier", "-") if name != "off" else "-",
                         **{m: [r["final"][m] for r in done] for m in METRICS}})
    norms = update_norms(data, FederatedConfig(clients_per_round=args.clients_per_round, client_lr=args.client_lr))
    quantiles = {f"p{q}": round(float(np.percentile(norms, q)), 4) for q in (10, 50, 90)}
    result = {"data": str(data.root), "rows": rows, "update_norms_at_start": quantiles, "settings": {k: v for k, v in vars(args).items() if k not in ("data", "out", "plot")},
              "privacy": {k: v for k, v in budgets[0].items() if k not in ("epsilon", "noise_multiplier")}}
    write_json_atomic(out / "utility.json", result)
    lines = ["| algorithm | setting | epsilon (delta 1e-5) | epsilon against the server | noise multiplier | test AUC | test gAUC |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['algorithm']} | {LABELS.get(row['setting'], '[privacy], ' + row['setting'])} | {row['epsilon']} | "
                     f"{row['epsilon_known_cohort']} | {row['noise_multiplier']} | {_cell(row['test_auc'])} | {_cell(row['test_gauc'])} |")
    lines += ["", f"Clip norm {args.clip_norm}; L2 norm of a client's unweighted update at the initial model "
                  f"(100 clients): median {quantiles['p50']}, 10th-90th percentile {quantiles['p10']}-{quantiles['p90']}."]
    (out / "utility.md").write_text("\n".join(lines) + "\n")
    _plot(rows, args, out / "utility.png", data)
    if args.plot:
        Path(args.plot).write_bytes((out / "utility.png").read_bytes())
    print((out / "utility.md").read_text())
    return 0


def _plot(rows: list[dict], args, path: Path, data: PreparedDataset) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    right = 2 * max(args.epsilons)  # where "no noise" (epsilon infinite) is drawn
    for ax, metric, title in zip(axes, METRICS, ("test AUC", "test gAUC")):
        for algorithm, color in zip(ALGORITHMS, ("tab:red", "tab:blue")):
            mine = [r for r in rows if r["algorithm"] == algorithm]
            if not mine:
                continue
            noisy = [r for r in mine if r["setting"].startswith("eps")] + [r for r in mine if r["setting"] == "no noise"]
            x = [r["epsilon"] if r["setting"] != "no noise" else right for r in noisy]
            y, err = [np.mean(r[metric]) for r in noisy], [np.std(r[metric]) for r in noisy]
            ax.errorbar(x, y, yerr=err, color=color, marker="o", capsize=3, label=f"{algorithm} with [privacy]")
            reference = next(r for r in mine if r["setting"] == "off")
            ax.axhline(np.mean(reference[metric]), color=color, ls="--", lw=1, label=f"{algorithm} without privacy")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks([*args.epsilons, right], [f"{e:g}" for e in args.epsilons] + ["no noise"])
        ax.set_xlabel(f"epsilon (delta 1e-5, {args.rounds} rounds)")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Utility against privacy, {data.manifest['source']}, {args.clients_per_round} clients/round, "
                 f"clip {args.clip_norm}, seeds {args.seeds} (mean ± std)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
