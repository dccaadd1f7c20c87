"""Where one query's time goes: each step of ``MatchIndex.match(text)`` timed on its own.

Opens an artifact of the artifact benchmark (build it first with ``python
benchmarks/artifact_bench.py --sizes SIZE``) and times, on one thread, for one-letter-typo
queries of the catalog's names (medians over ``--rounds`` rounds of each step's p50):

* features: normalize the text and encode it (dense model plus lexical n-grams);
* quantizer: the coarse quantizer's search for all nprobe lists (IVF kinds only);
* stage_lists_K: with early stop, the stages' search for their K lists (the artifact's
  HNSW stage graph where it has one, else the flat quantizer);
* FAISS search: the index's ``search`` for the candidates the library asks for;
* search: the library's search step (FAISS search plus exact re-rank where the kind has it);
* match: the whole ``match(text)`` call, so ``match - features - search`` is the rest
  (input checks, best hit per entity, the result dict);
* search_2_threads, match_2_threads: the same with FAISS allowed two OpenMP threads, which
  the list scans of a staged search use from ``PARALLEL_SCAN_MIN_VECTORS`` vectors on, in
  passes alternating with one-thread passes (``*_1_thread_paired``).

With ``--hnsw-quantizer M`` (IVF kinds) the coarse quantizer (the one the full-nprobe
search uses) is also swapped, in memory only, for an HNSW graph of degree M over the same
centroids, searched at efSearch nprobe and 2 x nprobe: the quantizer and library search
times and the recall@1 of the library search against exact search, beside the stored flat
quantizer's.

    python benchmarks/query_breakdown.py [--size 1M] [--kind ivf-pq] [--queries 300]
        [--hnsw-quantizer 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from typing import Any

from common import (
    environment,
    faiss_threads,
    latencies_ms,
    markdown_table,
    pin_threads,
    timed,
    utc_stamp,
    write_results,
)


def p50_ms(step: Callable[[Any], Any], inputs: list[Any], rounds: int) -> float:
    """Median over ``rounds`` of the p50 wall time of ``step(x)`` for each input, in ms."""
    step(inputs[0])
    return statistics.median(statistics.median(latencies_ms(step, inputs))
                             for _ in range(rounds))  # fmt: skip


def threads_p50_ms(step: Callable[[Any], Any], inputs: list[Any], rounds: int) -> list[float]:
    """[one thread, two threads]: :func:`p50_ms` of ``step`` with FAISS on 1 and on 2
    OpenMP threads, in alternating passes (order swapped each round), so both see the same
    machine noise and the same page cache. Leaves FAISS on one thread."""
    passes: list[list[float]] = [[], []]
    for turn in range(rounds):
        for threads in (1, 2) if turn % 2 == 0 else (2, 1):
            faiss_threads(threads)
            passes[threads - 1].append(p50_ms(step, inputs, 1))
    faiss_threads(1)
    return [statistics.median(times) for times in passes]


def batch_qps(index: Any, texts: list[str], rounds: int) -> dict[str, float]:
    """Queries per second of ``index.match(texts)`` as one batch on two FAISS threads, with
    the staged list scans threaded (this version) and kept on one thread (the previous
    behaviour: ``search.PARALLEL_SCAN_MIN_VECTORS`` set past any scan), in alternating
    passes; medians over ``rounds``."""
    from novelentitymatcher_faiss.index import search as search_module

    default = search_module.PARALLEL_SCAN_MIN_VECTORS
    runs: dict[str, list[float]] = {"threaded_scans": [], "one_thread_scans": []}
    faiss_threads(2)
    try:
        for turn in range(rounds):
            for name in sorted(runs, reverse=turn % 2 == 1):
                search_module.PARALLEL_SCAN_MIN_VECTORS = (
                    default if name == "threaded_scans" else sys.maxsize
                )
                runs[name].append(len(texts) / timed(lambda: index.match(texts))[0])
    finally:
        search_module.PARALLEL_SCAN_MIN_VECTORS = default
        faiss_threads(1)
    return {name: round(statistics.median(qps), 1) for name, qps in runs.items()}


def quantizer_variants(
    faiss_index: Any, flat: Any, encoded: list[Any], library_search: Callable[[Any], Any],
    nprobe: int, degree: int, rounds: int, vectors: Any,
) -> list[dict[str, Any]]:
    """The stored flat quantizer against an HNSW graph of ``degree`` over its centroids
    (efSearch ``nprobe`` and ``2 * nprobe``): quantizer and library search p50 (ms) and the
    recall@1 of the library search against exact search over ``vectors``, or, for an
    artifact without stored vectors (``vectors`` None), the share of queries whose top-1
    row is the flat quantizer's."""
    import faiss
    import numpy as np

    from novelentitymatcher_faiss.index.search import exact_knn, recall_at_k

    ivf = faiss.extract_index_ivf(faiss_index)
    queries = np.vstack(encoded)
    truth = None if vectors is None else exact_knn(queries, vectors, 1, progress="exact search")[0]
    graph = faiss.IndexHNSWFlat(ivf.d, degree, ivf.metric_type)
    graph.add(flat.reconstruct_n(0, ivf.nlist))
    out, flat_rows = [], None
    for label, coarse, ef_search in [("flat", flat, None), *[
            (f"HNSW{degree} efSearch {ef}", graph, ef) for ef in (nprobe, 2 * nprobe)]]:
        if ef_search is not None:
            graph.hnsw.efSearch = ef_search
        ivf.quantizer = coarse
        try:
            found = np.vstack([library_search(q)[1] for q in encoded])
            if truth is None:  # no stored vectors: agreement with the flat quantizer's rows
                if ef_search is None:  # the flat quantizer's own row (listed first)
                    flat_rows = found
                accuracy = {"same_top1_as_flat": float(np.mean(found[:, 0] == flat_rows[:, 0]))}
            else:
                accuracy = {"recall_at_1": recall_at_k(queries, found, truth, vectors)}
            out.append({
                "quantizer": label,
                "quantizer_ms": p50_ms(lambda q, c=coarse: c.search(q, nprobe), encoded, rounds),
                "search_ms": p50_ms(library_search, encoded, rounds),
                **accuracy,
            })  # fmt: skip
        finally:
            ivf.quantizer = flat  # the index owns (and frees) the flat quantizer only
        print(f"  {label:<22} quantizer {out[-1]['quantizer_ms']:.3f} ms, search "
              f"{out[-1]['search_ms']:.3f} ms, {accuracy}",
              flush=True)  # fmt: skip
    return out


