"""Filtered search: recall and speed by selectivity, against exact filtered search.

Builds (once, cached under ``benchmarks/data/artifacts``) an artifact of the real-name
catalog of ``--size`` entities (``make_catalog.py``) with an int metadata column
``bucket`` (crc32 of the id mod 100) and the vectors kept, then for filters keeping 1%, 10%
and 50% of the entities (``where={"bucket": {"lt": 1 | 10 | 50}}``) measures, on
one-letter-typo names of the catalog, every path in the same process:

* ``library``: ``match(texts, top_k=10, where=...)`` as the library chooses (exact scan of
  the selected rows up to ``filters.EXACT_SCAN_MAX_ROWS``, else an ``IDSelectorBitmap``
  search with nprobe scaled by the selected share);
* ``selector`` / ``exact scan``: each of those two paths forced;
* ``post-filter``: the unfiltered top 100 filtered afterwards in Python (what a user does
  without filters);
* the unfiltered ``match`` for reference.

Recall@1 / recall@10 are against an exact filtered brute-force search over the artifact's
own stored vectors (entity level, tie-aware at 1e-4). Batch q/s (one call with every
query, two threads) and single-query p50 (one thread) are medians over ``--rounds``.

    python benchmarks/filter_bench.py [--size 1M] [--kind auto] [--queries 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import zlib
from pathlib import Path
from typing import Any

from common import (
    DATA_DIR,
    environment,
    faiss_threads,
    latencies_ms,
    markdown_table,
    pin_threads,
    timed,
    write_results,
)

SHARES = (0.01, 0.10, 0.50)
POST_FILTER_FETCH = 100
TOP_K = 10


def bucket(entity_id: str) -> int:
    """The benchmark's metadata value of an entity: 0..99, fixed by its id."""
    return zlib.crc32(entity_id.encode("utf-8")) % 100


def build(size: int, kind: str, rebuild: bool) -> Path:
    """The cached artifact of the catalog with its ``bucket`` column (vectors kept)."""
    import make_catalog
    from harness import as_entities, catalog_rows

    from novelentitymatcher_faiss import build_index

    label = make_catalog.size_label(size)
    path = DATA_DIR / "artifacts" / f"filter-names-{label}-{kind}"
    if (path / "manifest.json").exists() and not rebuild:
        return path
    entities = as_entities(catalog_rows(size), bucket=bucket)
    seconds, _ = timed(lambda: build_index(entities, path, index_type=kind, keep_vectors=True,
                                           overwrite=True))  # fmt: skip
    print(f"  built {path.name} in {seconds:.0f} s")
    return path


def truth(index: Any, queries: Any, share: float) -> tuple[list[list[str]], list[float]]:
    """Exact filtered top-10 entity ids per query and each query's best score, by brute
    force over the stored vectors."""
    import numpy as np

    from novelentitymatcher_faiss.index.search import best_per_entity
    from novelentitymatcher_faiss.query.filters import exact_scan

    selection = {"bucket": {"lt": round(share * 100)}}
    kept = index.columns.mask("bucket", selection["bucket"])
    rows = np.flatnonzero(kept[np.asarray(index.row_entity)])
    scores, found = exact_scan(queries, index.vectors, rows, TOP_K * index._fetch_per_entity)
    scores, _, entities = best_per_entity(scores, found, index.row_entity, TOP_K)
    ids = [[index.ids[int(e)] for e in row if e >= 0] for row in entities]
    return ids, scores[:, 0].tolist()


def recall(hits: list[list[dict[str, Any]]], ids: list[list[str]], best: list[float]) -> dict:
    """recall@1 (tie-aware: a top hit scoring within 1e-4 of the true best counts) and
    recall@10 against the exact filtered top-10."""
    r1 = [bool(h) and (h[0]["id"] == t[0] or h[0]["score"] >= b - 1e-4)
          for h, t, b in zip(hits, ids, best, strict=True)]  # fmt: skip
    r10 = [len({x["id"] for x in h[:TOP_K]} & set(t)) / max(1, len(t))
           for h, t in zip(hits, ids, strict=True)]  # fmt: skip
    return {"recall_at_1": statistics.mean(r1), "recall_at_10": statistics.mean(r10)}


