"""The A/B report: report.md, a self-contained report.html (plots embedded as PNG) and metrics.json.

Both documents are rendered from one list of blocks (headings, paragraphs,
bullets, tables, images), so they always say the same thing. The report is
written for a reader who did not run it: what was compared, on how many users
and events, which differences are significant, and what could make them wrong.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ab_testing import plots
from ab_testing.evaluate import AbResult, Comparison
from recfl.core.atomic import write_json_atomic


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str  # **bold** is the only markup


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Image:
    name: str  # file name under plots/ for the Markdown report
    png: bytes
    alt: str


def num(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def signed(x: float, digits: int = 4) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:+.{digits}f}"


def pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:+.2f}%"


def interval(ci: tuple[float, float], fmt=signed) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def p_text(p: float) -> str:
    return "n/a" if not math.isfinite(p) else (f"{p:.1e}" if p < 1e-4 else f"{p:.4f}")


def verdict(c: Comparison) -> str:
    if c.better is None:
        return "no significant difference"
    return "**better**" if c.better else "**worse**"


def blocks(result: AbResult, extra: Sequence = ()) -> list:
    """The report's content, top to bottom; ``extra`` blocks (e.g. the federated convergence) before the method."""
    cfg = result.config
    arms = (result.control, *result.treatments)
    overall = [c for c in result.comparisons if c.segment == "all"]
    design = ("**paired**: every arm scored the same users and events, and the bootstrap resamples users jointly "
              "for all arms" if cfg.design == "paired" else
              f"**bucketed**: users hashed (salt {cfg.salt!r}) into {cfg.buckets} buckets split between the arms as in "
              "an online experiment; each arm is evaluated on its own users only and resampled on its own")
    out: list = [
        Heading(f"A/B report: {', '.join(result.treatments)} vs control {result.control}", 1),
        Para(f"Compared {len(result.treatments)} treatment arm(s) with the control **{result.control}** on "
             + ", ".join(f"{a.arm}: {a.users:,} users / {a.events:,} events" for a in result.arms) + f". Design: {design}."),
        Para(f"Intervals: {cfg.confidence:.0%} percentile bootstrap over {_resampled(result)}, {cfg.bootstrap:,} resamples (seed {cfg.seed}). "
             f"p-values: two-sided, difference over its bootstrap standard error; "
             + ({"holm": "Holm-adjusted (family-wise error)", "bh": "Benjamini-Hochberg-adjusted (false discovery rate)",
                 "none": "not adjusted"}[cfg.correction])
             + f" over the {len(overall)} overall comparisons (the segment breakdown is a separate family). "
             f"Significant: adjusted p < {1 - cfg.confidence:.2g}."),
    ]
    if result.warnings:
        out += [Heading("Warnings"), Bullets([f"**{w}**" if w.startswith("SAMPLE RATIO") else w for w in result.warnings])]
    out += [Heading("Verdict"), Bullets([_verdict_line(result, t, overall) for t in result.treatments])]
    partial = [m.name for m in result.metrics if m.kind in ("gauc", "hr", "ndcg")]  # metrics some users do not count in
    out += [Heading("Arms"), Table(
        ["arm", "predictions", "users", "events", "positives", *[f"users counted in {m}" for m in partial]],
        [[a.arm, a.source, f"{a.users:,}", f"{a.events:,}", f"{a.positives:,} ({a.positives / max(a.events, 1):.1%})",
          *[f"{a.counted_users[m]:,} ({a.users - a.counted_users[m]:,} excluded)" for m in partial]] for a in result.arms])]
    if result.assignment is not None:
        a, srm = result.assignment, result.assignment.srm
        out += [Heading("Assignment and sample-ratio check"), Table(
            ["arm", "buckets", "users hashed to it", "of them without predictions", "evaluated users", "expected users"],
            [[arm, f"{a.ranges[arm][0]}-{a.ranges[arm][1] - 1}", f"{a.assigned[arm]:,}", f"{a.missing[arm]:,}",
              f"{srm.observed[arm]:,}", f"{srm.expected[arm]:,.1f}"] for arm in arms]),
            Para(f"Chi-square {num(srm.chi2, 2)}, p = {p_text(srm.p_value)}: "
                 + ("**sample ratio mismatch** (p < %g)." % srm.alpha if srm.mismatch else
                    f"no sample ratio mismatch (threshold p < {srm.alpha:g})."))]
    out += [Heading("Metrics per arm (all users)"), Table(
        ["metric", *arms],
        [[m.name, *[_value(result, arm, "all", m.name) for arm in arms]] for m in result.metrics]),
        Image("metrics.png", plots.metric_per_arm(result), "metric per arm with intervals")]
    out += [Heading(f"Lifts vs {result.control}"), _lift_table(overall, with_segment=False)]
    if result.seeds:
        out += _seed_blocks(result)
    segments = [s for s in result.segment_users if s != "all"]
    if segments:
        out += [Heading("Segments"), Para(f"Users by activity: {result.segment_rule}."), Table(
            ["segment", *arms], [[s, *[f"{result.segment_users[s][arm]:,}" for arm in arms]] for s in segments]),
            _lift_table([c for c in result.comparisons if c.segment != "all"], with_segment=True)]
    out += [Image("lifts.png", plots.lift_per_segment(result), "relative lift per segment with intervals"),
            Heading("Per-user distributions"),
            Image("per_user.png", plots.per_user_distributions(result), "per-user metric distributions"), *extra]
    out += [Heading("Method"), Bullets(
        [f"**{m.name}**: {m.description}." for m in result.metrics] + [
            "Ranking metrics rank each user's own test events by score; tied scores count in random order "
            "(expected value), like the half credit AUC gives ties.",
            "Bootstrap: users are drawn with replacement (multinomial counts), every metric is recomputed from "
            "per-user sums; global AUC exactly from the resampled events.",
            "Guards: NaN/inf scores, scores outside [0, 1] for logloss, duplicate (user, item, timestamp) rows and, in "
            "the paired design, arms scoring different events or labels stop the evaluation; the bucketed design "
            "checks the users per arm for a sample ratio mismatch (chi-square).",
        ])]
    return out


