"""The evaluation report: ``report.json`` (everything, per task) and ``report.html`` (one self-contained
page: plots embedded as PNG, tables, examples) that a browser or the VS Code extension can open offline.

The page leads with the verdicts (each comparison's headline and every family's metric, with the paired
bootstrap 95% interval), plots the paired differences with their intervals and each model's scores with
its own interval as error bars, then tables and examples."""

from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path

from agent.errors import SwespotError

METRICS = (  # (family, key, label, lower is better)
    ("line", "loss", "line: loss (nats/token)", True),
    ("body", "loss", "body: loss (nats/token)", True),
    ("infill", "loss", "infill: loss (nats/token)", True),
    ("design", "loss", "design: answer loss", True),
    ("facts", "loss", "facts: answer loss", True),
    ("line", "exact", "line: exact match", False),
    ("line", "similarity", "line: edit similarity", False),
    ("body", "similarity", "body: edit similarity", False),
    ("infill", "exact", "infill: exact match", False),
    ("infill", "similarity", "infill: edit similarity", False),
    ("design", "exact", "design: accuracy", False),
    ("facts", "exact", "facts: accuracy", False),
    ("replay", "resolved", "replay: resolved", False),
    ("replay", "similarity", "replay: diff similarity", False),
)


VERDICT_COLOURS = {"better": "#2e7d32", "worse": "#c62828", "no measurable change": "#616161"}


METRIC_NAMES = {"loss": "loss", "exact": "exact match", "similarity": "edit similarity", "resolved": "resolved"}


def metric_label(family: str, metric: str) -> str:
    if family in ("design", "facts") and metric == "exact":
        return f"{family} accuracy"
    return f"{family} {METRIC_NAMES.get(metric, metric)}"


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _plot(report: dict, metrics, title: str) -> str | None:
    """A grouped bar chart (one group per metric, one bar per model) with each model's bootstrap 95%
    interval as error bars, as a base64 PNG, or None."""
    models = list(report["models"])
    shown = [(f, k, label) for f, k, label, _ in metrics
             if any(report["models"][m]["families"].get(f, {}).get(k) is not None for m in models)]
    if not shown or not models:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(shown) + 2), 3.8), dpi=110)
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        fams = report["models"][model]["families"]
        values = [fams.get(f, {}).get(k) or 0.0 for f, k, _ in shown]
        cis = [fams.get(f, {}).get(f"{k}_ci") for f, k, _ in shown]
        err = [[v - ci[0] if ci else 0.0 for v, ci in zip(values, cis)], [ci[1] - v if ci else 0.0 for v, ci in zip(values, cis)]]
        bars = ax.bar([x + i * width for x in range(len(shown))], values, width, label=model, yerr=err, capsize=3,
                      error_kw={"elinewidth": 1})
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(shown))], [label for _, _, label in shown], fontsize=8)
    ax.set_title(title + " — error bars: bootstrap 95% interval over tasks", fontsize=9)
    ax.legend(fontsize=8)
    return _png(fig)


