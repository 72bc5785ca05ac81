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

from tqdm import tqdm

from recfl.core.errors import RecflError
from tools.bench import BENCHMARKS


def register(commands) -> None:
    bench = commands.add_parser("bench", help="run the benchmarks and print figures against in-run references")
    size = bench.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="size", action="store_const", const="quick", help="small cases: a smoke run in a few minutes")
    size.add_argument("--scale", dest="size", action="store_const", const="scale",
                      help="add the large cases (100,000 users and clients, 5M pool samples); about 40 minutes on 2 cores")
    bench.set_defaults(size="standard")
    bench.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    bench.add_argument("--out", default="runs/bench.json", metavar="FILE", help="where to write the figures as JSON")
    bench.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    bench.add_argument("--readme", metavar="FILE", help="replace the performance table between the "
                       f"'{START}' and '{END}' lines of FILE (e.g. README.md) with this run's table")
    bench.add_argument("--render", metavar="FILE.json", help="measure nothing: print (and --readme) the table of "
                       "an earlier run's JSON, with that run's command, date and machine")
    bench.set_defaults(handler=_bench)


START, END = "<!-- recfl bench: start -->", "<!-- recfl bench: end -->"


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


def describe(report: dict) -> str:
    """One line: the command, the date, the machine and how long it took."""
    m = report["machine"]
    return (f"`{report['command']}` on {report['date']}: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
            f"Python {m['python']}, TensorFlow {m['tensorflow']}, TFF {m['tensorflow_federated']}; "
            f"{sum(report['seconds'].values()) / 60:.1f} minutes")


def table(figures: list[dict]) -> str:
    """Markdown table of figures."""
    lines = ["| benchmark | figure | value | reference (same run) | reference value | ratio |", "|---|---|---|---|---|---|"]
    for f in figures:
        ratio = f"{f['ratio']:.3g}x" if f["ratio"] is not None else "-"
        lines.append(f"| {f['benchmark']} | {f['metric']} | {_fmt(f['value'])} {f['unit']} | {f['reference'] or '-'} | "
                     f"{_fmt(f['reference_value'])} | {ratio} |")
    return "\n".join(lines)


def _bench(args) -> int:
    names = args.only or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise RecflError(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(BENCHMARKS)}")
    readme = Path(args.readme) if args.readme else None
    if readme is not None:
        _split_at_markers(readme)  # refuse a file without the markers before the measurements
    if args.render:
        report = _read_report(Path(args.render))
    else:
        report = _measure(args, names)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"{len(report['figures'])} figures from {len(names)} benchmarks in {sum(report['seconds'].values()):.0f}s; "
              f"JSON in {out}", file=sys.stderr)
    text = f"{describe(report)}\n\n{table(report['figures'])}"
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if readme is not None:
        head, tail = _split_at_markers(readme)
        readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")
    print(text)
    return 0


def _read_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecflError(f"{path}: no such benchmark report") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        report = None
    if not isinstance(report, dict) or not {"figures", "machine", "command", "date", "seconds"} <= set(report):
        raise RecflError(f"{path}: not a `recfl bench` JSON report")
    return report


def _measure(args, names: list[str]) -> dict:
    """Run the benchmarks ``names`` at ``args.size``; the report as written to JSON."""

    figures, seconds = [], {}
    for name in tqdm(names, desc="benchmarks", unit="bench"):
        started = time.time()
        for figure in importlib.import_module(f"tools.bench.{name}").run(args.size):
            figures.append({**figure.__dict__, "ratio": figure.ratio})
        seconds[name] = round(time.time() - started, 1)
    flags = "" if args.size == "standard" else f" --{args.size}"
    return {
        "date": datetime.date.today().isoformat(),
        "command": f"recfl bench{flags}" + (f" --only {' '.join(names)}" if args.only else ""),
        "size": args.size, "machine": machine(), "seconds": seconds, "figures": figures,
    }


def _split_at_markers(path: Path) -> tuple[str, str]:
    """The text of ``path`` before its START marker and after its END marker."""

    content = path.read_text() if path.is_file() else ""
    if content.count(START) != 1 or content.count(END) != 1 or content.index(START) > content.index(END):
        raise RecflError(f"{path}: needs one '{START}' line and one '{END}' line after it")
    head, rest = content.split(START)
    return head, rest.split(END, 1)[1]
