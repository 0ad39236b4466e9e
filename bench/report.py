"""The HTML report of `make bench`: build/bench/report.html, the figures the benches
wrote (build/bench/*.json) as tables and plots (matplotlib PNGs embedded in the
page, so the one file can be sent around). `python -m bench.report` rewrites it."""
from __future__ import annotations

import base64
import html
import io
import json
import statistics
from pathlib import Path

REPORT_DIR = Path(__file__).resolve().parents[1] / "build/bench"


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def vs_fr_section(figures: dict) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
    for item in figures["sets"]:
        sizes.scatter(item["sizes"], item["fr_seconds"], s=12, label=f"face_recognition, {item['name']}")
    sizes.set_xscale("log")
    sizes.set_yscale("log")
    sizes.set_xlabel("megapixels")
    sizes.set_ylabel("seconds per photo (one process)")
    sizes.set_title("face_recognition's time vs photo size")
    sizes.legend(fontsize=8)
    parts.append(_png(figure))
    plt.close(figure)

    latency = figures.get("latency")
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
                     "of rounds).</p>" + _png(figure))
        plt.close(figure)
    return "\n".join(parts)


SECTIONS = {"vs_fr.json": vs_fr_section}


def write() -> Path | None:
    """The report from whatever figures exist; None when no bench wrote any."""
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


if __name__ == "__main__":
    print(write() or "no figures in build/bench yet: run make bench")
