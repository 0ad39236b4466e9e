"""The HTML report of `make bench`: build/bench/report.html, the figures the benches
wrote (build/bench/*.json, save_figures) as tables and plots (matplotlib PNGs embedded in
the page, so the one file can be sent around; each also written beside it as
build/bench/<plot>.png). `python -m bench.report` rewrites it; `python -m bench.report
--docs docs/bench` also copies the plots there, where the README shows them."""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from bench.rounds import spread as _spread

REPORT_DIR = Path(__file__).resolve().parents[1] / "build/bench"


def save_figures(name: str, figures: dict) -> Path:
    """build/bench/<name>.json, with the load average and cores when it was written (read by write())."""
    figures = {**figures, "load_average": os.getloadavg(), "cores": os.cpu_count(),
               "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    path = REPORT_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=1))
    return path


def record_run(ran: list[dict]) -> None:
    """build/bench/run.json: when each bench last ran, how long, the load average around it (a
    bench run alone replaces its own row and keeps the others', as its figures' file does)."""
    path = REPORT_DIR / "run.json"
    names = {bench["bench"] for bench in ran}
    earlier = json.loads(path.read_text())["benches"] if path.exists() else []
    save_figures("run", {"benches": [b for b in earlier if b["bench"] not in names] + ran})


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(figure, name: str) -> str:
    """The plot as build/bench/<name>.png and as an <img> embedded in the page."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    (REPORT_DIR / f"{name}.png").write_bytes(buffer.getvalue())
    _pyplot().close(figure)
    return f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _log_axes(axis) -> None:
    """Both axes logarithmic, labelled 1, 2, 5, 10, 20, 50k ... rather than in powers of ten."""
    from matplotlib.ticker import FuncFormatter

    def label(value: float, _position) -> str:
        if value <= 0 or f"{value:.0e}"[0] not in "125":
            return ""
        return f"{value / 1000:g}k" if value >= 1000 else f"{value:g}"
    axis.set_xscale("log")
    axis.set_yscale("log")
    for which in (axis.xaxis, axis.yaxis):
        which.set_major_formatter(FuncFormatter(label))
        which.set_minor_formatter(FuncFormatter(label))


def _load(figures: dict) -> str:
    one, five, fifteen = figures["load_average"]
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {figures['cores']} cores when written"


def _error_bars(series: list[list[float]]) -> tuple[list[float], list[list[float]]]:
    """(medians, [below, above]) for matplotlib's yerr: the min-max of the rounds around each median."""
    medians = [statistics.median(values) for values in series]
    return medians, [[m - min(v) for m, v in zip(medians, series)], [max(v) - m for m, v in zip(medians, series)]]


def run_section(figures: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(b['bench'])}</td><td>{b['at']}</td><td>{b['seconds']:.0f}</td>"
                   f"<td>{b['load_start']:.2f}</td><td>{b['load_end']:.2f}</td></tr>" for b in figures["benches"])
    return (f"<h2>The runs</h2><p>{figures['cores']} cores; every figure is min / median / max of its rounds "
            "(a shared machine: compare the ratios of one run).</p><table><tr><th>bench</th><th>finished</th>"
            f"<th>seconds</th><th>load average at start</th><th>at end</th></tr>{rows}</table>")


