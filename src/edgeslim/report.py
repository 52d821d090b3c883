"""Render a `StudyResult`: results.json, report.md, report.html (self-contained), pareto.png."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .candidate import Status

__all__ = ["write_report", "pareto_plot", "markdown"]

HEADERS = ["candidate", "status", "metric", "agree w/ fp32", "p50 ms", "speedup", "size", "reason"]


def _front(pts: list, better) -> set[str]:
    """Ids of the candidates no other candidate beats on both latency and metric."""
    out = set()
    for c in pts:
        lat, m = c.latency_ms["p50"], c.metric
        if not any(o is not c and o.latency_ms["p50"] <= lat and better(o.metric, m) and
                   (o.latency_ms["p50"] < lat or o.metric != m) for o in pts):
            out.add(c.id)
    return out


def pareto_plot(result, path: Path) -> None:
    """Metric vs latency; marker area ~ size; the selected candidate ringed; rejected/failed hollow. Only the front
    (no candidate both faster and better) and the selection are labelled; candidates whose metric collapsed sit on a
    band at the top edge, so they do not squash the useful part of the axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    pts = [c for c in result.candidates if c.metric is not None and c.latency_ms]
    collapsed = [c for c in pts if c.status != Status.OK and c.reason.startswith("collapsed")]
    shown = [c for c in pts if c not in collapsed]
    smax = max((c.size_bytes or 1) for c in pts) if pts else 1
    better = (lambda a, b: a >= b) if result.higher_is_better else (lambda a, b: a <= b)
    label = _front([c for c in shown if c.status == Status.OK], better) | ({result.selected} if result.selected else set())
    vals = [c.metric for c in shown] or [0.0]
    lo, hi = min(vals), max(vals)
    pad = (hi - lo) * 0.15 or max(abs(hi) * 0.1, 1e-3)
    band = (hi + 2 * pad) if not result.higher_is_better else (lo - 2 * pad)
    for c in shown + collapsed:
        area = 40 + 900 * (c.size_bytes or 0) / smax
        ok = c.status == Status.OK
        y = band if c in collapsed else c.metric
        ax.scatter(c.latency_ms["p50"], y, s=area, alpha=0.6 if ok else 0.35, marker="^" if c in collapsed else "o",
                   facecolors=None if ok else "none", edgecolors="k" if ok else "tab:red", linewidths=1)
        if c.id in label:
            ax.annotate(c.id, (c.latency_ms["p50"], y), fontsize=7, xytext=(5, 5), textcoords="offset points")
        if c.id == result.selected:
            ax.scatter(c.latency_ms["p50"], y, s=area * 1.8, facecolors="none", edgecolors="tab:green", linewidths=2.5,
                       label=f"selected: {c.id}")
    if collapsed:
        ax.axhline(band, color="tab:red", alpha=0.2, linewidth=8)
        ax.annotate(f"collapsed ({len(collapsed)}): metric off the chart", (0.01, band), xycoords=("axes fraction", "data"),
                    fontsize=7, color="tab:red", va="center")
    ax.set_xlabel("latency p50 (ms, this run)")
    ax.set_ylabel(f"{result.metric_name} ({'higher' if result.higher_is_better else 'lower'} is better)")
    ax.set_title("metric vs latency (area ~ size; hollow red = rejected; labels: front and selection)", fontsize=9)
    if result.selected:
        ax.legend(loc="best", fontsize=8, markerscale=0.3)
    lats = [c.latency_ms["p50"] for c in pts]
    if lats and max(lats) > 3 * min(lats):
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _sensitivity_rows(result) -> list[dict]:
    for c in result.candidates:
        if c.info.get("sensitivity"):
            return c.info["sensitivity"]
    return []


ROOFLINE_TITLE = "Estimated on target devices (roofline, not measured)"


def _fmt_ms(ms: float) -> str:
    if ms >= 10:
        return f"{ms:.1f} ms"
    if ms >= 0.1:
        return f"{ms:.2f} ms"
    return f"{ms * 1e3:.3g} us"