def _forest(comparison: dict) -> str | None:
    """The paired differences of one comparison with their 95% intervals: losses in percent of the
    reference (left), scores in points (right); coloured by verdict."""
    head = comparison.get("headline")
    loss = ([(head["label"] + " (headline)", head)] if head else []) + [
        (f"{fam} loss", entry["metrics"]["loss"]) for fam, entry in comparison["families"].items() if "loss" in entry["metrics"]]
    loss = [(label, st) for label, st in loss if st.get("rel") is not None]
    scores = [(metric_label(fam, key), st) for fam, entry in comparison["families"].items()
              for key, st in entry["metrics"].items() if key != "loss"]
    panels = [(rows, kind) for rows, kind in ((loss, "loss"), (scores, "score")) if rows]
    if not panels:
        return None
    plt = _pyplot()
    height = 0.9 + 0.32 * max(len(rows) for rows, _ in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), height), dpi=110, squeeze=False)
    for ax, (rows, kind) in zip(axes[0], panels):
        for y, (_label, st) in enumerate(reversed(rows)):
            scale, lo_key, hi_key, mid_key = ((100, "rel_lo", "rel_hi", "rel") if kind == "loss" else (100, "lo", "hi", "delta"))
            mid = scale * st[mid_key]
            colour = VERDICT_COLOURS.get(st["verdict"], "#616161")
            if st[lo_key] is not None:
                ax.errorbar(mid, y, xerr=[[mid - scale * st[lo_key]], [scale * st[hi_key] - mid]], fmt="o", color=colour, capsize=3)
            else:
                ax.plot(mid, y, "o", mfc="none", color=colour)
        ax.axvline(0, color="#999", lw=1)
        ax.set_yticks(range(len(rows)), [label for label, _ in reversed(rows)], fontsize=8)
        ax.set_xlabel("change of per-token loss, % of the reference (left is better)" if kind == "loss"
                      else "change in points (right is better)", fontsize=8)
    fig.suptitle(f"{comparison['candidate']} − {comparison['reference']}: paired bootstrap 95% intervals "
                 "(green better, red worse, grey no measurable change)", fontsize=9)
    return _png(fig)


def cell(entry: dict, key: str) -> str:
    """A value with its interval: "2.4521 [2.40, 2.51]"."""
    value, ci = entry.get(key), entry.get(f"{key}_ci")
    if value is None:
        return "–"
    return f"{value:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _table(report: dict) -> str:
    models = list(report["models"])
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    rows = []
    for fam, key, label, lower in METRICS:
        entries = [report["models"][m]["families"].get(fam, {}) for m in models]
        values = [e.get(key) for e in entries]
        if all(v is None for v in values):
            continue
        present = [v for v in values if v is not None]
        best = min(present) if lower else max(present)
        cells = "".join(
            f"<td{' class=best' if v == best and len(set(present)) > 1 else ''}>{html.escape(cell(e, key))}</td>"
            for v, e in zip(values, entries))
        rows.append(f"<tr><td>{html.escape(label)}{' ↓' if lower else ' ↑'}</td>{cells}</tr>")
    for key, label in (("turns", "replay: turns per task"), ("tokens", "replay: tokens per task")):
        values = [report["models"][m]["families"].get("replay", {}).get(key) for m in models]
        if any(v is not None for v in values):
            rows.append(f"<tr><td>{label}</td>" + "".join(f"<td>{'–' if v is None else f'{v:.1f}'}</td>" for v in values) + "</tr>")
    rows.append("<tr><td>task time (s, summed; runtimes run side by side)</td>"
                + "".join(f"<td>{report['models'][m]['seconds']:.1f}</td>" for m in models) + "</tr>")
    return f"<table><tr><th>metric (mean [95% interval])</th>{head}</tr>{''.join(rows)}</table>"


def _verdicts(comparison: dict) -> str:
    items = "".join(
        f"<li class='{stats['verdict'].split()[0]}'>{html.escape(stats['line'])}</li>"
        for entry in comparison["families"].values() for stats in entry["metrics"].values())
    return (f"<h2>{html.escape(comparison['candidate'])} vs {html.escape(comparison['reference'])}</h2>"
            f"<p class='headline {comparison['verdict'].split()[0]}'>{html.escape(comparison['line'])}</p>"
            f"<p>Paired over the same tasks; 95% intervals from {comparison['resamples']:,} bootstrap resamples of the tasks "
            "(for the token-weighted loss the ratio is recomputed on each); the verdict is read from the interval, "
            f"never from the point estimate.</p><ul>{items}</ul>")


