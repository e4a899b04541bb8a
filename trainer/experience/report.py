"""What an experience build made, as a table: per unit the episodes made, verified and dropped (and why)
while building, and, counted with the model's own tokenizer (``fit_report``), what training will see."""

from __future__ import annotations

from pathlib import Path

from agent.episode import load_episodes
from agent.render import Renderer
from trainer import data as D


def unit_table(build_stats: dict, fit: dict | None = None) -> dict:
    """What each unit made, verified and dropped (and why), and, with the tokenizer's counts (``fit``),
    how many episodes the length limit dropped, the trained tokens and the rendered length distribution."""
    rows = {}
    for unit in sorted(set(build_stats) | set(fit or {})):
        b, f = build_stats.get(unit, {}), (fit or {}).get(unit, {})
        teacher = b.get("teacher") or {}
        rows[unit] = {"episodes": b.get("episodes_on_disk", f.get("episodes", 0)), "made": b.get("made", 0),
                      "verified": b.get("verified", 0), "dropped": dict(b.get("rejected", {})),
                      "teacher_made": teacher.get("kept", 0), "oracle_made": b.get("made", 0) - teacher.get("kept", 0),
                      "teacher_tried": teacher.get("tried", 0), "teacher_rejected": dict(teacher.get("rejected", {})),
                      "dropped_by_length": f.get("dropped_too_long"), "observations_cut": f.get("observations_cut"),
                      "split_at_turn": f.get("split_at_turn"), "trained_tokens": f.get("trained_tokens"), "length": f.get("length"),
                      "length_by_form": f.get("length_by_form")}
    return rows


def format_table(rows: dict) -> list[str]:
    """The unit table as text lines (``swespot experience build`` prints it)."""
    lines = [f"  {'unit':15s} {'episodes':>8s} {'new':>6s} {'verified':>8s} {'by length':>9s} {'cut/split':>9s} {'trained tok':>11s}  "
             f"{'length p10/p50/p90/max':22s}  dropped while building"]
    for unit, r in rows.items():
        length = "/".join(str(r["length"][k]) for k in ("p10", "p50", "p90", "max")) if r["length"] else "-"
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(r["dropped"].items(), key=lambda kv: -kv[1])) or "none"
        by_length = "-" if r["dropped_by_length"] is None else str(r["dropped_by_length"])
        cut = "-" if r["observations_cut"] is None else f"{r['observations_cut']}/{r['split_at_turn']}"
        trained = "-" if r["trained_tokens"] is None else str(r["trained_tokens"])
        lines.append(f"  {unit:15s} {r['episodes']:8d} {r['made']:6d} {r['verified']:8d} {by_length:>9s} {cut:>9s} {trained:>11s}  "
                     f"{length:22s}  {dropped}")
        if r.get("teacher_tried"):
            why = ", ".join(f"{k} {v}" for k, v in sorted(r["teacher_rejected"].items(), key=lambda kv: -kv[1])) or "none"
            lines.append(f"  {'  teacher':15s} tried {r['teacher_tried']}, made (verified) {r['teacher_made']}, rejected "
                         f"{r['teacher_tried'] - r['teacher_made']} ({why}); oracle made {r['oracle_made']}")
        for form, f in (r.get("length_by_form") or {}).items() if len(r.get("length_by_form") or {}) > 1 else ():
            lines.append(f"  {'  ' + form:15s} {f['episodes']:8d} {'':6s} {'':8s} {'':9s} {'':9s} {'':11s}  "
                         + "/".join(str(f[k]) for k in ("p10", "p50", "p90", "max")))
    return lines


def fit_report(out: Path, units, tokenizer, max_len: int, *, check: bool = True) -> dict:
    """Render every episode of ``units`` on disk with the model's own tokenizer and renderer, as training
    will (observations cut in the middle to fit, ``trainer/data.py``), and return the per-unit counts;
    with ``check``, a unit that loses most of its episodes to ``max_len`` raises SwespotError."""
    render = Renderer.for_template(getattr(tokenizer, "chat_template", None)).render_with_spans
    episodes = [ep for unit in units for shard in sorted((Path(out) / unit).glob("*.jsonl")) for ep in load_episodes(shard)]
    _, stats = D.encode_all(episodes, tokenizer, render, max_len, check=False)
    table = stats.per_unit()
    for unit in table:
        table[unit]["max_len"] = max_len
    if check:
        D.check_lengths(stats, max_len)
    return table


def why_none(unit_stats: dict) -> str:
    """One line on why a unit made no episode: its most frequent reasons for rejecting or skipping."""
    reasons = sorted(unit_stats.get("rejected", {}).items(), key=lambda kv: -kv[1])[:3]
    return "; ".join(f"{k} ({v})" for k, v in reasons) or "nothing to make from this repository"
