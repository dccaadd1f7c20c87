"""Updating 1% of a catalog against rebuilding it, in one process, on real-name catalogs.

For each size and index kind: the base artifact holds the first N entities of the
``make_catalog.py`` catalog (the artifact benchmark's, reused when present); the change
removes every 200th entity and adds the next N/200 entities of the same generator (new
real names), 1% of the catalog in all. Measured: ``update_index`` (median of repeats), both
as a layered update (the default at this size: the parent hard-linked, a small layer added)
and compacted into one index, against ``build_index`` of the final catalog from scratch
(what a user would otherwise run, nprobe tuning included); how often each answers typo
queries with the same top-1 as the rebuild (ties counted as agreement), and their batch
queries per second on those queries.

    python benchmarks/update_bench.py [--sizes 100k 1M] [--kinds flat ivf] [--repeats 3]
                                      [--merge]

``--merge`` keeps the rows of an earlier ``results/update.json`` for the (size, kind) pairs
not measured this time; each row records when it was measured.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import (
    DATA_DIR,
    RESULTS_DIR,
    batch_qps,
    environment,
    environment_line,
    faiss_threads,
    markdown_table,
    pin_threads,
    timed,
    utc_stamp,
    write_results,
)

THREADS = pin_threads(2)

import make_catalog  # noqa: E402
from harness import (  # noqa: E402
    MODEL,
    artifact_dir,
    as_entities,
    catalog_path,
    ensure_artifact,
    library_source_hash,
    sha256_file,
    typo_queries,
)

from novelentitymatcher_faiss import (  # noqa: E402
    build_index,
    load_encoder,
    load_index,
    update_index,
)

#: One entity in this many is removed, and as many new ones added: 1% changed in all.
EVERY = 200


def change_for(size: int) -> dict[str, Any]:
    """The base catalog path, the entities to add and the ids to remove for ``size``."""
    catalog = catalog_path(size, make_catalog.DEFAULT_SEED)
    rows = list(make_catalog.generate(size + size // EVERY, make_catalog.DEFAULT_SEED))
    base, extra = rows[:size], rows[size:]
    remove = [entity_id for entity_id, _, _ in base[::EVERY]]
    gone = set(remove)
    to_dict = as_entities(extra)
    final = as_entities(row for row in base if row[0] not in gone) + to_dict
    return {"catalog": catalog, "add": to_dict, "remove": remove, "final": final, "rows": rows}


def agreement(a: Any, b: Any, queries: list[str]) -> float:
    """Share of queries whose top-1 hits agree (same entity, or the same score: a tie)."""
    pairs = zip(a.match(queries), b.match(queries), strict=True)
    return statistics.fmean(
        float(x is not None and y is not None and (x["id"] == y["id"] or abs(x["score"]
              - y["score"]) < 1e-5)) for x, y in pairs)  # fmt: skip


def bench(size: int, kind: str, encoder: Any, repeats: int, work: Path) -> dict[str, Any]:
    """Update against rebuild for one (size, kind)."""
    change = change_for(size)
    stamp = {"catalog_sha256": sha256_file(change["catalog"]),
             "library_sha256": library_source_hash()}  # fmt: skip
    base_path = artifact_dir(size, kind, make_catalog.DEFAULT_SEED)
    base = ensure_artifact(change["catalog"], stamp, base_path, kind, encoder, rebuild=False,
                           reuse=True)  # fmt: skip
    times: dict[str, list[float]] = {"layered": [], "compacted": []}
    for _ in range(repeats):
        for mode in times:
            times[mode].append(timed(lambda m=mode: update_index(
                base_path, work / m, add=change["add"], remove=change["remove"], overwrite=True,
                encoder=encoder, show_progress=False, compact=m == "compacted"))[0])  # fmt: skip
    updated = {mode: load_index(work / mode, encoder=encoder) for mode in times}
    rebuild_s, rebuilt = timed(lambda: build_index(
        change["final"], work / "rebuilt", index_type=kind, encoder=encoder, overwrite=True,
        show_progress=False))  # fmt: skip
    queries, _ = typo_queries(
        [(e["id"], e["name"], e["aliases"]) for e in change["final"]], 2000, 11
    )
    lineage = updated["layered"].manifest.lineage
    out = {
        "entities": size,
        "kind": kind,
        "measured_at": utc_stamp(),
        "base_vectors": base["vectors"],
        "added": lineage["added_entities"],
        "removed": lineage["removed_entities"],
        "encoded_vectors": {m: u.manifest.lineage["encoded_vectors"]
                            for m, u in updated.items()},  # fmt: skip
        "update_s": {mode: statistics.median(runs) for mode, runs in times.items()},
        "update_s_runs": {mode: [round(t, 3) for t in runs] for mode, runs in times.items()},
        "rebuild_s": rebuild_s,
        "speedup": {mode: rebuild_s / statistics.median(runs) for mode, runs in times.items()},
        "top1_agreement_with_rebuild": {m: agreement(u, rebuilt, queries)
                                        for m, u in updated.items()},  # fmt: skip
        "batch_qps": {m: batch_qps(u.match, queries)
                      for m, u in {**updated, "rebuilt": rebuilt}.items()},  # fmt: skip
        "nprobe_updated": updated["layered"].breadth,
        "nprobe_rebuilt": rebuilt.breadth,
    }
    del updated, rebuilt
    for name in ("layered", "compacted", "rebuilt"):
        shutil.rmtree(work / name, ignore_errors=True)
    print(f"  {size:>9,} {kind:<5} update layered {out['update_s']['layered']:6.2f} s / "
          f"compacted {out['update_s']['compacted']:6.2f} s, rebuild {rebuild_s:8.2f} s -> "
          f"{out['speedup']['layered']:.1f}x / {out['speedup']['compacted']:.1f}x; top-1 "
          f"agreement {out['top1_agreement_with_rebuild']}", flush=True)  # fmt: skip
    return out


def to_markdown(doc: dict[str, Any]) -> str:
    rows = [[f"{r['entities']:,}", r["kind"], mode, f"+{r['added']:,} / -{r['removed']:,}",
             f"{r['encoded_vectors'][mode]:,}", f"{r['update_s'][mode]:.2f}",
             f"{r['rebuild_s']:.1f}", f"{r['speedup'][mode]:.1f}x",
             f"{r['top1_agreement_with_rebuild'][mode]:.4f}",
             f"{r['batch_qps'][mode]:,.0f} / {r['batch_qps']['rebuilt']:,.0f}",
             f"{r['nprobe_updated']} / {r['nprobe_rebuilt']}"]
            for r in doc["results"] for mode in ("layered", "compacted")]  # fmt: skip
    return "\n".join([
        "# Catalog update against rebuild\n",
        f"{doc['started_at']}; {environment_line(doc['environment'])}.\n",
        "1% of the catalog changes (every 200th entity removed, as many new real names "
        "added). Update = `update_index`, median of runs: layered (the default at this "
        "size) or compacted into one index (`compact=True`); rebuild = `build_index` of the "
        "final catalog from scratch (one run), same process, model already loaded. Batch "
        "q/s: `match` on the same typo queries, median of 3.\n",
        markdown_table(["entities", "index", "update", "change", "vectors encoded",
                        "update s", "rebuild s", "speed-up", "top-1 agreement",
                        "batch q/s updated / rebuilt", "nprobe updated / rebuilt"], rows),
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=make_catalog.parse_size, nargs="+",
                        default=[100_000, 1_000_000])  # fmt: skip
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--merge", action="store_true",
                        help="keep the earlier rows of other (size, kind) pairs")  # fmt: skip
    args = parser.parse_args(argv)
    info = environment({**THREADS, "faiss_omp": str(faiss_threads(2))})
    encoder = load_encoder(MODEL, show_progress=False)
    doc = {"benchmark": "update", "started_at": utc_stamp(), "environment": info, "results": []}
    earlier = RESULTS_DIR / "update.json"
    if args.merge and earlier.exists():
        doc["results"] = [r for r in json.loads(earlier.read_text(encoding="utf-8"))["results"]
                          if (r["entities"], r["kind"]) not in
                          {(s, k) for s in args.sizes for k in args.kinds}]  # fmt: skip
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=DATA_DIR, prefix="update-bench-") as tmp:
        for size in args.sizes:
            for kind in args.kinds:
                doc["results"].append(bench(size, kind, encoder, args.repeats, Path(tmp)))
                doc["results"].sort(key=lambda r: (r["entities"], r["kind"]))
                write_results("update", doc, to_markdown(doc))
    write_results("update", doc, to_markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