def _roofline_table(result) -> tuple[list[str], list[list[str]], list[str]]:
    """(headers, rows, notes) of the estimate table: a row per candidate, a column per chip profile."""
    profiles = [p["name"] for p in (getattr(result, "profiles", None) or [])]
    cands = [c for c in result.candidates if getattr(c, "roofline", None)]
    if not profiles or not cands:
        return [], [], []
    headers = ["candidate", "precision"] + profiles
    rows, notes, reasons = [], [], {}
    for c in cands:
        r = c.roofline
        if "estimates" not in r:
            rows.append([c.id, r.get("precision", "-")] + ["error"] * len(profiles))
            notes.append(f"`{c.id}`: no estimate ({r.get('error', 'unknown error')})")
            continue
        row = [c.id, r["precision"]]
        for name in profiles:
            e = r["estimates"].get(name) or {}
            if e.get("ms") is None:
                row.append("n/a")
                if e.get("reason"):
                    reasons.setdefault(name, set()).add(e["reason"].removeprefix("n/a: "))
                continue
            mark = "*" if "compute roof only" in (e.get("reason") or "") else ""
            row.append(f"{_fmt_ms(e['ms'])}{mark} ({e.get('bound', '')})")
            if e.get("reason") and not mark:
                reasons.setdefault(name, set()).add(e["reason"])
        rows.append(row)
        if r.get("note"):
            notes.append(f"`{c.id}`: {r['note']}")
        if not r.get("graph", "").startswith("the candidate's"):
            notes.append(f"`{c.id}`: estimated from {r.get('graph', 'the source ONNX')}, at its precision")
    for name, rs in reasons.items():
        notes.append(f"`{name}`: " + "; ".join(sorted(rs)))
    return headers, rows, notes


