"""CAL/report.html (one page, plots inline as PNG data URIs) and CAL/config.toml (the snippet to paste)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import DEFAULT_LEVEL, LEVELS, RULES, CalibrationResult

MAX_ROWS = 30  # experiments named in the plot and the table; the rest are in calibration.json


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def auc_plot(result: CalibrationResult, before: CalibrationResult | None) -> str:
    plt = _plt()
    rows = [("pooled AUC", "pooled_auc"), ("within-experiment AUC (mean)", "within_experiment_auc"),
            ("fraction-only reference", "fraction_only_auc")]
    fig, ax = plt.subplots(figsize=(6, 2.4))
    for k, (label, key) in enumerate(rows):
        for res, dy, colour, tag in ((result, 0.0, "tab:blue", "calibrated"), (before, 0.25, "0.5", "before")):
            if res is None or res.aucs[key]["value"] is None:
                continue
            v, ci = res.aucs[key]["value"], res.aucs[key]["ci95"] or [np.nan, np.nan]
            ax.errorbar([v], [k + dy], xerr=[[v - ci[0]], [ci[1] - v]], fmt="o", color=colour, capsize=3,
                        label=tag if k == 0 else None)
    ax.axvline(0.5, color="0.8", lw=1)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_xlim(0.3, 1.0)
    ax.set_xlabel("AUC with 95% CI (experiments resampled)")
    if before is not None:
        ax.legend(fontsize=7)
    ax.invert_yaxis()
    return _png(fig)


def wells_plot(result: CalibrationResult) -> str:
    plt = _plt()
    cal = result.calibration
    names = list(result.wells)
    stain = np.array([result.wells[n]["stain"] for n in names])
    est = np.array([result.wells[n]["estimates"][cal.estimator] for n in names])
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.plot([0, 1], [0, 1], color="0.7", lw=1)
    for level, colour in zip(LEVELS, ("tab:orange", "tab:red")):
        q = cal.half_width.get(f"{level:g}")
        if q is None:
            continue
        low, high = np.clip(est - q, 0, 1), np.clip(est + q, 0, 1)
        ax.errorbar(stain, est, yerr=[est - low, high - est], fmt="none", ecolor=colour, capsize=3, lw=1,
                    label=f"{level:.0%} interval (+-{q:.3f})")
    ax.scatter(stain, est, color="k", zorder=3)
    for n, a, b in zip(names, stain, est) if len(names) <= MAX_ROWS else ():
        ax.annotate(n, (a, b), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("dead fraction from the stain")
    ax.set_ylabel(f"dead fraction, model ({cal.estimator}), left out")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    if any(v is not None for v in cal.half_width.values()):
        ax.legend(fontsize=7, loc="upper left")
    else:
        ax.set_title("too few experiments for a bounded interval", fontsize=8)
    return _png(fig)


def _img_file(path: Path) -> str:
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _figures_table(result: CalibrationResult, before: CalibrationResult | None) -> str:
    rows = []
    for label, key in (("pooled AUC", "pooled_auc"), ("mean AUC within an experiment", "within_experiment_auc"),
                       ("fraction-only reference (each tile scored by its experiment's stained dead fraction)",
                        "fraction_only_auc")):
        cells = []
        for res in (result, before) if before is not None else (result,):
            a = res.aucs[key]
            cells.append(f"{_fmt(a['value'])} ({_fmt(a['ci95'][0]) if a['ci95'] else '-'}-"
                         f"{_fmt(a['ci95'][1]) if a['ci95'] else '-'})")
        rows.append(f"<tr><td>{label}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "<th>calibrated (left out)</th>" + ("<th>before (--init model as it was)</th>" if before else "")
    return f"<table><tr><th>figure, 95% CI</th>{head}</tr>{''.join(rows)}</table>"


def _wells_table(result: CalibrationResult) -> str:
    cal = result.calibration
    q = cal.half_width.get(f"{DEFAULT_LEVEL:g}")
    rows = []
    for n, w in list(result.wells.items())[:MAX_ROWS]:
        e = w["estimates"][cal.estimator]
        inside = "yes" if q is None or abs(e - w["stain"]) <= q else "no"
        rows.append(f"<tr><td>{html.escape(n)}</td><td>{w['n']}</td><td>{_fmt(w['stain'])}</td>"
                    + "".join(f"<td>{_fmt(w['estimates'][k])}</td>" for k in ("classify_count", "mean_probability",
                                                                              "adjusted"))
                    + f"<td>{_fmt(w['auc'])}</td><td>{inside}</td></tr>")
    if len(result.wells) > MAX_ROWS:
        rows.append(f"<tr><td colspan=8>... {len(result.wells) - MAX_ROWS} more experiments in calibration.json"
                    "</td></tr>")
    mae = "".join(f"<td>{_fmt(result.mae[k])}</td>" for k in ("classify_count", "mean_probability", "adjusted"))
    return ("<table><tr><th>experiment</th><th>n</th><th>stain</th><th>classify-and-count</th>"
            f"<th>mean probability</th><th>adjusted</th><th>AUC within</th><th>inside {DEFAULT_LEVEL:.0%}</th></tr>"
            + "".join(rows) + f"<tr><td colspan=3>mean absolute error</td>{mae}<td colspan=2>no-model reference "
            f"{_fmt(result.no_model_mae)}</td></tr></table>"
            f"<p>No-model reference: {DEFAULT_LEVEL:.0%} half-width of its errors "
            f"{_fmt(result.no_model_half_width) if result.no_model_half_width is not None else 'unbounded'}.</p>")


def _intervals_table(result: CalibrationResult) -> str:
    rows = []
    for level, v in result.intervals.items():
        rows.append(f"<tr><td>{float(level):.0%}</td><td>{_fmt(v['half_width']) if v['half_width'] is not None else 'unbounded (too few experiments)'}</td>"
                    f"<td>{_fmt(2 * v['half_width']) if v['half_width'] is not None else '1'}</td>"
                    f"<td>{_fmt(v['in_sample_coverage'])}</td><td>{_fmt(v['leave_one_well_out_coverage'])} "
                    f"({v['leave_one_well_out_unbounded']} unbounded)</td></tr>")
    return ("<table><tr><th>level</th><th>half-width</th><th>width (before clipping to 0..1)</th>"
            "<th>coverage of the calibration wells</th><th>coverage, each well judged by the others' half-width</th>"
            "</tr>" + "".join(rows) + "</table>")


CSS = ("body{font:14px/1.45 system-ui,sans-serif;max-width:960px;margin:1.5em auto;padding:0 1em}"
       "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
       "td:first-child,th:first-child{text-align:left}.verdict{font-size:1.4em;padding:.4em .7em;"
       "background:#f3f3f3;border-left:6px solid #444}img{max-width:100%}")


def write_report(path: Path, summary: dict[str, Any], result: CalibrationResult,
                 before: CalibrationResult | None, ds_dir: Path) -> Path:
    cal = result.calibration
    hist = next((ds_dir / n for n in ("fluorescence_histogram.png", "stain_histogram.png")
                 if (ds_dir / n).is_file()), None)
    hist_html = (_img_file(hist) + "<p>The stain's two-component mixture and the thresholds that label "
                 "live (below) and dead (above); between them the tiles/cells are not used.</p>") if hist else \
        "<p>No stain histogram: the dataset's labels do not come from a stain (e.g. hand-drawn boxes).</p>"
    before_html = ""
    if before is not None:
        b = before.calibration
        before_html = (f"<h2>Re-calibration: before and after</h2><p>Before: the --init model as it was, on this "
                       f"plate: verdict <b>{html.escape(b.verdict)}</b>, per-well MAE ({b.estimator}) "
                       f"{_fmt(before.mae[b.estimator])}. After fine-tuning (left out): verdict "
                       f"<b>{html.escape(cal.verdict)}</b>, per-well MAE ({cal.estimator}) "
                       f"{_fmt(result.mae[cal.estimator])}. AUCs side by side in the table above.</p>")
    q = cal.half_width.get(f"{DEFAULT_LEVEL:g}")
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>wellwatch calibration</title>
<style>{CSS}</style></head><body>
<h1>Calibration: {html.escape(Path(summary['model']).name)}</h1>
<p>{summary['n']} labelled {summary['unit']}s in {len(summary['groups'])} experiments (grouped by
{html.escape(summary['group_by'])}); model {html.escape(summary['arch'])}, {summary['epochs']} epochs per fold;
{summary['seconds']:.0f} s.</p>
<div class="verdict">Verdict: <b>{html.escape(cal.verdict)}</b></div>
<ul>{''.join(f'<li>{html.escape(r)}</li>' for r in result.reasons)}</ul>
<p>Rules, in order:</p><ol>{''.join(f'<li>{html.escape(r)}</li>' for r in RULES)}</ol>
<p>What the daemon does with it: every well message carries <code>live_fraction_estimate</code> and
<code>live_fraction_interval</code> (the {DEFAULT_LEVEL:.0%} interval: {f'estimate &plusmn; {_fmt(q)}'
if q is not None else '0..1, too few experiments for a bounded one'}){'' if cal.calls_usable else
', and <code>calls_usable: false</code>: its live/dead counts are tallies of single calls that this calibration found unusable one by one; read the fraction and its interval'}.</p>
<h2>Leave one experiment out</h2>
{_figures_table(result, before)}
{auc_plot(result, before)}
<p>Every figure scores experiments with a model that never saw them. The pooled AUC mixes experiments: when
their dead fractions differ, a model that only knows each experiment's fraction scores the fraction-only
reference. The mean AUC within an experiment is what a single call is worth.</p>
<h2>Per-well dead fraction, model vs stain</h2>
{wells_plot(result)}
{_wells_table(result)}
<p>Estimator: <b>{cal.estimator}</b> (smallest leave-experiment-out mean absolute error of the three;
adjusted = (classify-and-count - fpr) / (tpr - fpr) with error rates from the other experiments).
The live fraction the daemon publishes is 1 - dead fraction.</p>
<h2>Intervals</h2>
<p>Method: split conformal. The half-width at level L is the ceil((n + 1) L)-th smallest of the n
experiments' absolute leave-out errors. Assumption: a new well's error is exchangeable with these
experiments' (same assay, staining protocol, imaging and cell line; the wells drawn like these). Then
the interval covers the stain's fraction with probability at least L. It does not hold for another assay or
microscope set-up: calibrate again (<code>--init</code>). The estimator was chosen on the same errors, which
makes the half-width slightly optimistic with few experiments.</p>
{_intervals_table(result)}
{before_html}
<h2>Stain thresholds</h2>
{hist_html}
</body></html>
"""
    path.write_text(doc, encoding="utf-8")
    return path


