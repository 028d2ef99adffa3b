"""Run-folder reports: ``metrics.json`` (the machine-readable record) and a self-contained
``report.html`` that embeds the run's PNG figures (base64), so the file can be mailed or archived.

The HTML is rendered from ``metrics.json`` alone (plus the PNGs it lists), so ``pluralign report
RUN_DIR`` rebuilds it at any time. Recognised top-level keys, each optional:

``title``, ``summary`` (list of lines), ``methods`` (name -> {micro, macro} estimates),
``differences`` (name -> estimate of a paired difference), ``learned_beta_variance``,
``claim`` ({holds, text}), ``diagnostics`` (name -> verdict text), ``win_rates`` (name -> stats),
``tables`` (list of {title, columns, rows}: small result tables, cells shown as given),
``figures`` (list of {file, caption}), ``failed_items`` (list), ``notes`` (list),
``runtime_seconds``. Everything else appears in the collapsible raw-JSON section.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pluralign.evaluation.errors import EvaluationError
from pluralign.io import write_json, write_text

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.bad { color: #b00020; } .good { color: #1b5e20; }
figure { margin: 1em 0 2em; } figcaption { color: #555; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.8em; }
"""


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return html.escape(str(x))


def _estimate(e: Mapping[str, Any] | None) -> str:
    if not e:
        return "–"
    ci = ""
    if e.get("ci_low") is not None and e.get("ci_high") is not None:
        ci = f" [{_fmt(e['ci_low'])}, {_fmt(e['ci_high'])}]"
    return f"{_fmt(e.get('mean'))}{ci}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(run_dir: Path, file: str, caption: str) -> str:
    """An embedded figure, or a visible note if ``file`` is missing or lies outside ``run_dir``
    (an absolute path, ``..`` or a symlink leading out): a report embeds only its own files."""
    path = (run_dir / file).resolve()
    if not path.is_relative_to(run_dir.resolve()):
        return (f"<p class='bad'>figure not embedded: {html.escape(file)} is outside the run "
                "folder</p>")
    if not path.is_file():
        return f"<p class='bad'>missing figure {html.escape(file)}</p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure><img alt='{html.escape(file)}' src='data:image/png;base64,{data}' "
            f"style='max-width:100%'><figcaption>{html.escape(caption)} "
            f"(<code>{html.escape(file)}</code>)</figcaption></figure>")


def render_html(metrics: Mapping[str, Any], run_dir: str | os.PathLike[str]) -> str:
    """The report page for ``metrics`` (figures are read from ``run_dir``)."""
    run_dir = Path(run_dir)
    title = html.escape(str(metrics.get("title", "pluralign report")))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
             f"<style>{_CSS}</style></head><body><h1>{title}</h1>"]
    if metrics.get("summary"):
        parts.append("<h2>Summary</h2><ul>" + "".join(
            f"<li>{html.escape(str(s))}</li>" for s in metrics["summary"]) + "</ul>")
    claim = metrics.get("claim")
    if claim:
        cls = "good" if claim.get("holds") else "bad"
        parts.append(f"<h2>Claim under test</h2><p class='{cls}'>"
                     f"{html.escape(str(claim.get('text', '')))}</p>")
    if metrics.get("learned_beta_variance"):
        lbv = metrics["learned_beta_variance"]
        parts.append("<h3>Learned β variance (Gamma MixDPO, final step)</h3>"
                     + _table(["population", "Var[β]"], [[html.escape(k), _fmt(v, 6)]
                                                         for k, v in lbv.items()]))
    if metrics.get("methods"):
        rows = [[html.escape(name), _estimate(m.get("micro")), _estimate(m.get("macro"))]
                for name, m in metrics["methods"].items()]
        parts.append("<h2>Preference margins (95% bootstrap CIs)</h2>"
                     + _table(["method", "micro", "macro"], rows))
    if metrics.get("differences"):
        rows = [[html.escape(name), _estimate(d)] for name, d in metrics["differences"].items()]
        parts.append("<h3>Paired differences (95% paired-bootstrap CIs)</h3>"
                     + _table(["difference", "estimate [CI]"], rows))
    if metrics.get("diagnostics"):
        rows = [[html.escape(k), html.escape(str(v))] for k, v in metrics["diagnostics"].items()]
        parts.append("<h2>Heterogeneity diagnostic</h2>" + _table(["item", "verdict"], rows))
    if metrics.get("win_rates"):
        rows = []
        for name, w in metrics["win_rates"].items():
            rows.append([html.escape(name), _estimate({"mean": w.get("win_rate"),
                                                       "ci_low": w.get("ci_low"),
                                                       "ci_high": w.get("ci_high")}),
                         _estimate({"mean": w.get("lc_win_rate"), "ci_low": w.get("lc_ci_low"),
                                    "ci_high": w.get("lc_ci_high")}),
                         _fmt(w.get("p_value")), _fmt(w.get("n"))])
        parts.append("<h2>Win rates vs baseline (%)</h2>"
                     + _table(["policy", "WR [CI]", "LC-WR [CI]", "sign-flip p", "n"], rows))
    for t in metrics.get("tables", []):
        parts.append(f"<h2>{html.escape(str(t.get('title', '')))}</h2>" + _table(
            [str(c) for c in t["columns"]], [[_fmt(c) for c in row] for row in t["rows"]]))
    for fig in metrics.get("figures", []):
        if not isinstance(fig, Mapping) or not isinstance(fig.get("file"), str):
            parts.append(f"<p class='bad'>figure not embedded: entry has no file name "
                         f"(<code>{html.escape(repr(fig))}</code>)</p>")
            continue
        parts.append(_figure(run_dir, fig["file"], str(fig.get("caption", ""))))
    failed = metrics.get("failed_items") or []
    parts.append(f"<h2>Failed items ({len(failed)})</h2>")
    if failed:
        keys = sorted({k for f in failed for k in f})
        parts.append(_table(keys, [[_fmt(f.get(k)) for k in keys] for f in failed]))
    else:
        parts.append("<p>None: every item was evaluated.</p>")
    if metrics.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(
            f"<li>{html.escape(str(s))}</li>" for s in metrics["notes"]) + "</ul>")
    if metrics.get("runtime_seconds") is not None:
        parts.append(f"<p>Runtime: {_fmt(float(metrics['runtime_seconds']), 3)} s</p>")
    parts.append("<details><summary>metrics.json</summary><pre>"
                 + html.escape(json.dumps(metrics, indent=2, sort_keys=True)) + "</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | os.PathLike[str], metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics.json`` and ``report.html`` into ``run_dir`` (atomically); return the HTML."""
    run_dir = Path(run_dir)
    write_json(run_dir / METRICS_FILE, metrics)
    return write_text(run_dir / REPORT_FILE, render_html(metrics, run_dir))


def build_report(run_dir: str | os.PathLike[str]) -> Path:
    """Re-render ``report.html`` from a run folder's ``metrics.json`` and PNGs."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise EvaluationError(f"{path} not found; pass a run folder written by `pluralign demo`, "
                              "`evaluate`, `diagnose`, `nbc` or `simulate`")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EvaluationError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(metrics, dict):
        raise EvaluationError(f"{path}: expected a JSON object (keys such as 'title', "
                              f"'figures'), got a {type(metrics).__name__}")
    return write_text(Path(run_dir) / REPORT_FILE, render_html(metrics, run_dir))