def _roofline_md(result) -> list[str]:
    headers, rows, notes = _roofline_table(result)
    if not rows:
        return []
    out = ["", f"## {ROOFLINE_TITLE}", "",
           "Roofline time of each candidate's graph: per node max(ops / peak, bytes / bandwidth), summed "
           "(`edgeslim.profiles.roofline`), with the candidate's precision deciding the peak and the bytes per element. "
           "`host` is this machine with ceilings, bandwidths and launch costs measured by onnxruntime microbenchmarks; "
           "the other profiles are published figures (`edgeslim profiles NAME` lists each one's sources), so their "
           "times are lower bounds. (compute / memory / overhead): the term holding most of the time. "
           "`*`: compute roof only (no published bandwidth). n/a: the profile publishes no peak for that precision.", "",
           "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(x.replace("|", "/") for x in r) + " |" for r in rows]
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    figs = []
    for p in getattr(result, "profiles", None) or []:
        peaks = ", ".join(f"{k} {v:g}" for k, v in p["peak_gops"].items() if v is not None) or "none published"
        bw = "-" if p.get("bandwidth_gbs") is None else f"{p['bandwidth_gbs']:g} GB/s"
        figs.append(f"- `{p['name']}` ({p['title']}): peak G ops/s {peaks}; bandwidth {bw}"
                    + (" (measured)" if p.get("measured") else ""))
    out += ["", "Profiles:", ""] + figs
    return out


def markdown(result) -> str:
    d = result.to_dict()
    sel = result.selected or "none (no candidate kept accuracy)"
    lines = [
        f"# edgeslim optimize: {d['model']}",
        "",
        f"- task `{d['task']}`, metric `{result.metric_name}` ({'higher' if result.higher_is_better else 'lower'} is better), "
        f"budget {result.budget}, objective {d['objective']}",
        f"- baseline `{result.baseline}`; **selected `{sel}`**",
        f"- data: {d['data']['calib']} calibration / {d['data']['eval']} evaluation samples ({d['data']['source']})",
        f"- machine: {d['machine'].get('cpu')} ({d['machine'].get('cores')} cores), {d['threads']} threads, "
        f"onnxruntime {d['machine'].get('onnxruntime')}; bench input {d['bench_input_shape']}",
        f"- timing: each candidate in its own process, {d['bench']['rounds']} alternating rounds; speedup = median of per-round "
        "ratios to the baseline (range in brackets)",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    for c, row in zip(result.candidates, result.to_rows()):
        if c.speedup_range:
            row[5] += f" [{c.speedup_range[0]:.2f}-{c.speedup_range[1]:.2f}]"
        lines.append("| " + " | ".join(x.replace("|", "/") for x in row[:-1] + [c.reason.replace("|", "/")]) + " |")
    lines += _roofline_md(result)
    sens = _sensitivity_rows(result)
    if sens:
        lines += ["", "## Per-node sensitivity (mixed precision)", "",
                  "SQNR against fp32 on calibration data: local (the node's own output, fed fp32 inputs) and at the model "
                  "output (only that node quantized). Ranked by output SQNR, lowest = most sensitive.", "",
                  "| node | op | local SQNR dB | output SQNR dB | kept fp32 |", "|---|---|---|---|---|"]
        for r in sens:
            lines.append(f"| {r['node']} | {r['op']} | {r['sqnr_db']:.1f} | {r.get('output_sqnr_db', float('nan')):.1f} | "
                         f"{'yes' if r.get('kept_fp32') else ''} |")
    tel = d.get("telemetry") or {}
    if tel.get("samples"):
        lines += ["", "## Telemetry during benchmarking", ""]
        for k in ("cpu_percent", "freq_mhz", "temp_c"):
            v = tel.get(k)
            lines.append(f"- {k}: " + (f"mean {v['mean']}, max {v['max']}" if v else "not exposed by this OS"))
    lines += _selection_md(result, d)
    lines += ["", "![pareto](pareto.png)", ""]
    return "\n".join(lines)


def _selection_md(result, d: dict) -> list[str]:
    sel, bench = d.get("selection") or {}, d.get("bench") or {}
    out = ["", "## How the selection was made", ""]
    if sel.get("why"):
        out.append(f"- {sel['why']}")
    if sel.get("rule"):
        out.append(f"- rule: {sel['rule']}; ties go to fidelity (a gap beyond sampling noise), then size; never a candidate slower than the baseline")
    for cid, why in (sel.get("lost") or {}).items():
        out.append(f"- `{cid}` lost: {why}")
    chosen = next((c for c in result.candidates if c.id == result.selected), None)
    for v in (chosen.info.get("verified_on", []) if chosen is not None else []):
        out.append(f"- verified on `{v['device']}` ({v.get('arch')}, {v.get('cpu')}): " + (
            f"{result.metric_name} {v['metric']:.4f} on {v['samples']} samples (host {v['host_metric']:.4f}), "
            f"{v['same_as_host']:.0%} as on the host" if "metric" in v else v.get("reason", "")))
    for c in result.candidates:
        bad = [v for v in c.info.get("verified_on", []) if not v.get("ok")]
        if bad:
            out.append(f"- `{c.id}` rejected on " + "; ".join(f"`{v['device']}`: {v.get('reason')}" for v in bad))
    if bench.get("confirm"):
        out.append(f"- confirmed head to head ({bench.get('confirm_rounds')} rounds, policy `{bench.get('policy')}`): "
                   + ", ".join(f"`{c}`" for c in bench["confirm"]))
    tel = d.get("telemetry") or {}
    if "loadavg_before" in tel:
        out.append(f"- machine load (1-min average) before/after timing: {tel.get('loadavg_before')} / {tel.get('loadavg_after')}")
    if bench.get("noisy"):
        out.append(f"- **warning: noisy run** ({'; '.join(bench.get('noise_reasons') or [])}): speedups are less certain "
                   "than usual; rerun on a quieter machine before trusting small differences")
    if bench.get("cached"):
        out.append(f"- timings reused from the cache (measured {bench.get('measured_at')}; the candidates are identical)")
    other = bench.get("other_policy")
    rows = [c for c in result.candidates if c.info.get(f"speedup_{other}")]
    if rows:
        out += ["", f"### Thread-pool policy: `{bench.get('policy')}` (selects) vs `{other}`", "",
                "`dedicated`: pool threads spin between runs (OMP_WAIT_POLICY=ACTIVE, ORT allow_spinning=1), best on an "
                "idle CPU; `shared`: they sleep (PASSIVE, allow_spinning=0), best when other work competes for the cores.", "",
                f"| candidate | speedup ({bench.get('policy')}) | speedup ({other}) |", "|---|---|---|"]
        for c in rows:
            o = c.info[f"speedup_{other}"]
            rng = o.get("range") or [0, 0]
            out.append(f"| {c.id} | {c.speedup:.2f}x [{c.speedup_range[0]:.2f}-{c.speedup_range[1]:.2f}] | "
                       f"{o['speedup']:.2f}x [{rng[0]:.2f}-{rng[1]:.2f}] |")
        if f"if_{other}" in sel:
            out.append(f"\nWith `--cpu {other}` the selection would be `{sel[f'if_{other}']}`.")
    prov = [k for k in ("command", "versions", "model_sha256") if d.get(k)]
    if prov:
        out += ["", "## Reproduce", "", f"- command: `{' '.join(map(str, d.get('command') or []))}` (options in config.yaml)",
                f"- versions: {', '.join(f'{k} {v}' for k, v in (d.get('versions') or {}).items())}",
                f"- model sha256 {d.get('model_sha256', '')[:16]}..., data sha256 {str((d.get('data') or {}).get('sha256'))[:16]}..."]
    return out


def _deploy_md(deploy_info: dict | None, snippet: str | None) -> list[str]:
    if not deploy_info:
        return []
    names = ", ".join("`" + (f["name"] if isinstance(f, dict) else str(f)) + "`" for f in deploy_info.get("files", []))
    out = ["", "## Deploy", "", f"Engine `{deploy_info.get('engine')}` {deploy_info.get('engine_version', '')}, precision "
           f"`{deploy_info.get('precision')}`; files: {names} and "
           "`deploy.json` (runtime options, input/output names and shapes, pre/post-processing).",
           "", "Run it with edgeslim: `edgeslim run . IMAGE...` or `edgeslim.load(folder).predict([...])`. "
           "Without edgeslim, with the engine's own Python API:"]
    if snippet:
        out += ["", "```python", snippet.rstrip(), "```"]
    return out


_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}
code{background:#f4f4f4;padding:0 3px}pre{background:#f4f4f4;padding:8px;overflow-x:auto}img{max-width:100%}"""


def _html(result, md_text: str, png: bytes) -> str:
    """report.md rendered as HTML (Python-Markdown, tables and fenced code), the plot embedded: one source for both
    reports, so the HTML holds every section the Markdown does."""
    import markdown as md

    body = md.markdown(md_text, extensions=["tables", "fenced_code"], output_format="html")
    img = "data:image/png;base64," + base64.b64encode(png).decode()
    body = body.replace('src="pareto.png"', f'src="{img}"')
    title = html.escape(f"edgeslim report: {result.to_dict()['model']}")
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>{_CSS}</style></head>'
            f"<body>\n{body}\n</body></html>\n")


def write_report(result, outdir: Path, deploy_info: dict | None = None) -> dict[str, Path]:
    """Write results.json, report.md, report.html, pareto.png into `outdir`; returns their paths. With `deploy_info`
    (what `edgeslim.deploy.export` wrote) the reports show how to run the delivered model with the engine's own API."""
    outdir.mkdir(parents=True, exist_ok=True)
    snippet = None
    if deploy_info:
        from .deploy import snippet as make_snippet

        snippet = make_snippet(outdir)
    paths = {k: outdir / v for k, v in
             {"json": "results.json", "md": "report.md", "html": "report.html", "png": "pareto.png"}.items()}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2, default=_json_default))
    pareto_plot(result, paths["png"])
    md = markdown(result) + "\n".join(_deploy_md(deploy_info, snippet)) + "\n"
    paths["md"].write_text(md)
    paths["html"].write_text(_html(result, md, paths["png"].read_bytes()))
    return paths


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    return str(o)
