"""Scoring the rows: per-model summaries with bootstrap intervals, paired comparisons (candidate −
reference over the same tasks, a paired bootstrap 95% interval) and the verdicts read from the intervals,
never from the point estimates; ``compare`` is the gate's decision."""

from __future__ import annotations

import math

import numpy as np

from trainer.eval_report import metric_label
from trainer.evaluation.profiles import FAMILIES, ModelSpec

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
MIN_PAIRED_TASKS = 5  # fewer paired tasks give no interval (and no verdict but "no measurable change")
HEADLINE_FAMILIES = ("line", "body")  # the headline: token-weighted per-token loss of held-out code
BETTER, WORSE, NO_CHANGE = "better", "worse", "no measurable change"

# (family, metric, lower is better); the first metric of a family is the one its verdict is read from
PAIRED_METRICS = (
    ("line", "loss", True), ("line", "exact", False), ("line", "similarity", False),
    ("body", "loss", True), ("body", "similarity", False), ("body", "exact", False),
    ("infill", "loss", True), ("infill", "exact", False), ("infill", "similarity", False),
    ("design", "loss", True), ("design", "exact", False),
    ("facts", "loss", True), ("facts", "exact", False),
    ("replay", "resolved", False), ("replay", "similarity", False),
)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return round(sum(values) / len(values), 4) if values else None


def _value(row: dict, metric: str) -> float | None:
    value = row.get(metric)
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _weighted(values, weights, idx=None):
    """Weighted mean, or with ``idx`` ([resamples, n]) the weighted mean of every resample."""
    if idx is None:
        return float((values * weights).sum() / weights.sum())
    w = weights[idx]
    return (values[idx] * w).sum(1) / np.maximum(w.sum(1), 1e-12)