def _resampled(result: AbResult) -> str:
    if not result.seeds:
        return "users"
    return (f"{len(result.seeds)} runs and users (each value is the mean over the runs; a resample draws the runs with "
            "replacement and the users with replacement, the same users for every drawn run)")


def _seed_blocks(result: AbResult) -> list:
    """Each run's own lift (interval over users only) next to the pooled one: how much the seeds disagree."""
    own = [x for x in result.seed_lifts if x.segment == "all"]
    pooled = {(c.treatment, c.metric): c.lift for c in result.comparisons if c.segment == "all"}
    return [Heading("Lift per seed"), Para(
        f"Pooled over {len(result.seeds)} runs: {', '.join(result.seeds)}. Each run's own lift with its interval over "
        "users alone; the pooled interval above also covers the spread between runs."), Table(
        ["treatment", "metric", "pooled lift [CI]", *result.seeds],
        [[t, m, f"{signed(pooled[t, m].abs_lift)} {interval(pooled[t, m].abs_ci)}",
          *[f"{signed(x.abs_lift)} {interval(x.abs_ci)}" for x in own if (x.treatment, x.metric) == (t, m)]]
         for t, m in pooled])]


def _value(result: AbResult, arm: str, segment: str, metric: str) -> str:
    v = next(v for v in result.values if (v.arm, v.segment, v.metric) == (arm, segment, metric))
    return f"{num(v.value)} {interval(v.ci, num)}"


def _lift_table(comparisons: list[Comparison], with_segment: bool) -> Table:
    head = ["treatment", *(["segment"] if with_segment else []), "metric", "control", "treatment value",
            "abs. lift [CI]", "rel. lift [CI]", "p", "p adjusted", "verdict"]
    rows = [[c.treatment, *([c.segment] if with_segment else []), c.metric, num(c.lift.control_value), num(c.lift.treatment_value),
             f"{signed(c.lift.abs_lift)} {interval(c.lift.abs_ci)}", f"{pct(c.lift.rel_lift)} {interval(c.lift.rel_ci, pct)}",
             p_text(c.lift.p_value), p_text(c.p_adjusted), verdict(c)] for c in comparisons]
    return Table(head, rows)


def _verdict_line(result: AbResult, treatment: str, overall: list[Comparison]) -> str:
    mine = [c for c in overall if c.treatment == treatment]
    groups = [("better on", [c for c in mine if c.better is True]), ("worse on", [c for c in mine if c.better is False]),
              ("no significant difference on", [c for c in mine if c.better is None])]
    parts = [f"{label} " + ", ".join(f"{c.metric} ({pct(c.lift.rel_lift)})" for c in cs) for label, cs in groups if cs]
    return f"**{treatment}** vs {result.control}: " + "; ".join(parts) + "."


def to_markdown(content: list) -> str:
    lines: list[str] = []
    for block in content:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Para):
            lines += [block.text, ""]
        elif isinstance(block, Bullets):
            lines += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, Table):
            lines += ["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in block.rows] + [""]
        elif isinstance(block, Image):
            lines += [f"![{block.alt}](plots/{block.name})", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}img{max-width:100%;margin:1em 0}li{margin:0.3em 0}"""


def to_html(content: list) -> str:
    title = next((b.text for b in content if isinstance(b, Heading)), "A/B report")
    parts = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">", f"<title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body>"]
    for block in content:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            parts.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Bullets):
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in block.header)
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, Image):
            data = base64.b64encode(block.png).decode("ascii")
            parts.append(f"<img alt=\"{html.escape(block.alt)}\" src=\"data:image/png;base64,{data}\">")
    parts.append("</body></html>")
    return "\n".join(parts)


def _json_safe(value):
    """NaN and infinities as null and numpy scalars as Python ones, so metrics.json is strict, typed JSON."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(result: AbResult, out: str | Path, extra: Sequence = ()) -> dict[str, str]:
    """Write report.md (+ plots/), report.html and metrics.json under ``out`` (``extra`` blocks in both reports);
    returns their paths."""
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    content = blocks(result, extra)
    for block in content:
        if isinstance(block, Image):
            (out / "plots" / block.name).write_bytes(block.png)
    (out / "report.md").write_text(to_markdown(content))
    (out / "report.html").write_text(to_html(content))
    write_json_atomic(out / "metrics.json", _json_safe(result.to_json()))
    return {name: str(out / name) for name in ("report.html", "report.md", "metrics.json")}
