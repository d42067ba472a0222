"""The per-layer sensitivity table (JSON rows, Markdown), its plot (PNG) and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from typing import Any

from edgemp.mixed.graph import LayerGraph, describe
from edgemp.mixed.sensitivity import LayerSensitivity


def ranked_rows(sens: dict[str, LayerSensitivity], graph: LayerGraph, region: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """One row per op, most sensitive first: ranked layers by their gain alone in float, then the rest."""
    rows = []
    for lay in graph.layers:
        s = sens.get(lay.tensor) or LayerSensitivity(lay)
        rows.append(s.to_dict() | {"label": describe(lay), "kept_float": lay.tensor in region, "ranked": lay.ranked})
    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        d, g = r["damage"], r["gain"]
        return (d is None and g is None, tuple(-x for x in (d or (0.0, 0.0))), tuple(-x for x in (g or (0.0, 0.0))),
                r["index"])

    rows.sort(key=key)
    for i, r in enumerate(rows, 1):
        r["rank"] = i if r["damage"] is not None or r["gain"] is not None else None
    return rows


def _f(v: Any, fmt: str = ".3g") -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and not math.isfinite(v):
        return "inf" if v > 0 else ("-inf" if v < 0 else "nan")
    return format(v, fmt)


def to_markdown(rows: Sequence[dict[str, Any]], title: str, notes: Sequence[str] = ()) -> str:
    lines = [f"# {title}", "", *notes, "" if notes else "",
             "| rank | layer | op | tensor RMSE | RMSE/scale | tensor SQNR dB | tensor cosine | only this layer int8 | "
             "damage | only this layer float | gain | float |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {_f(r['rank'], 'd')} | {r['label']} | {r['op']} | {_f(r['rmse'])} | {_f(r['rmse_over_scale'], '.2f')} | "
            f"{_f(r['sqnr_db'], '.1f')} | {_f(r['cosine'], '.5f')} | {_score(r['int8_alone'])} | {_delta(r['damage'], r['int8_alone'])} | "
            f"{_score(r['float_alone'])} | {_delta(r['gain'], r['float_alone'])} | {'**yes**' if r['kept_float'] else ''} |")
    lines += ["", "Scores are accuracy (top-1, mIoU or the metric) / output SQNR dB (SQNR only without labels or a "
              "metric); damage = all-float score minus the score with only this layer int8; gain = score with only "
              "this layer float minus full int8 (accuracy x100, dB).",
              "", "RMSE/scale ≈ 0.29 is pure rounding noise (1/√12 of a quantization step); far above it means "
              "clipping, a badly chosen range or, deep in a network, noise inherited from upstream. Tensor metrics "
              "compare the int8 model's tensor with the float model's tensor of the same layer (errors accumulated "
              "up to that point)."]
    return "\n".join(lines) + "\n"


def _score(s: dict[str, Any] | None) -> str:
    if not s:
        return "–"
    if s.get("error"):
        return "infeasible"
    return (f"{s['accuracy']:.4f} / " if s.get("accuracy") is not None else "") + _f(s["sqnr_db"], ".1f")


def _delta(d: Sequence[float] | None, s: dict[str, Any] | None) -> str:
    if d is None or s is None:
        return "–"
    return f"{100 * d[0]:+.2f} / {d[1]:+.1f}" if s.get("accuracy") is not None else f"{d[0]:+.1f}"


def _sqnr_delta(r: dict[str, Any], key: str) -> float:
    d, s = r[key], r[key.replace("damage", "int8_alone").replace("gain", "float_alone")]
    if d is None:
        return 0.0
    return d[1] if s and s.get("accuracy") is not None else d[0]


def plot_png(rows: Sequence[dict[str, Any]], title: str) -> bytes:
    """Per-layer bars in model order: output SQNR gain with the layer alone in float; float layers marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = sorted((r for r in rows if r["rank"] is not None), key=lambda r: r["index"])
    labels = [(r["label"] if len(r["label"]) <= 40 else r["label"][:37] + "…") + f" · {r['op']}" for r in ranked]
    sq = [_sqnr_delta(r, "damage") if r["damage"] is not None else _sqnr_delta(r, "gain") for r in ranked]
    what = "output SQNR lost with only this layer int8 (dB)" if any(r["damage"] is not None for r in ranked) \
        else "output SQNR gain with only this layer in float (dB)"
    tensor = [r["sqnr_db"] if r["sqnr_db"] is not None and math.isfinite(r["sqnr_db"]) else 0.0 for r in ranked]
    colors = ["#d62728" if r["kept_float"] else "#1f77b4" for r in ranked]
    height = max(3.0, 0.28 * len(ranked) + 1.5)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, height), sharey=True)
    y = range(len(ranked))
    ax1.barh(y, sq, color=colors)
    ax1.set_xlabel(what)
    ax1.set_yticks(list(y), labels, fontsize=8)
    ax1.invert_yaxis()
    ax2.barh(y, tensor, color=colors)
    ax2.set_xlabel("SQNR of the layer's int8 output tensor vs float (dB)")
    for ax in (ax1, ax2):
        ax.grid(axis="x", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color="#d62728"), plt.Rectangle((0, 0), 1, 1, color="#1f77b4")]
    fig.legend(handles, ["kept in float", "int8"], loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def to_html(markdown_table: str, png: bytes, title: str, steps: Sequence[dict[str, Any]] = ()) -> str:
    """A self-contained page: the plot embedded as base64, the search steps and the ranked table."""
    def table(md: str) -> str:
        out = []
        for line in md.splitlines():
            if line.startswith("|") and not line.startswith("|---"):
                cells = [html.escape(c.strip()).replace("**yes**", "<b>yes</b>") for c in line.strip("|").split("|")]
                tag = "th" if not out else "td"
                out.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
        return "<table>" + "".join(out) + "</table>"

    step_rows = "".join(
        f"<tr><td>{s['step']}</td><td>{html.escape(s['action'])}</td><td>{len(s['float_layers'])}</td>"
        f"<td>{s['boundaries']}</td><td>{_f(s['score'].get('accuracy'), '.4f')}</td><td>{_f(s['score']['sqnr_db'], '.1f')}</td>"
        f"<td>{_f(s.get('bytes'), ',')}</td><td>{_f(s.get('latency_ms'), '.4f')}</td><td>{'yes' if s['met'] else ''}</td></tr>"
        for s in steps)
    steps_html = ("<h2>Search steps</h2><table><tr><th>step</th><th>action</th><th>float layers</th><th>boundaries</th>"
                  "<th>accuracy</th><th>SQNR dB</th><th>bytes</th><th>latency ms</th><th>budget met</th></tr>"
                  f"{step_rows}</table>") if steps else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 6px}th{background:#eee}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><img alt='per-layer sensitivity' src='data:image/png;base64,"
            f"{base64.b64encode(png).decode()}'/>{steps_html}<h2>Layers, most sensitive first</h2>"
            f"{table(_table_only(markdown_table))}"
            "</body></html>")


def _table_only(md: str) -> str:
    return "\n".join(line for line in md.splitlines() if line.startswith("|"))