def resample_indices(n: int, seed: int, resamples: int):
    """The bootstrap's task indices: ``resamples`` rows of ``n`` draws with replacement (seeded)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_interval(values, weights=None, *, seed: int = BOOTSTRAP_SEED,
                       resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float] | None:
    """95% percentile-bootstrap interval of one model's (weighted) mean over tasks; None under
    MIN_PAIRED_TASKS tasks."""
    values = np.asarray(values, dtype=float)
    if len(values) < MIN_PAIRED_TASKS:
        return None
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=float)
    lo, hi = np.percentile(_weighted(values, weights, resample_indices(len(values), seed, resamples)), [2.5, 97.5])
    return round(float(lo), 4), round(float(hi), 4)


def verdict_of(lo: float | None, hi: float | None, lower_is_better: bool) -> str:
    """"better" when the interval of candidate − reference lies entirely on the improving side, "worse"
    when entirely on the other, else (or without an interval) "no measurable change"."""
    if lo is None or hi is None:
        return NO_CHANGE
    if (hi < 0) if lower_is_better else (lo > 0):
        return BETTER
    if (lo > 0) if lower_is_better else (hi < 0):
        return WORSE
    return NO_CHANGE


def paired_interval(candidate: list[dict], reference: list[dict], metric: str, *, lower_is_better: bool,
                    weighted: bool | None = None, seed: int = BOOTSTRAP_SEED,
                    resamples: int = BOOTSTRAP_RESAMPLES) -> dict | None:
    """Candidate − reference on ``metric`` over the tasks both rows lists scored, with a paired bootstrap
    95% interval: the same resampled tasks for both models; the loss is token-weighted (``weighted``,
    default for "loss"), i.e. each resample recomputes sum(loss·tokens)/sum(tokens) for each model.
    Absolute difference (lo, hi) and relative to the reference (rel_lo, rel_hi; None where the
    reference's value is 0), each model's own interval, and the verdict. None without paired tasks."""
    weighted = metric == "loss" if weighted is None else weighted
    ref = {r["task"]: r for r in reference}
    triples: list[tuple[float, float, float]] = []
    for row in candidate:
        other = ref.get(row["task"])
        a, b = _value(row, metric), (None if other is None else _value(other, metric))
        weight = float(other.get("tokens") or 0) if weighted and other is not None else 1.0
        if a is not None and b is not None and weight > 0:
            triples.append((a, b, weight))
    if not triples:
        return None
    c, r, w = (np.array(x, dtype=float) for x in zip(*triples))
    point_c, point_b = _weighted(c, w), _weighted(r, w)
    out = {"metric": metric, "tasks": len(triples), "lower_is_better": lower_is_better,
           "candidate": round(point_c, 4), "reference": round(point_b, 4), "delta": round(point_c - point_b, 4),
           "rel": round((point_c - point_b) / point_b, 4) if point_b else None,
           "lo": None, "hi": None, "rel_lo": None, "rel_hi": None, "candidate_ci": None, "reference_ci": None}
    if len(triples) >= MIN_PAIRED_TASKS:
        idx = resample_indices(len(triples), seed, resamples)
        mc, mb = _weighted(c, w, idx), _weighted(r, w, idx)
        lo, hi = np.percentile(mc - mb, [2.5, 97.5])
        out.update(lo=round(float(lo), 4), hi=round(float(hi), 4),
                   candidate_ci=[round(float(v), 4) for v in np.percentile(mc, [2.5, 97.5])],
                   reference_ci=[round(float(v), 4) for v in np.percentile(mb, [2.5, 97.5])])
        if point_b and (mb > 0).all():
            rlo, rhi = np.percentile(mc / mb - 1, [2.5, 97.5])
            out.update(rel_lo=round(float(rlo), 4), rel_hi=round(float(rhi), 4))
        out["verdict"] = verdict_of(float(lo), float(hi), lower_is_better)
    else:
        out["verdict"], out["note"] = NO_CHANGE, f"{len(triples)} tasks: too few for an interval"
    return out


def _signed(value: float, unit: str, digits: int = 1) -> str:
    text = f"{value:+.{digits}f}{unit}"
    return text.replace("-", "\u2212")  # a real minus sign


def describe(stats: dict | None, label: str) -> str:
    """One line: "line+body loss 2.452 → 2.301 (−6.2%, 95% CI −8.1% … −4.3%): better". Losses change in
    percent of the reference; rates (exact match, similarity, accuracy) in points."""
    if stats is None:
        return f"{label}: no paired tasks"
    head = f"{label} {stats['reference']:.3f} \u2192 {stats['candidate']:.3f}"
    if stats["metric"] == "loss" and stats["rel"] is not None:
        change = _signed(100 * stats["rel"], "%")
        interval = (f"95% CI {_signed(100 * stats['rel_lo'], '%')} \u2026 {_signed(100 * stats['rel_hi'], '%')}"
                    if stats["rel_lo"] is not None else None)
    else:
        change = _signed(100 * stats["delta"], " points")
        interval = (f"95% CI {_signed(100 * stats['lo'], '')} \u2026 {_signed(100 * stats['hi'], ' points')}"
                    if stats["lo"] is not None else None)
    interval = interval or stats.get("note") or "no interval"
    return f"{head} ({change}, {interval}; {stats['tasks']} tasks): {stats['verdict']}"


def paired_comparison(rows: list[dict], candidate: str, reference: str, *, seed: int = BOOTSTRAP_SEED,
                      resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """``candidate`` against ``reference`` over the tasks both answered: every metric of every family
    (``PAIRED_METRICS``) with its interval and verdict, a verdict per family (its first metric), and the
    headline: the token-weighted loss over the line and body tasks (over design and facts where there
    are no code tasks), whose verdict is the overall one."""
    cand = [r for r in rows if r["model"] == candidate]
    ref = [r for r in rows if r["model"] == reference]
    families: dict = {}
    for fam, metric, lower in PAIRED_METRICS:
        stats = paired_interval([r for r in cand if r["family"] == fam], [r for r in ref if r["family"] == fam], metric,
                                lower_is_better=lower, seed=seed, resamples=resamples)
        if stats is not None:
            stats["line"] = describe(stats, metric_label(fam, metric))
            entry = families.setdefault(fam, {"metrics": {}})
            entry["metrics"][metric] = stats
            entry.setdefault("verdict", stats["verdict"])
    present = {r["family"] for r in cand}
    headline_families = [f for f in HEADLINE_FAMILIES if f in present] or [f for f in ("design", "facts") if f in present]
    headline = paired_interval([r for r in cand if r["family"] in headline_families],
                               [r for r in ref if r["family"] in headline_families], "loss", lower_is_better=True,
                               seed=seed, resamples=resamples) if headline_families else None
    label = "+".join(headline_families) + " loss"
    if headline is not None:
        headline.update(families=headline_families, label=label, line=describe(headline, label))
    return {"candidate": candidate, "reference": reference, "headline": headline,
            "verdict": headline["verdict"] if headline else NO_CHANGE,
            "line": headline["line"] if headline else "no loss-scored tasks to compare", "families": families,
            "resamples": resamples, "seed": seed}


def layout_comparison(rows: list[dict], model: str, *, seed: int = BOOTSTRAP_SEED) -> dict | None:
    """For a model scored in the FIM layout: its infill loss in that layout against the same tasks left
    to right (``ltr_loss``), paired (``paired_interval``); None when it has no FIM-scored infill rows."""
    mine = [r for r in rows if r["model"] == model and r["family"] == "infill" and r.get("layout") == "fim"]
    if not mine:
        return None
    ltr = [{**r, "loss": r["ltr_loss"]} for r in mine]
    stats = paired_interval(mine, ltr, "loss", lower_is_better=True, seed=seed)
    return None if stats is None else stats | {"line": describe(stats, "infill loss, FIM layout vs left to right")}


def summarize(rows: list[dict], models: list[ModelSpec]) -> dict:
    """Per model and family: tasks, seconds, and the means (loss token-weighted, scores over the tasks
    that have them), each with its own bootstrap 95% interval (``<metric>_ci``, for error bars)."""
    out: dict = {}
    for spec in models:
        mine = [r for r in rows if r["model"] == spec.name]
        fams: dict = {}
        for fam in FAMILIES:
            rs = [r for r in mine if r["family"] == fam]
            if not rs:
                continue
            entry: dict = {"tasks": len(rs), "seconds": round(sum(r["seconds"] for r in rs), 2)}
            metrics: tuple[str, ...]
            if fam == "replay":
                entry.update(turns=_mean([r["turns"] for r in rs]), tokens=_mean([r["prompt_tokens"] + r["completion_tokens"] for r in rs]))
                metrics = ("resolved", "similarity")
            else:
                metrics = ("loss", "exact", "similarity")
            for metric in metrics:
                scored = [(v, float(r["tokens"]) if metric == "loss" else 1.0) for r in rs
                          if (v := _value(r, metric)) is not None and (metric != "loss" or r["tokens"] > 0)]
                if not scored:
                    entry[metric] = None
                    continue
                values, weights = zip(*scored)
                entry[metric] = round(sum(v * w for v, w in scored) / sum(weights), 4)
                entry[f"{metric}_ci"] = bootstrap_interval(values, weights)
                if metric != "loss":
                    entry[f"{metric}_tasks"] = len(scored)
            fams[fam] = entry
        out[spec.name] = {"adapter": str(spec.adapter) if spec.adapter else None,
                          "chat_adapter": str(spec.chat_adapter) if spec.chat_adapter else None, "families": fams,
                          "seconds": round(sum(r["seconds"] for r in mine), 2)}
    return out



def compare(report: dict, candidate: str, reference: str) -> dict:
    """The gate's decision: ``candidate`` may be published unless the paired interval of the headline
    loss (line and body tasks, token-weighted) shows it worse than ``reference``. The result carries the
    verdict, the interval and every family's verdict (what the manifest records)."""
    models = report.get("models") or {}
    if candidate not in models or reference not in models:
        return {"ok": True, "why": "no held-out tasks after the cutoff; nothing to compare", "kind": "eval", "verdict": NO_CHANGE}
    comparison = (report.get("comparisons") or {}).get(candidate)
    if comparison is None or comparison["reference"] != reference:
        comparison = paired_comparison(report["rows"], candidate, reference)
    head = comparison["headline"]
    if head is None:
        return {"ok": True, "why": "no loss-scored tasks; published ungated", "kind": "eval", "verdict": NO_CHANGE}
    keep = ("tasks", "reference", "candidate", "delta", "lo", "hi", "rel", "rel_lo", "rel_hi", "verdict")
    ok = comparison["verdict"] != WORSE
    return {"ok": ok, "why": comparison["line"] + ("" if ok else f" (the {candidate} is worse than the {reference})"),
            "kind": "eval", "verdict": comparison["verdict"], "line": comparison["line"],
            "interval": {k: head[k] for k in keep} | {"families": head["families"], "confidence": 0.95,
                                                      "resamples": comparison["resamples"]},
            "families": {fam: {"verdict": entry["verdict"], **{m: {k: st[k] for k in keep} for m, st in entry["metrics"].items()}}
                         for fam, entry in comparison["families"].items()},
            "losses": {candidate: head["candidate"], reference: head["reference"]}}
