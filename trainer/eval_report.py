"""The evaluation report: ``report.json`` (everything, per task) and ``report.html`` (one self-contained
page: plots embedded as PNG, tables, examples) that a browser or the VS Code extension can open offline."""

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
    ("design", "loss", "design: answer loss", True),
    ("line", "exact", "line: exact match", False),
    ("line", "similarity", "line: edit similarity", False),
    ("body", "similarity", "body: edit similarity", False),
    ("design", "exact", "design: accuracy", False),
    ("replay", "resolved", "replay: resolved", False),
    ("replay", "similarity", "replay: diff similarity", False),
)


def _plot(report: dict, metrics, title: str) -> str | None:
    """A grouped bar chart (one group per metric, one bar per model) as a base64 PNG, or None."""
    import matplotlib

    matplotlib.use("Agg")  # no display, no GUI toolkit
    import matplotlib.pyplot as plt

    models = list(report["models"])
    shown = [(f, k, label) for f, k, label, _ in metrics
             if any(report["models"][m]["families"].get(f, {}).get(k) is not None for m in models)]
    if not shown or not models:
        return None
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(shown) + 2), 3.6), dpi=110)
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        values = [report["models"][model]["families"].get(f, {}).get(k) or 0.0 for f, k, _ in shown]
        bars = ax.bar([x + i * width for x in range(len(shown))], values, width, label=model)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(shown))], [label for _, _, label in shown], fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _table(report: dict) -> str:
    models = list(report["models"])
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    rows = []
    for fam, key, label, lower in METRICS:
        values = [report["models"][m]["families"].get(fam, {}).get(key) for m in models]
        if all(v is None for v in values):
            continue
        present = [v for v in values if v is not None]
        best = min(present) if lower else max(present)
        cells = "".join(
            "<td>–</td>" if v is None else f"<td{' class=best' if v == best and len(set(present)) > 1 else ''}>{v:.4f}</td>"
            for v in values)
        rows.append(f"<tr><td>{html.escape(label)}{' ↓' if lower else ' ↑'}</td>{cells}</tr>")
    for key, label in (("turns", "replay: turns per task"), ("tokens", "replay: tokens per task")):
        values = [report["models"][m]["families"].get("replay", {}).get(key) for m in models]
        if any(v is not None for v in values):
            rows.append(f"<tr><td>{label}</td>" + "".join(f"<td>{'–' if v is None else f'{v:.1f}'}</td>" for v in values) + "</tr>")
    rows.append("<tr><td>wall time (s)</td>" + "".join(f"<td>{report['models'][m]['seconds']:.1f}</td>" for m in models) + "</tr>")
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"


def _examples(report: dict, per_family: int = 3) -> str:
    tasks = {t["id"]: t for t in report.get("task_list", [])}
    out = []
    for fam in ("line", "body", "design"):
        ids = [t["id"] for t in report.get("task_list", []) if t["family"] == fam][:per_family]
        for tid in ids:
            task = tasks[tid]
            got = "".join(
                f"<div><b>{html.escape(r['model'])}</b> ({'✓' if r.get('exact') else '✗'}, sim {r.get('similarity', 0):.2f}, "
                f"loss {r.get('loss', float('nan')):.3f})<pre>{html.escape(str(r.get('completion', ''))[:600])}</pre></div>"
                for r in report["rows"] if r["task"] == tid)
            where = html.escape(f"{task['path'] or ''} @ {task['commit'][:10]}" if task["commit"] else task["path"] or "")
            ask = "" if fam != "design" else f"<p>{html.escape(task['prompt'])}</p>"
            out.append(f"<details><summary>{fam}: {where}</summary>{ask}<div><b>real</b><pre>{html.escape(task['target'][:600])}</pre></div>{got}</details>")
    return "".join(out)


def render_html(report: dict) -> str:
    plots = [p for p in (
        _plot(report, [m for m in METRICS if m[3]], "Held-out per-token loss (lower is better)"),
        _plot(report, [m for m in METRICS if not m[3]], "Scores (higher is better)"),
    ) if p]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(report.get("created_at", time.time())))
    counts = ", ".join(f"{n} {fam}" for fam, n in report["tasks"].items())
    body = (
        f"<h1>SWE-Spot evaluation</h1><p>Repository <code>{html.escape(report['repo'])}</code>; knowledge cutoff "
        f"<code>{report['cutoff'][:10]}</code>; tasks from the commits after it up to <code>{report['until'][:10]}</code> "
        f"({html.escape(counts)}); profile {html.escape(report['profile'])}; {when}; {report['seconds']:.0f} s.</p>"
    )
    if not report["models"]:
        body += "<p><b>No held-out tasks:</b> no commit after the cutoff changed code this evaluation can use.</p>"
    else:
        body += _table(report) + "".join(f'<img alt="plot" src="data:image/png;base64,{p}">' for p in plots)
        body += "<h2>Examples</h2>" + _examples(report)
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 10px;text-align:right}"
             "td:first-child{text-align:left}.best{font-weight:bold;background:#e6f4e6}img{max-width:100%;display:block;margin:1em 0}"
             "pre{background:#f4f4f4;padding:6px;white-space:pre-wrap}details{margin:.4em 0}")
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