def early_stop_figures(
    index: Any, encoded: list[Any], options: dict[str, Any], fetch: int
) -> dict[str, Any]:
    """For the artifact's early stop: the share of queries that stop after each stage, the
    top-1 agreement with a search of every list, and both searches' recall@1 against exact
    search (when the artifact stores its vectors). ``options``: :func:`search`'s; ``fetch``:
    the candidates it asks for per query (:func:`fetch_count`)."""
    import faiss
    import numpy as np

    from novelentitymatcher_faiss.index.search import (
        best_of,
        exact_knn,
        hits_at_k,
        search,
        search_lists,
    )

    early, queries = index.early_stop, np.vstack(encoded)
    graph = index.stage_quantizer
    _, staged = search(index.index, queries, 1, nprobe=index.nprobe, early=early,
                       stage_quantizer=graph, **options)  # fmt: skip
    _, every = search(index.index, queries, 1, nprobe=index.nprobe, **options)
    stages = early.stages()
    ivf = faiss.extract_index_ivf(index.index)
    coarse, lists = (graph or ivf.quantizer).search(queries, stages[-1][0] + 1)
    going, stopped = np.ones(len(queries), dtype=bool), []
    for stage in stages:
        found = search_lists(ivf, queries, fetch, lists[:, : stage[0]], coarse[:, : stage[0]])
        best, _ = best_of(queries, *found, options["vectors"])
        stop = going & early.stops(best[:, 0], coarse, stage)
        stopped.append(float(stop.mean()))
        going &= ~stop
    out = {
        "stages": [{"nprobe": n, "margin": m} for n, m in stages], "stopped": stopped,
        "same_top1_as_every_list": float(np.mean(staged[:, 0] == every[:, 0])),
    }  # fmt: skip
    if index.vectors is not None:
        truth, _ = exact_knn(queries, index.vectors, 1, progress="exact search")
        for key, found in (("recall_at_1", staged), ("recall_at_1_every_list", every)):
            out[key] = float(np.mean(hits_at_k(queries, found, truth, index.vectors)))
    print(f"  early stop: {out}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1M")
    parser.add_argument("--kind", default="ivf-pq", help="artifact kind (default: ivf-pq)")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hnsw-quantizer", type=int, default=0, metavar="M",
                        help="also try an HNSW coarse quantizer of degree M (IVF kinds)")
    args = parser.parse_args(argv)
    threads = pin_threads(2)

    import faiss
    import make_catalog
    from harness import QUERY_SEED, catalog_rows, existing_artifact, typo_queries

    from novelentitymatcher_faiss import load_index
    from novelentitymatcher_faiss.index.search import fetch_count, search, search_params
    from novelentitymatcher_faiss.text.lexical import featurize
    from novelentitymatcher_faiss.text.normalize import normalize_text

    info = environment(threads)
    size = make_catalog.parse_size(args.size)
    path = existing_artifact(args.size, args.kind)
    if path is None:
        return 2
    texts, _ = typo_queries(catalog_rows(size), args.queries, QUERY_SEED + 1)
    index = load_index(path)
    index.match(texts[:50])  # loads the model; warms the pages the queries touch
    faiss_threads(1)
    info_index = index.manifest.to_dict()["index"]
    nprobe, rerank, spill = index.nprobe, int(info_index.get("rerank") or 0), index.spill
    vectors = index.vectors if rerank > 1 else None
    fetch = fetch_count(index.index.ntotal, 1, rerank, spill)
    params = search_params(index.index, nprobe)

    def features(text: str) -> Any:
        return featurize([normalize_text(text, index.normalizer)], index.encoder, index.lexical,
                         64)  # fmt: skip

    encoded = [features(text) for text in texts]
    steps: dict[str, float] = {"features": p50_ms(features, texts, args.rounds)}
    try:
        quantizer = faiss.extract_index_ivf(index.index).quantizer
    except RuntimeError:
        quantizer = None
    if quantizer is not None:
        steps["quantizer"] = p50_ms(lambda q: quantizer.search(q, nprobe), encoded, args.rounds)
    steps["faiss_search"] = p50_ms(lambda q: index.index.search(q, fetch, params=params),
                                   encoded, args.rounds)  # fmt: skip

    options = {"vectors": vectors, "rerank": rerank, "spill": spill}

    def library_search(q: Any, early: Any = None) -> Any:
        return search(index.index, q, 1, nprobe=nprobe, early=early,
                      stage_quantizer=index.stage_quantizer, **options)  # fmt: skip

    early = index.early_stop
    if early is not None:  # the stages' own search for their lists (graph or flat)
        stage_lists = early.stages()[-1][0] + 1
        steps[f"stage_lists_{stage_lists}"] = p50_ms(
            lambda q: (index.stage_quantizer or quantizer).search(q, stage_lists), encoded,
            args.rounds)  # fmt: skip
    steps["search"] = p50_ms(lambda q: library_search(q, early), encoded, args.rounds)
    steps["match"] = p50_ms(index.match, texts, args.rounds)
    steps["rest"] = steps["match"] - steps["features"] - steps["search"]
    staged = None
    if early is not None:  # the same steps probing every list (early stop off)
        steps["search_every_list"] = p50_ms(library_search, encoded, args.rounds)
        steps["match_every_list"] = p50_ms(lambda t: index.match(t, nprobe=nprobe), texts,
                                           args.rounds)  # fmt: skip
        staged = early_stop_figures(index, encoded, options, fetch)
    # the list scans of a staged search may use both threads (search_lists)
    steps["search_1_thread_paired"], steps["search_2_threads"] = threads_p50_ms(
        lambda q: library_search(q, early), encoded, args.rounds)  # fmt: skip
    steps["match_1_thread_paired"], steps["match_2_threads"] = threads_p50_ms(
        index.match, texts, args.rounds)  # fmt: skip
    batch = batch_qps(index, texts, args.rounds)
    for name, value in steps.items():
        print(f"  {name:<17} {value:7.3f} ms", flush=True)
    print(f"  batch q/s, two threads: {batch}")
    variants = []
    if quantizer is not None and args.hnsw_quantizer:
        variants = quantizer_variants(index.index, quantizer, encoded, library_search, nprobe,
                                      args.hnsw_quantizer, args.rounds, index.vectors)  # fmt: skip

    doc = {
        "benchmark": "query_breakdown", "entities": size, "kind": args.kind,
        "factory": info_index["factory"], "vectors": index.n_vectors, "dim": index.dim,
        "nprobe": nprobe, "rerank": rerank, "spill": spill, "candidates": fetch,
        "queries": len(texts), "rounds": args.rounds, "p50_ms": steps, "early_stop": staged,
        "batch_qps_2_threads": batch,
        "quantizer_variants": variants, "environment": info,
        "started_at": utc_stamp(),
    }  # fmt: skip
    machine = info["machine"]
    command = f"python benchmarks/query_breakdown.py --size {args.size} --kind {args.kind}"
    markdown = "\n".join([
        f"# One query, step by step ({make_catalog.size_label(size)} entities, {args.kind})\n",
        f"`{command}`, {doc['started_at']}. `{info_index['factory']}`, {index.n_vectors:,} "
        f"vectors of {index.dim}-d, nprobe {nprobe}, {fetch} candidates, {len(texts)} "
        f"one-letter-typo queries on one thread; each figure is the median over "
        f"{args.rounds} rounds of a step's p50. Machine: {machine['cpu_model']}, "
        f"{machine['usable_cores']} cores.\n",
        markdown_table(["step", "p50 ms"], [[step, f"{ms:.3f}"] for step, ms in steps.items()]),
    ])  # fmt: skip
    if staged:
        stages = ", ".join(
            f"{stage['nprobe']} lists (margin {stage['margin']:.3f}): {share:.1%} stop"
            for stage, share in zip(staged["stages"], staged["stopped"], strict=True)
        )
        markdown += (
            f"\n\nEarly stop, by stage: {stages}; the rest probe all {nprobe}. Top-1 is the "
            f"same as probing every list for {staged['same_top1_as_every_list']:.1%}"
            + (f"; recall@1 against exact search {staged['recall_at_1']:.3f}, against "
               f"{staged['recall_at_1_every_list']:.3f} probing every list."
               if "recall_at_1" in staged else ".")
            + " `*_every_list` steps: the same search with early stop off."
        )  # fmt: skip
    markdown += (
        "\n\n`*_2_threads` steps: the same with FAISS allowed two OpenMP threads (list scans"
        " of at least `PARALLEL_SCAN_MIN_VECTORS` vectors use both), timed in passes"
        " alternating with the `*_1_thread_paired` ones. The same queries as one batch, two"
        f" threads: {batch['threaded_scans']:,.0f} q/s with the list scans threaded,"
        f" {batch['one_thread_scans']:,.0f} q/s with them on one thread (the previous"
        " behaviour), alternating passes.\n"
    )
    if variants:
        key = "recall_at_1" if "recall_at_1" in variants[0] else "same_top1_as_flat"
        label = "recall@1" if key == "recall_at_1" else "top-1 same as flat quantizer"
        markdown += "\n\n## Coarse quantizer variants (same centroids, in memory)\n\n" + (
            markdown_table(["quantizer", "quantizer p50 ms", "search p50 ms", label],
                           [[v["quantizer"], f"{v['quantizer_ms']:.3f}", f"{v['search_ms']:.3f}",
                             f"{v[key]:.3f}"] for v in variants]))  # fmt: skip
    name = f"breakdown-{make_catalog.size_label(size).lower()}-{args.kind}"
    write_results(name, doc, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
