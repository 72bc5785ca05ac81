"""``recfl bench``: every benchmark of ``tools.bench`` in one run, one table of ratios."""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path


def register(commands) -> None:
    bench = commands.add_parser("bench", help="run the benchmarks and print figures against in-run references")
    bench.add_argument("--quick", action="store_true", help="smaller cases (a smoke run in a few minutes)")
    bench.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    bench.add_argument("--out", default="runs/bench.json", metavar="FILE", help="where to write the figures as JSON")
    bench.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown (for the README)")
    bench.set_defaults(handler=_bench)


def machine() -> dict:
    """What the figures were measured on."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import tensorflow as tf
    import tensorflow_federated as tff

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory, 1), "python": platform.python_version(),
            "tensorflow": tf.__version__, "tensorflow_federated": tff.__version__, "platform": platform.platform()}


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def table(figures: list[dict]) -> str:
    """Markdown table of figures."""
    lines = ["| benchmark | figure | value | reference (same run) | reference value | ratio |", "|---|---|---|---|---|---|"]
    for f in figures:
        ratio = f"{f['ratio']:.3g}x" if f["ratio"] is not None else "-"
        lines.append(f"| {f['benchmark']} | {f['metric']} | {_fmt(f['value'])} {f['unit']} | {f['reference'] or '-'} | "
                     f"{_fmt(f['reference_value'])} | {ratio} |")
    return "\n".join(lines)


def _bench(args) -> int:
    from tqdm import tqdm

    from recfl.errors import RecflError
    from tools.bench import BENCHMARKS

    names = args.only or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise RecflError(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(BENCHMARKS)}")
    figures, seconds = [], {}
    for name in tqdm(names, desc="benchmarks", unit="bench"):
        started = time.time()
        for figure in importlib.import_module(f"tools.bench.{name}").run(args.quick):
            figures.append({**figure.__dict__, "ratio": figure.ratio})
        seconds[name] = round(time.time() - started, 1)
    report = {
        "date": datetime.date.today().isoformat(),
        "command": "recfl " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("recfl") else "recfl bench",
        "machine": machine(), "seconds": seconds, "figures": figures,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    text = table(figures)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    print(text)
    print(f"\n{len(figures)} figures from {len(names)} benchmarks in {sum(seconds.values()):.0f}s; JSON in {out}", file=sys.stderr)
    return 0