def timings(call: Any, texts: list[str], rounds: int) -> dict[str, float]:
    """Batch q/s (two threads) and single-query p50 ms (one thread), medians over rounds."""
    qps, p50 = [], []
    call(texts[:8])
    for _ in range(rounds):
        faiss_threads(2)
        qps.append(len(texts) / timed(lambda: call(texts))[0])
        faiss_threads(1)
        p50.append(statistics.median(latencies_ms(lambda t: call([t]), texts[:100])))
    faiss_threads(2)
    return {"batch_qps": statistics.median(qps), "single_p50_ms": statistics.median(p50)}


SWEEP_SHARES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
SWEEP_BATCH = 64


def path_sweep(index: Any, texts: list[str], rounds: int) -> list[dict[str, Any]]:
    """Per-query ms of the selector and exact-scan paths, one query at a time (p50 of 30)
    and in batches of ``SWEEP_BATCH``, at each of ``SWEEP_SHARES``: where the library's
    ``EXACT_SCAN_MAX_ROWS`` and ``EXACT_SCAN_BATCH_MAX_ROWS`` come from."""
    from novelentitymatcher_faiss.query import filters

    saved = filters.EXACT_SCAN_MAX_ROWS, filters.EXACT_SCAN_BATCH_MAX_ROWS
    out = []
    for share in SWEEP_SHARES:
        where = {"bucket": {"lt": round(share * 100)}}  # buckets are whole percents
        rows = int(index.selected_rows(filters.make_selection(where))[1].sum())
        figures: dict[str, Any] = {"share": share, "rows": rows}
        for name, limit in (("selector", 0), ("exact", 10**12)):
            filters.EXACT_SCAN_MAX_ROWS = filters.EXACT_SCAN_BATCH_MAX_ROWS = limit

            def one(t: str, where: dict = where) -> Any:
                return index.match(t, top_k=TOP_K, where=where)

            faiss_threads(1)
            single = [statistics.median(latencies_ms(one, texts[:30])) for _ in range(rounds)]
            faiss_threads(2)
            batch = [timed(lambda w=where: index.match(texts[:SWEEP_BATCH], top_k=TOP_K,
                                                       where=w))[0] * 1e3 / SWEEP_BATCH
                     for _ in range(rounds)]  # fmt: skip
            figures[f"{name}_single_ms"] = statistics.median(single)
            figures[f"{name}_batch_ms_per_query"] = statistics.median(batch)
        filters.EXACT_SCAN_MAX_ROWS, filters.EXACT_SCAN_BATCH_MAX_ROWS = saved
        print("  sweep", figures)
        out.append(figures)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1M")
    parser.add_argument("--kind", default="auto")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--sweep", action="store_true",
                        help="only time both paths at more shares (one query, and batches)")
    args = parser.parse_args(argv)
    threads = pin_threads(2)
    import make_catalog
    from harness import QUERY_SEED, catalog_rows, typo_queries

    from novelentitymatcher_faiss import filters, load_index
    from novelentitymatcher_faiss.text.lexical import featurize
    from novelentitymatcher_faiss.text.normalize import normalize_text

    info = environment(threads)
    size = make_catalog.parse_size(args.size)
    index = load_index(build(size, args.kind, args.rebuild))
    texts, _ = typo_queries(catalog_rows(size), args.queries, QUERY_SEED + 3)
    vectors = featurize([normalize_text(t, index.normalizer) for t in texts], index.encoder,
                        index.lexical)  # fmt: skip
    print(f"  {index!r}, nprobe {index.breadth}")
    if args.sweep:
        sweep = path_sweep(index, texts, args.rounds)
        label = make_catalog.size_label(size)
        headers = ["selected", "rows", "selector 1 query ms", "exact 1 query ms",
                   f"selector ms/query, batch {SWEEP_BATCH}",
                   f"exact ms/query, batch {SWEEP_BATCH}"]  # fmt: skip
        table = [[f"{f['share']:.1%}", f"{f['rows']:,}", f"{f['selector_single_ms']:.2f}",
                  f"{f['exact_single_ms']:.2f}", f"{f['selector_batch_ms_per_query']:.2f}",
                  f"{f['exact_batch_ms_per_query']:.2f}"] for f in sweep]  # fmt: skip
        markdown = (f"# Filtered search paths ({label}, {index.manifest.index.type})\n\n"
                    f"`python benchmarks/filter_bench.py --size {args.size} --sweep`\n\n"
                    + markdown_table(headers, table))  # fmt: skip
        write_results(f"filter-sweep-{label}-{args.kind}", {**info, "sweep": sweep}, markdown)
        print(markdown)
        return 0
    plain = timings(lambda q: index.match(q, top_k=TOP_K), texts, args.rounds)
    out: dict[str, Any] = {"unfiltered": plain, "shares": []}
    table = [["no filter", "100%", "", "", "", f"{plain['batch_qps']:,.0f}",
              f"{plain['single_p50_ms']:.2f}"]]  # fmt: skip
    default_limit = filters.EXACT_SCAN_MAX_ROWS, filters.EXACT_SCAN_BATCH_MAX_ROWS
    for share in SHARES:
        where = {"bucket": {"lt": round(share * 100)}}
        ids, best = truth(index, vectors, share)
        entities, selected = index.selected_rows(
            filters.make_selection(where)  # type: ignore[arg-type]
        )
        kept = int(entities.sum())
        selected_rows = int(selected.sum())
        library = "exact scan" if selected_rows <= default_limit[0] else "selector"
        if default_limit[0] < selected_rows <= default_limit[1]:
            library = "exact scan in batches, else selector"
        keep = set(index.ids.take(list(map(int, entities.nonzero()[0]))))

        def post_filter(q: list[str], keep: set[str] = keep) -> list[list[dict[str, Any]]]:
            found = index.match(q, top_k=POST_FILTER_FETCH)
            return [[h for h in hits if h["id"] in keep][:TOP_K] for hits in found]

        paths = {
            f"library ({library})": (default_limit, None),
            "selector forced": ((0, 0), None),
            "exact scan forced": ((10**12, 10**12), None),
            f"post-filter of the top {POST_FILTER_FETCH}": (default_limit, post_filter),
        }
        for name, (limit, call) in paths.items():
            filters.EXACT_SCAN_MAX_ROWS, filters.EXACT_SCAN_BATCH_MAX_ROWS = limit
            run = call or (lambda q, where=where: index.match(q, top_k=TOP_K, where=where))
            figures = {**recall(run(texts), ids, best), **timings(run, texts, args.rounds)}
            filters.EXACT_SCAN_MAX_ROWS, filters.EXACT_SCAN_BATCH_MAX_ROWS = default_limit
            out["shares"].append({"share": share, "entities": kept, "rows": selected_rows,
                                  "path": name, **figures})  # fmt: skip
            table.append([name, f"{share:.0%}", f"{kept:,}", f"{figures['recall_at_1']:.3f}",
                          f"{figures['recall_at_10']:.3f}", f"{figures['batch_qps']:,.0f}",
                          f"{figures['single_p50_ms']:.2f}"])  # fmt: skip
            print("  " + " | ".join(table[-1]))
    label = make_catalog.size_label(size)
    headers = ["path", "selected", "entities", "recall@1", "recall@10", "batch q/s",
               "single p50 ms"]  # fmt: skip
    markdown = (
        f"# Filtered search ({label} entities, {index.manifest.index.type}, "
        f"nprobe {index.breadth})\n\n"
        f"`python benchmarks/filter_bench.py --size {args.size} --kind {args.kind}`; "
        f"{args.queries} one-letter-typo names, top {TOP_K}; recall against exact filtered "
        f"search over the artifact's vectors; medians of {args.rounds} rounds; "
        f"exact scan up to {default_limit[0]:,} selected rows for one query, "
        f"{default_limit[1]:,} in batches.\n\n"
        + markdown_table(headers, table)
    )
    data = {"size": size, "kind": args.kind, "queries": args.queries, **info,
            "exact_scan_max_rows, batch":
            default_limit, "index": index.manifest.index.type, "nprobe": index.breadth,
            **out}  # fmt: skip
    write_results(f"filter-{label}-{args.kind}", data, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