def vs_fr_section(figures: dict) -> str:
    plt = _pyplot()
    parts = [f"<h2>Visage vs face_recognition</h2><p>{figures['processes']} processes each side, "
             f"{figures['rounds']} alternating rounds, load average at start {figures['load_average'][0]:.2f} on "
             f"{figures['cores']} cores (a shared machine: compare ratios).</p>",
             "<table><tr><th>photos</th><th>count</th><th>median MP</th><th>face_recognition photos/s</th>"
             "<th>Visage photos/s</th><th>ratio (min / median / max)</th><th>faces fr / Visage / missed</th>"
             "<th>embedding distance p95 (noise p95)</th></tr>"]
    for item in figures["sets"]:
        found = item["match"]
        distances = found["distances"] or [0.0]
        noise = item["noise"] or [0.0]
        parts.append(
            f"<tr><td>{html.escape(item['name'])}</td><td>{len(item['paths'])}</td>"
            f"<td>{statistics.median(item['sizes']):.2f}</td><td>{_spread(item['fr_rates'])}</td>"
            f"<td>{_spread(item['visage_rates'])}</td><td>{_spread(item['ratios'])}</td>"
            f"<td>{found['fr_faces']} / {found['visage_faces']} / {len(found['missed'])}</td>"
            f"<td>{sorted(distances)[int(0.95 * (len(distances) - 1))]:.3f} "
            f"({sorted(noise)[int(0.95 * (len(noise) - 1))]:.3f})</td></tr>")
    parts.append("</table>")

    figure, (rates, sizes) = plt.subplots(1, 2, figsize=(11, 4))
    names = [item["name"] for item in figures["sets"]]
    medians = [statistics.median(item["ratios"]) for item in figures["sets"]]
    rates.bar(names, medians, 0.5, yerr=[[m - min(item["ratios"]) for m, item in zip(medians, figures["sets"])],
                                         [max(item["ratios"]) - m for m, item in zip(medians, figures["sets"])]])
    rates.axhline(1.3, linestyle="--", color="grey", label="target 1.3x")
    rates.set_ylabel("Visage / face_recognition photos/s")
    rates.set_title("Throughput ratio by photo set (median, min-max of rounds)")
    rates.legend()
    latency = figures.get("latency")
    for item in figures["sets"]:
        sizes.scatter(item["sizes"], item["fr_seconds"], s=12, label=f"face_recognition in its pool, {item['name']}")
    if latency and "sizes" in latency:  # both sides one photo at a time: the per-photo comparison
        for key, label, mark in (("fr", "face_recognition, one at a time", "x"), ("visage", "Visage Classify RPC", "+")):
            sizes.scatter(latency["sizes"], latency[key], s=14, marker=mark, label=label)
    _log_axes(sizes)
    sizes.set_xlabel("megapixels")
    sizes.set_ylabel("seconds per photo")
    sizes.set_title("Time per photo vs photo size (every round)")
    sizes.legend(fontsize=8)
    parts.append(_png(figure, "vs_fr_throughput"))

    if latency:
        figure, axis = plt.subplots(figsize=(6, 4))
        for key, label in (("fr", "face_recognition, one photo"), ("visage", "Visage Classify RPC")):
            values = sorted(v * 1000 for v in latency[key])
            axis.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=label)
        axis.set_xscale("log")
        axis.set_xlabel("ms per photo")
        axis.set_ylabel("share of photos")
        axis.set_title("Per-photo latency (CDF, every round)")
        axis.legend()
        parts.append(f"<p>Per-photo latency speed-up (face_recognition / Visage): p50 "
                     f"{_spread(latency['p50_ratios'])}, p95 {_spread(latency['p95_ratios'])} (min / median / max "
                     "of rounds).</p>" + _png(figure, "vs_fr_latency"))
    return "\n".join(parts)


def reclassify_section(figures: dict) -> str:
    plt = _pyplot()
    parts = [f"<h2>Re-classification: faces/s vs number of faces</h2><p>Synthetic embeddings, 50 personas; the "
             "first run writes every verdict; each re-run (a newly activated version, as after a label) evaluates "
             "every face and writes the verdicts that change; baseline: in-process sklearn predict_proba on the "
             f"same embeddings. {figures['rounds']} rounds, re-run and baseline alternating; {_load(figures)}.</p>",
             "<table><tr><th>store</th><th>faces</th><th>first run faces/s</th><th>re-run faces/s (min / median / "
             "max)</th><th>sklearn faces/s (median)</th><th>re-run / sklearn</th><th>rows a re-run wrote (most)"
             "</th><th>load</th></tr>"]
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for store, curve in figures["stores"].items():
        for row in curve:
            parts.append(f"<tr><td>{store}</td><td>{row['faces']:,}</td><td>{row['first']:,.0f}</td>"
                         f"<td>{_spread(row['again'], 0)}</td><td>{statistics.median(row['sklearn']):,.0f}</td>"
                         f"<td>{statistics.median(row['again']) / statistics.median(row['sklearn']):.2f}</td>"
                         f"<td>{max(row['rewritten']):,}</td><td>{row['load_average']:.1f}</td></tr>")
        if curve:
            faces = [row["faces"] for row in curve]
            medians, bars = _error_bars([row["again"] for row in curve])
            line = axis.errorbar(faces, medians, yerr=bars, marker="o", capsize=3, label=f"{store}: re-run")
            axis.plot(faces, [row["first"] for row in curve], marker="x", linestyle="--",
                      color=line[0].get_color(), label=f"{store}: first run")
    parts.append("</table>")
    axis.axhline(100_000, linestyle=":", color="grey", label="target 100k faces/s (SQLite)")
    _log_axes(axis)
    axis.set_xlabel("faces in the store")
    axis.set_ylabel("faces/s (median, min-max of rounds)")
    axis.set_title("Re-classification throughput vs number of faces")
    axis.legend(fontsize=8)
    parts.append(_png(figure, "reclassify_scale"))
    return "\n".join(parts)


