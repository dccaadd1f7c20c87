"""PQ code size for the ``ivf-pq`` kinds: fewer 4-bit sub-quantizers against recall and speed.

Re-indexes the vectors of the artifact benchmark's ``ivf-pq`` artifact (1M entities by
default; build it first with ``python benchmarks/artifact_bench.py --sizes 1M``) with the
same coarse lists and ``PQ{M}x4fs`` codes for each ``M`` and each spill (every vector
filed under its ``spill`` nearest lists), in one process, and measures:
build (train + add) seconds, index bytes, opening the index file (median of 5, page cache
warm), and for each nprobe the tie-aware recall@1 and R@10 (the exact top hit is among the
10 returned) after the library's exact re-rank, against exact search, on one-letter-typo
queries of the catalog's own texts, and 10-recall@10 (how much of the exact top 10 is
returned), plus the single-query search p50 on one thread (encoding excluded: it is the
same for every M).

    python benchmarks/pq_bench.py [--size 1M] [--subquantizers 128 64] [--spill 1 2]
        [--nprobe 16 32 64] [--name pq]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import (
    environment,
    faiss_threads,
    human_bytes,
    latencies_ms,
    markdown_table,
    median_seconds,
    percentile,
    pin_threads,
    timed,
    utc_stamp,
    write_results,
)


def measure(ix: Any, queries: Any, vectors: Any, truth: Any, nprobes: list[int], rerank: int,
            singles: int, spill: int = 1) -> list[dict[str, Any]]:  # fmt: skip
    """Recall and single-query latency of ``ix`` at each nprobe."""
    from harness import search_recall

    from novelentitymatcher_faiss.index.search import search

    rows = []
    options = {"vectors": vectors, "rerank": rerank, "spill": spill}
    for nprobe in nprobes:  # truth: exact top-10 rows, best first
        figures = search_recall(ix, queries, truth, vectors, nprobe, rerank=rerank, spill=spill)
        times = latencies_ms(lambda q, n=nprobe: search(ix, q[None], 1, nprobe=n, **options),
                             queries[:singles])  # fmt: skip
        rows.append({
            "nprobe": nprobe,
            **figures,
            "single_p50_ms": statistics.median(times),
            "single_p99_ms": percentile(times, 99),
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1M")
    parser.add_argument("--subquantizers", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--spill", type=int, nargs="+", default=[1])
    parser.add_argument("--name", default="pq", help="results file name (default: pq)")
    parser.add_argument("--rerank", type=int, default=4)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--singles", type=int, default=200)
    args = parser.parse_args(argv)
    threads = pin_threads(2)

    import faiss
    import make_catalog
    from harness import existing_artifact

    from novelentitymatcher_faiss import load_index
    from novelentitymatcher_faiss.artifact.files import open_faiss_index
    from novelentitymatcher_faiss.index.indexing import train_and_add
    from novelentitymatcher_faiss.index.search import exact_knn
    from novelentitymatcher_faiss.index.tuning import typo_queries

    info = environment(threads)
    size = make_catalog.parse_size(args.size)
    path = existing_artifact(args.size, "ivf-pq")
    if path is None:
        return 2
    source = load_index(path)
    vectors, nlist = source.vectors, source.manifest.index.nlist
    queries = typo_queries(path, source.encoder, source.lexical, source.normalizer, 7)
    queries = queries[: args.queries]
    print(f"{len(vectors):,} vectors of {vectors.shape[1]}-d, {len(queries)} typo queries; "
          "exact search ...", flush=True)  # fmt: skip
    truth, _ = exact_knn(queries, vectors, 10)
    results = []
    for m, spill in [(m, s) for m in args.subquantizers for s in args.spill]:
        factory = f"IVF{nlist},PQ{m}x4fs"
        faiss_threads(2)
        build_s, ix = timed(lambda f=factory, s=spill: train_and_add(f, vectors, 0, True, spill=s))
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / "index.faiss"
            faiss.write_index(ix, str(file))
            _, opens = median_seconds(lambda f=file: open_faiss_index(f), 5)
            size_bytes = file.stat().st_size
        faiss_threads(1)
        rows = measure(ix, queries, vectors, truth, args.nprobe, args.rerank, args.singles, spill)
        results.append({"factory": factory, "spill": spill, "build_s": build_s,
                        "index_bytes": size_bytes,
                        "open_s": statistics.median(opens), "by_nprobe": rows})  # fmt: skip
        print(f"{factory} spill {spill}: {human_bytes(size_bytes)}, "
              f"open {statistics.median(opens):.3f} s, "
              + "; ".join(f"nprobe {r['nprobe']} R@1 {r['recall_at_1']:.3f} "
                          f"{r['single_p50_ms']:.2f} ms" for r in rows), flush=True)  # fmt: skip
    doc = {"benchmark": "pq", "entities": size, "vectors": len(vectors), "rerank": args.rerank,
           "queries": len(queries), "environment": info, "results": results,
           "started_at": utc_stamp()}  # fmt: skip
    table = markdown_table(
        ["index", "spill", "bytes", "open s", "build s", "nprobe", "recall@1", "R@10",
         "10-recall@10", "single p50 ms"],
        [[r["factory"], r.get("spill", 1), human_bytes(r["index_bytes"]), f"{r['open_s']:.3f}",
          f"{r['build_s']:.0f}",
          p["nprobe"], f"{p['recall_at_1']:.3f}", f"{p['r_at_10']:.3f}",
          f"{p['recall_10_at_10']:.3f}", f"{p['single_p50_ms']:.2f}"]
         for r in results for p in r["by_nprobe"]],
    )  # fmt: skip
    machine = info["machine"]
    markdown = (
        f"# PQ code size ({size:,} entities, {len(vectors):,} vectors)\n\n"
        f"`python benchmarks/pq_bench.py {' '.join(sys.argv[1:] if argv is None else argv)}`, "
        f"{doc['started_at']}. "
        f"Exact re-rank of {args.rerank}x the candidates; {len(queries)} typo queries; "
        f"single-query top-1 search on one thread, re-rank included, encoding excluded. "
        f"Machine: "
        f"{machine['cpu_model']}, {machine['usable_cores']} cores.\n\n" + table
    )
    write_results(args.name, doc, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