def _examples(report: dict, per_family: int = 3) -> str:
    tasks = {t["id"]: t for t in report.get("task_list", [])}
    out = []
    for fam in ("line", "body", "design", "facts"):
        ids = [t["id"] for t in report.get("task_list", []) if t["family"] == fam][:per_family]
        for tid in ids:
            task = tasks[tid]
            got = "".join(
                f"<div><b>{html.escape(r['model'])}</b> (loss {r.get('loss', float('nan')):.3f}"
                + (f", {'✓' if r.get('exact') else '✗'}, sim {r['similarity']:.2f})<pre>{html.escape(str(r.get('completion') or '')[:600])}</pre>"
                   if r.get("similarity") is not None else ", scored by loss only)") + "</div>"
                for r in report["rows"] if r["task"] == tid)
            where = html.escape(f"{task['path'] or ''} @ {task['commit'][:10]}" if task["commit"] else task["path"] or "")
            ask = "" if fam not in ("design", "facts") else f"<p>{html.escape(task['prompt'])}</p>"
            out.append(f"<details><summary>{fam}: {where}</summary>{ask}<div><b>real</b><pre>{html.escape(task['target'][:600])}</pre></div>{got}</details>")
    return "".join(out)


def render_html(report: dict) -> str:
    plots = [p for p in (
        _plot(report, [m for m in METRICS if m[3]], "Held-out per-token loss (lower is better)"),
        _plot(report, [m for m in METRICS if not m[3]], "Scores (higher is better)"),
    ) if p]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(report.get("created_at", time.time())))
    counts = ", ".join(f"{n} {fam}" for fam, n in report["tasks"].items())
    generated = report.get("generated") or {}
    gen = "; ".join(f"{n} of the {fam} tasks also generated (exact match, edit similarity), all scored by loss"
                    for fam, n in generated.items() if n < report["tasks"].get(fam, 0))
    body = (
        f"<h1>SWE-Spot evaluation</h1><p>Repository <code>{html.escape(report['repo'])}</code>; knowledge cutoff "
        f"<code>{report['cutoff'][:10]}</code>; tasks from the commits after it up to <code>{report['until'][:10]}</code> "
        f"({html.escape(counts)}{'; ' + html.escape(gen) if gen else ''}); profile {html.escape(report['profile'])}; "
        f"{when}; {report['seconds']:.0f} s.</p>"
    )
    for family, why in (report.get("left_out") or {}).items():
        body += f"<p>The {html.escape(family)} family is left out: {html.escape(why)}.</p>"
    chats = [m for m, entry in (report.get("models") or {}).items() if entry.get("chat_adapter")]
    if chats:
        body += (f"<p>Design and facts questions were answered by the chat adapter of {html.escape(', '.join(chats))} "
                 "(as the chat panel is served); code tasks by its code adapter.</p>")
    if not report["models"]:
        body += "<p><b>No held-out tasks:</b> no commit after the cutoff changed code this evaluation can use.</p>"
    else:
        for comparison in (report.get("comparisons") or {}).values():
            forest = _forest(comparison)
            body += _verdicts(comparison) + (f'<img alt="paired differences" src="data:image/png;base64,{forest}">' if forest else "")
        body += "<h2>Scores</h2>" + _table(report) + "".join(f'<img alt="plot" src="data:image/png;base64,{p}">' for p in plots)
        body += "<h2>Examples</h2>" + _examples(report)
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 10px;text-align:right}"
             "td:first-child{text-align:left}.best{font-weight:bold;background:#e6f4e6}img{max-width:100%;display:block;margin:1em 0}"
             "pre{background:#f4f4f4;padding:6px;white-space:pre-wrap}details{margin:.4em 0}"
             ".headline{font-size:1.15em;font-weight:bold}.better{color:#2e7d32}.worse{color:#c62828}.no{color:#424242}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>SWE-Spot evaluation</title><style>{style}</style></head><body>{body}</body></html>"


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        json_path, html_path = out / "report.json", out / "report.html"
        json_path.write_text(json.dumps(report, indent=2, default=str))
        html_path.write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        raise SwespotError(f"could not write the evaluation report to {out}: {exc}") from exc
    return json_path, html_path