def clusters_section(figures: dict) -> str:
    plt = _pyplot()
    quality = figures["quality"]
    parts = [f"<h2>Suggested people: clustering time vs number of faces</h2><p>Shared photos: {quality['faces']} "
             f"faces, purity {quality['purity']:.3f}, completeness {quality['completeness']:.3f}, coverage "
             f"{quality['coverage']:.3f}, {quality['groups']} suggested people. Speed on synthetic dlib-like "
             f"embeddings: the partitioned clustering the query service runs vs one HDBSCAN over every face "
             f"(quadratic: only up to {figures['baseline_max']:,} faces); {figures['rounds']} rounds alternating; "
             f"{_load(figures)}.</p>",
             "<table><tr><th>faces</th><th>partitioned s (min / median / max)</th><th>one HDBSCAN s</th>"
             "<th>speed-up (medians)</th><th>purity</th><th>completeness</th></tr>"]
    for row in figures["sizes"]:
        baseline = _spread(row["baseline"], 1) if row["baseline"] else "skipped"
        speedup = (f"{statistics.median(row['baseline']) / statistics.median(row['partitioned']):.1f}x"
                   if row["baseline"] else "")
        parts.append(f"<tr><td>{row['faces']:,}</td><td>{_spread(row['partitioned'], 1)}</td><td>{baseline}</td>"
                     f"<td>{speedup}</td><td>{row['purity']:.3f}</td><td>{row['completeness']:.3f}</td></tr>")
    service = figures["service"]
    parts.append(f"</table><p>The query service's path, {service['faces']:,} unknown faces in SQLite: read "
                 f"{_spread(service['read'], 1)} s + cluster {_spread(service['cluster'], 1)} s (target: 100k "
                 "faces &lt; 30 s).</p>")
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for key, label in (("partitioned", "partitioned (the query service)"), ("baseline", "one HDBSCAN")):
        rows = [row for row in figures["sizes"] if row[key]]
        medians, bars = _error_bars([row[key] for row in rows])
        axis.errorbar([row["faces"] for row in rows], medians, yerr=bars, marker="o", capsize=3, label=label)
    axis.axhline(30, linestyle=":", color="grey", label="target: 100k faces < 30 s")
    _log_axes(axis)
    axis.set_xlabel("faces")
    axis.set_ylabel("seconds (median, min-max of rounds)")
    axis.set_title("Clustering time vs number of faces")
    axis.legend(fontsize=8)
    parts.append(_png(figure, "clusters_scale"))
    return "\n".join(parts)


SECTIONS = {"run.json": run_section, "vs_fr.json": vs_fr_section, "reclassify.json": reclassify_section,
            "clusters.json": clusters_section}


def write() -> Path | None:
    """The report from whatever figures exist; None when no bench wrote any."""
    for old in REPORT_DIR.glob("*.png"):  # plots of figures no longer there go too
        old.unlink()
    sections = [render(json.loads((REPORT_DIR / name).read_text()))
                for name, render in SECTIONS.items() if (REPORT_DIR / name).exists()]
    if not sections:
        return None
    page = ("<!doctype html><meta charset=utf-8><title>Visage benchmarks</title><style>body{font-family:sans-serif;"
            "max-width:1100px;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;text-align:right}</style><h1>Visage benchmarks</h1>" + "\n".join(sections))
    path = REPORT_DIR / "report.html"
    path.write_text(page)
    return path


def copy_plots(docs: Path) -> list[Path]:
    """The plots of the last write() into `docs` (the README shows docs/bench/*.png)."""
    docs.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(png, docs)) for png in sorted(REPORT_DIR.glob("*.png"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, help="also copy the plots here, e.g. docs/bench")
    args = parser.parse_args(argv)
    page = write()
    print(page or "no figures in build/bench yet: run make bench")
    if page is not None and args.docs:
        for copied in copy_plots(args.docs):
            print(copied)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