def write_config_snippet(o, contract, model_path: Path, unit: str) -> Path:
    cal = contract.calibration
    model_path = Path(model_path).resolve()
    lines = [f"# from `wellwatch calibrate` ({contract.name}): verdict \"{cal.verdict}\"",
             "# paste into the daemon's config.toml (replacing these sections' keys)", "",
             "[channels]", f'label_free = "{o.label_free}"']
    if unit == "cell":
        if o.segment_on:
            lines.append(f'segment_on = "{o.segment_on}"      # segment on it as the calibration did')
        seg = (contract.trained_on.get("dataset") or {}).get("segmentation") or {}
        lines += ["", "[segmentation]", f'method = "{seg.get("method", "classical")}"        # as the calibration '
                  "segmented its cells"]
        if seg.get("classical"):  # the daemon segments the way the calibration did (the same keys)
            lines += ["", "[segmentation.classical]",
                      *(f"{k} = {json.dumps(v)}" for k, v in seg["classical"].items())]
        lines += ["", "[models.cell_live_dead]", f'path = "{model_path}"']
    else:
        lines += ["", "[models.live_dead]", f'path = "{model_path}"']
    widths = ", ".join(f"{float(k):.0%}: +-{v:.3f}" if v is not None else f"{float(k):.0%}: unbounded"
                       for k, v in cal.half_width.items())
    lines += ["", "[intervals]", f"level = {DEFAULT_LEVEL}                 # calibrated levels: {widths}", ""]
    path = o.out / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
