"""PNG plots of the artifact benchmark's results, for ``docs/benchmarks.md``.

* ``latency-vs-size.png``: single-query p50 (encode included) against catalog size, one
  line per system;
* ``recall-qps.png``: the IVF nprobe sweep as recall against batch queries per second, one
  line per catalog size (10-recall@10 and recall@1 panels).

    python benchmarks/plots.py [results/artifact.json] [--out docs/img]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common import REPO_DIR, RESULTS_DIR, pyplot

#: Systems drawn in the latency plot, in legend order (others are left out for legibility).
LATENCY_SYSTEMS = (
    "this library flat", "this library ivf-fp16", "this library ivf-pq", "upstream (zero-shot)",
    "vicinity basic", "vicinity faiss flat", "floor flat",
)  # fmt: skip


def latency_vs_size(doc: dict[str, Any], path: Path) -> Path:
    """Single-query p50 against entities, log-log, one line per system present at 2+ sizes."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    floors = {}
    for name in LATENCY_SYSTEMS:
        points = [
            (size["entities"], system["single"]["p50_ms"])
            for size in doc["sizes"]
            for system in size.get("systems", [])
            if system["name"] == name
        ]
        if points:
            style = "--" if name.startswith("floor") else "-"
            ax.plot(*zip(*points, strict=True), style, marker="o", label=name)
    for size in doc["sizes"]:  # the IVF floor's nlist changes with size: one series
        for system in size.get("systems", []):
            if system["name"].startswith("floor IVF"):
                floors[size["entities"]] = system["single"]["p50_ms"]
    if floors:
        ax.plot(list(floors), list(floors.values()), "--", marker="s",
                label="floor IVF (same nlist, nprobe as ours)")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="catalog entities",
           ylabel="single-query p50, ms (encode included)",
           title="Single-query latency against catalog size")  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def recall_qps(doc: dict[str, Any], path: Path) -> Path:
    """IVF nprobe sweep: recall against batch q/s (top 10), one line per catalog size."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    panels = ((axes[0], "recall_at_10", "10-recall@10 (share of the exact top 10)"),
              (axes[1], "recall_at_1", "recall@1 (the top hit is exact)"))  # fmt: skip
    for ax, key, label in panels:
        for size in doc["sizes"]:
            sweep = size.get("nprobe_sweep", [])
            if not sweep or key not in sweep[0]:
                continue
            xs = [point[key] for point in sweep]
            ys = [point["batch_qps_top10"] for point in sweep]
            line = ax.plot(xs, ys, marker="o", label=f"{size['entities']:,} entities")[0]
            for point in sweep:
                if point["stored"]:
                    ax.plot(point[key], point["batch_qps_top10"], "*", markersize=14,
                            color=line.get_color())  # fmt: skip
                ax.annotate(str(point["nprobe"]), (point[key], point["batch_qps_top10"]),
                            fontsize=6, xytext=(3, 3), textcoords="offset points")  # fmt: skip
        ax.set(yscale="log", xlabel=label, title=f"IVF nprobe sweep: {label.split(' ')[0]}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("batch queries/s (top 10)")
    axes[0].legend(fontsize=8, title="star = stored nprobe", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def draw(results: Path, out: Path) -> list[Path]:
    """Both plots of ``results`` (an artifact benchmark JSON) into folder ``out``."""
    doc = json.loads(results.read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    return [latency_vs_size(doc, out / "latency-vs-size.png"),
            recall_qps(doc, out / "recall-qps.png")]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Draw the plots; prints where they went."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="?", default=RESULTS_DIR / "artifact.json")
    parser.add_argument("--out", type=Path, default=REPO_DIR / "docs" / "img")
    args = parser.parse_args(argv)
    for path in draw(args.results, args.out):
        print(f"wrote {path.relative_to(REPO_DIR) if path.is_relative_to(REPO_DIR) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
