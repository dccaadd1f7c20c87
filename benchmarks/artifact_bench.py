"""Artifact benchmark: every system side by side on real-name catalogs of 1k, 100k, 1M entities.

Per catalog size (``make_catalog.py``), model potion-8m, all in one process:

* our builds ``flat``, ``ivf``, ``ivf-fp16``, ``ivf-sq8``, ``ivf-pq`` (exact re-rank),
  ``hnsw`` (up to 100k entities) and ``auto``: build
  time, artifact size; open time and RSS growth of ``load_index`` in fresh subprocesses;
* recall@1/@10 of each approximate artifact against exact search, and an IVF nprobe sweep
  (recall, batch q/s, single-query latency: the recall/QPS frontier);
* side by side on the same typo queries (``systems.py``): this library, upstream's
  zero-shot method, vicinity (basic and FAISS backends) and the raw floor (model2vec encode
  + FAISS search): batch q/s, single-query p50/p99 (encode included), typo top-1 accuracy.

Artifacts live under ``benchmarks/data/artifacts/`` and are reused unless ``--rebuild``.
Run through ``benchmarks/run.py`` (``make bench`` / ``make bench-quick``); ``plots.py``
draws the PNGs of ``docs/benchmarks.md`` from the results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import make_catalog  # noqa: E402
import systems  # noqa: E402
from harness import (  # noqa: E402
    MODEL,
    QUERY_SEED,
    artifact_dir,
    catalog_path,
    ensure_artifact,
    library_source_hash,
    read_catalog_rows,
    sha256_file,
    typo_queries,
)

DEFAULT_SIZES = (1_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 20_000)
INDEX_KINDS = ("flat", "ivf", "ivf-fp16", "ivf-sq8", "ivf-pq", "hnsw", "auto")
QUERY_KINDS = ("flat", "ivf", "ivf-fp16", "ivf-sq8", "ivf-pq", "hnsw")
APPROX_KINDS = QUERY_KINDS[1:]
#: Our HNSW artifact is built only up to this many entities (its build grows as n log n:
#: minutes at 100k on two cores); vicinity's HNSW backend has the same cap.
HNSW_MAX_ENTITIES = 100_000
#: Above this many entities upstream runs on a subset of the batch queries (O(N) per query).
UPSTREAM_FULL_MAX_ENTITIES = 100_000
#: vicinity's HNSW backend is built only up to this many entities (its build is slow here).
VICINITY_HNSW_MAX_ENTITIES = 100_000
#: nprobe values of the IVF latency/recall sweep (those below nlist, plus the stored one).
SWEEP_NPROBES = (1, 4, 16, 64, 256, 1024)
TARGETS = {
    "open_s": 0.2,
    "open_rss_pct": 10.0,
    "single_p50_ms": 1.0,
    "upstream_ratio": 10.0,
    "vicinity_ratio": 2.0,
    "floor_ratio": 1.5,
}


@dataclass
class Config:
    """What to run; the defaults are the full benchmark."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    mode: str = "full"
    rebuild: bool = False
    reuse_builds: bool = False
    threads: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    repeats: int = 3
    open_runs: int = 5
    single_queries: int = 1000
    single_warmup: int = 200
    single_round_budget_s: float = 20.0
    batch_queries: int = 10_000
    batch_budget_s: float = 30.0
    recall_queries: int = 1000
    sweep_queries: int = 500
    upstream_subset: int = 500
    auto_build_max_entities: int = 1_000
    seed: int = make_catalog.DEFAULT_SEED


# ------------------------------------------------------------------------------ build


def derived_auto(builds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Figures for ``index_type="auto"`` without building it again.

    Uses the library's own rule (flat below ``AUTO_FLAT_MAX_VECTORS`` vectors, else
    ``AUTO_IVF_KIND`` with the same defaults), so the artifact would be that one, byte for
    byte but for the manifest. Used on the largest catalogs, where a build takes many minutes.
    """
    from novelentitymatcher_faiss.index.indexing import AUTO_FLAT_MAX_VECTORS, AUTO_IVF_KIND

    vectors = builds["flat"]["vectors"]
    same = "flat" if vectors < AUTO_FLAT_MAX_VECTORS else AUTO_IVF_KIND
    return {**builds[same], "requested": "auto", "derived": True, "reused": False}


# ------------------------------------------------------------------------------ open


def probe_open(path: Path, threads: int) -> dict[str, Any]:
    """In this (fresh) process: time ``load_index`` and its RSS growth, then one query."""
    started = time.perf_counter()
    import faiss  # noqa: F401 - imported before measuring, as any user would have
    import numpy  # noqa: F401

    from novelentitymatcher_faiss.query.match_index import load_index

    common.faiss_threads(threads)
    import_s = time.perf_counter() - started
    before = common.rss_bytes()
    open_s, index = common.timed(lambda: load_index(path))
    after = common.rss_bytes()
    first_s, _ = common.timed(lambda: index.match("probe query text"))
    after_query = common.rss_bytes()
    return {
        "import_s": import_s,
        "open_s": open_s,
        "rss_growth": {k: after[k] - before[k] for k in before},
        "first_query_s": first_s,
        "rss_growth_after_first_query": {k: after_query[k] - before[k] for k in before},
    }


def measure_open(path: Path, runs: int, threads: int, index_bytes: int) -> dict[str, Any]:
    """Median over ``runs`` fresh subprocesses of :func:`probe_open`."""
    results = []
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, __file__, "--probe-open", str(path), "--threads", str(threads)],
            capture_output=True, text=True, check=False, env=os.environ.copy(),
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"open probe failed for {path.name}:\n{proc.stderr[-2000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    def med(key: str, sub: str | None = None) -> float:
        return statistics.median(r[key][sub] if sub else r[key] for r in results)

    rss = med("rss_growth", "VmRSS")
    return {
        "runs": runs,
        "open_s": med("open_s"),
        "open_s_runs": [round(r["open_s"], 5) for r in results],
        "import_s": med("import_s"),
        "rss_growth_bytes": rss,
        "rss_growth_anon_bytes": med("rss_growth", "RssAnon"),
        "rss_growth_file_bytes": med("rss_growth", "RssFile"),
        "rss_growth_pct_of_index": 100.0 * rss / index_bytes,
        "first_query_s": med("first_query_s"),
        "rss_growth_after_first_query_bytes": med("rss_growth_after_first_query", "VmRSS"),
    }


# ------------------------------------------------------------------------------ queries


def affordable(call: Callable[[str], Any], texts: list[str], wanted: int, budget_s: float) -> int:
    """How many single queries fit in ``budget_s`` (at least 100), judged on a warm-up."""
    warm = texts[:50]
    per_query = sum(common.latencies_ms(call, warm)) / 1000 / len(warm)
    return int(min(wanted, max(100, budget_s / per_query)))


def measure_single(call: Callable[[str], Any], queries: list[str], cfg: Config) -> dict[str, Any]:
    """p50/p99 latency of ``call(text)``: medians over ``cfg.repeats`` rounds.

    A round has ``cfg.single_queries`` queries, fewer when the warm-up shows a round would
    exceed ``cfg.single_round_budget_s`` (exact search on large catalogs).
    """
    common.latencies_ms(call, queries[: cfg.single_warmup])
    count = affordable(call, queries, cfg.single_queries, cfg.single_round_budget_s)
    rounds = []
    for r in range(cfg.repeats):
        chunk = [queries[(r * count + i) % len(queries)] for i in range(count)]
        times = common.latencies_ms(call, chunk)
        rounds.append((common.percentile(times, 50), common.percentile(times, 99)))
    return {
        "queries_per_round": count,
        "rounds": len(rounds),
        "p50_ms": statistics.median(p50 for p50, _ in rounds),
        "p99_ms": statistics.median(p99 for _, p99 in rounds),
        "p50_ms_rounds": [round(p50, 4) for p50, _ in rounds],
    }


def recall_figures(exact: list[list[dict]], approx: list[list[dict]]) -> dict[str, float]:
    """Recall of ``approx`` hits against ``exact`` hits (top_k=10 lists), tie-aware by id.

    An approximate hit counts when its entity is one whose exact score reaches the exact
    first (for @1) or k-th (for @10) score, 1e-5 slack: entities sharing an alias cannot
    lower the recall, and approximate scores (SQ8, PQ codes) are never compared.
    ``recall_at_10`` is the share of the exact top 10 returned (10-recall@10);
    ``r_at_10`` FAISS's R@10 (an exact top-1 entity is among the 10 returned), the measure
    the build tunes nprobe on.
    """
    at1, at10, r10 = [], [], []
    for want, got in zip(exact, approx, strict=True):
        if not want:
            continue
        kth, first = want[-1]["score"], want[0]["score"]
        top = {h["id"] for h in want if h["score"] >= first - 1e-5}
        tenth = {h["id"] for h in want if h["score"] >= kth - 1e-5}
        ids = [h["id"] for h in got]
        at10.append(min(len(want), sum(i in tenth for i in ids)) / len(want))
        at1.append(float(bool(ids) and ids[0] in top))
        r10.append(float(any(i in top for i in ids)))
    return {
        "queries": len(at1),
        "recall_at_1": statistics.fmean(at1),
        "recall_at_10": statistics.fmean(at10),
        "r_at_10": statistics.fmean(r10),
    }


def top1_accuracy(hits: list[list[dict]], truth_ids: list[str]) -> float:
    """Share of queries whose first hit is the entity the typo was made from."""
    pairs = zip(hits, truth_ids, strict=True)
    return statistics.fmean(float(bool(h) and h[0]["id"] == t) for h, t in pairs)


def recall_and_sweep(
    indexes: dict[str, Any], texts: list[str], truth_ids: list[str], singles: list[str],
    cfg: Config,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Recall of every approximate artifact at its stored nprobe, and an IVF nprobe sweep.

    recall@1 and typo top-1 come from top-1 searches (where IVF early stop applies),
    recall@10 and R@10 from top-10 searches, which probe every list.

    The sweep gives recall, batch queries per second (``texts``, one run) and single-query
    p50/p99 (one round, at most ``cfg.sweep_queries`` queries or a time budget) per nprobe:
    the recall/QPS frontier.
    """
    exact = indexes["flat"].match(texts, top_k=10)
    recall = {"typo_top1_accuracy_exact": top1_accuracy(exact, truth_ids)}
    for kind in (k for k in APPROX_KINDS if k in indexes):
        top10 = recall_figures(exact, indexes[kind].match(texts, top_k=10))
        # top-1 figures from top-1 searches: the path IVF early stop applies to
        first = [[hit] if hit else [] for hit in indexes[kind].match(texts)]
        recall[kind] = {
            **top10,
            "recall_at_1": recall_figures(exact, first)["recall_at_1"],
            "recall_at_1_top10_search": top10["recall_at_1"],
            "nprobe": indexes[kind].breadth,  # IVF nprobe or HNSW efSearch
            "early_stop": indexes[kind].manifest.to_dict()["index"].get("early_stop"),
            "typo_top1_accuracy": top1_accuracy(first, truth_ids),
        }
    ivf = indexes["ivf"]
    nlist = int(ivf.manifest.index.nlist)
    sweep = []
    for nprobe in sorted({p for p in SWEEP_NPROBES if p < nlist} | {ivf.nprobe}):
        batch_s, found = common.timed(lambda nprobe=nprobe: ivf.match(texts, top_k=10,
                                                                       nprobe=nprobe))  # fmt: skip
        figures = recall_figures(exact, found)

        def call(text: str, nprobe: int = nprobe) -> Any:
            return ivf.match(text, nprobe=nprobe)

        count = affordable(call, singles, cfg.sweep_queries, cfg.single_round_budget_s / 2)
        times = common.latencies_ms(call, singles[:count])
        sweep.append({
            "nprobe": nprobe,
            "stored": nprobe == ivf.nprobe,
            "recall_at_1": figures["recall_at_1"],
            "recall_at_10": figures["recall_at_10"],
            "r_at_10": figures["r_at_10"],
            "batch_qps_top10": len(texts) / batch_s,
            "single_queries": count,
            "p50_ms": common.percentile(times, 50),
            "p99_ms": common.percentile(times, 99),
        })  # fmt: skip
    return recall, sweep


def budgeted_median(func: Callable[[], Any], cfg: Config, runs: list[float] | None = None) -> float:
    """Median time of up to ``cfg.repeats`` calls of ``func``.

    Stops after one call if that call alone took over ``2 * cfg.batch_budget_s``; every
    run's time is appended to ``runs`` when given.
    """
    runs = [] if runs is None else runs
    for _ in range(cfg.repeats):
        runs.append(common.timed(func)[0])
        if runs[0] > 2 * cfg.batch_budget_s:
            break
    return statistics.median(runs)


def score_recall(exact: Any, approx: Any) -> dict[str, float]:
    """Tie-aware recall@1 and @k from score arrays (nq, k), as :func:`recall_figures`."""
    import numpy as np

    kth, first = exact[:, -1:], exact[:, 0]
    valid = np.isfinite(first)
    at_k = np.minimum(exact.shape[1], (approx >= kth - 1e-5).sum(axis=1)) / exact.shape[1]
    at_1 = approx[:, 0] >= first - 1e-5
    r_at_k = (approx >= first[:, None] - 1e-5).any(axis=1)
    return {"recall_at_1": float(at_1[valid].mean()), "recall_at_10": float(at_k[valid].mean()),
            "r_at_10": float(r_at_k[valid].mean())}  # fmt: skip


def system_figures(
    system: systems.System, queries: list[str], texts: list[str], truth: list[str],
    singles: list[str], cfg: Config,
) -> tuple[dict[str, Any], Any]:
    """Batch q/s on ``queries``, single p50/p99, typo top-1 on ``texts``; and top-10 scores."""
    system.batch(queries[:50])  # warm-up
    runs: list[float] = []
    seconds = budgeted_median(lambda: system.batch(queries), cfg, runs)
    single = measure_single(system.single, singles, cfg)
    ids, scores = system.top(texts, 10)
    accuracy = statistics.fmean(float(i == t) for i, t in zip(ids[:, 0], truth, strict=True))
    return {
        "name": system.name,
        "family": system.family,
        "exact": system.exact,
        "setup_s": system.setup_s,
        "batch_queries": len(queries),
        "batch_runs": len(runs),
        "batch_qps": len(queries) / seconds,
        "single": single,
        "typo_top1_accuracy": accuracy,
        "accuracy_queries": len(texts),
    }, scores


def system_factories(
    catalog: systems.Catalog, entities: int, ivf_nlist: int, ivf_nprobe: int
) -> list[Callable[[], systems.System]]:
    """The compared systems of one catalog size, built one at a time."""
    made = [
        lambda: systems.upstream(catalog),
        lambda: systems.vicinity(catalog, "basic"),
        lambda: systems.vicinity(catalog, "faiss", index_type="flat"),
    ]
    if entities <= VICINITY_HNSW_MAX_ENTITIES:
        made.append(lambda: systems.vicinity(catalog, "faiss", index_type="hnsw", m=16))
    made += [
        lambda: systems.floor(catalog),
        lambda: systems.floor(catalog, nlist=ivf_nlist, nprobe=ivf_nprobe),
    ]
    return made


def compare_systems(
    rows: list[tuple[str, str, list[str]]],
    model_path: Path,
    indexes: dict[str, Any],
    queries: list[str],
    texts: list[str],
    truth: list[str],
    singles: list[str],
    cfg: Config,
    recall: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every system (ours, upstream, vicinity, the floor) on the same queries, one process;
    and our flat and IVF single-query latency paired with the floor's (:func:`paired_single`).

    Each system's recall@1/@10 is against the exact system of its own family (our flat
    artifact, vicinity basic, the flat floor); ours are the entity-level figures of
    ``recall`` (:func:`recall_and_sweep`). Upstream's accuracy uses a subset of ``texts`` on
    the largest catalogs (its per-query argsort is O(N)). vicinity's HNSW backend is also
    measured with its efSearch raised until its recall@1 reaches that of our fastest kind.
    """
    ivf = indexes["ivf"]
    catalog = systems.encode_catalog(rows, model_path)
    print(f"  systems: catalog encoded by the raw model in {catalog.encode_s:.1f} s", flush=True)
    made = [lambda kind=kind: systems.library(f"this library {kind}", indexes[kind],
                                              exact=kind == "flat")
             for kind in QUERY_KINDS if kind in indexes]  # fmt: skip
    made += system_factories(catalog, len(rows), int(ivf.manifest.index.nlist), ivf.nprobe)
    out, exact_scores, kept = [], {}, {}

    def measure(system: systems.System) -> None:
        sub = system.family == "upstream" and len(rows) > UPSTREAM_FULL_MAX_ENTITIES
        used = texts[: cfg.upstream_subset] if sub else texts
        figures, scores = system_figures(system, queries, used, truth[: len(used)], singles,
                                         cfg)  # fmt: skip
        kind = system.name.removeprefix("this library ")
        if system.exact:
            exact_scores.setdefault(system.family, scores)
        elif system.family == "ours" and kind in recall:  # entity-level: SQ/PQ scores differ
            figures.update({key: recall[kind][key] for key in RECALL_KEYS})
            figures["typo_top1_accuracy"] = recall[kind]["typo_top1_accuracy"]  # top-1 path
        elif system.family in exact_scores:
            figures.update(score_recall(exact_scores[system.family], scores))
        out.append(figures)
        print(
            f"  {figures['name']:<34} batch {figures['batch_qps']:>10,.1f} q/s, single p50 "
            f"{figures['single']['p50_ms']:8.3f} ms p99 {figures['single']['p99_ms']:8.3f} ms, "
            f"typo top-1 {figures['typo_top1_accuracy']:.3f}"
            + (f", recall@1 {figures['recall_at_1']:.3f}" if "recall_at_1" in figures else ""),
            flush=True,
        )

    for make in made:
        system = make()
        if system.family == "floor" or system.name in {f"this library {k}" for k in PAIRED_KINDS}:
            kept[system.name] = system  # for the paired timing below
        measure(system)
        if system.set_breadth is not None and system.family in exact_scores:
            target = recall_at_1(fastest(out, "ours"))
            breadth, reached = matched_breadth(system, exact_scores[system.family], texts, target)
            system.name += f" efSearch {breadth} (recall-matched)"
            measure(system)
            out[-1].update(ef_search=breadth, matched_recall_at_1=target, match_reached=reached)
        del system
    paired = []
    for kind, floor_name in floor_pairs(kept):
        figures = paired_single(kept[f"this library {kind}"], kept[floor_name], singles, cfg)
        paired.append({"kind": kind, "floor": floor_name, **figures})
        print(f"  paired single p50, {kind}: ours {figures['ours_p50_ms']:.3f} ms, floor "
              f"{figures['floor_p50_ms']:.3f} ms -> {figures['ratio']:.2f}x",
              flush=True)  # fmt: skip
    return out, paired


#: Recall figures of a compared system (:func:`score_recall`, :func:`recall_figures`).
RECALL_KEYS = ("recall_at_1", "recall_at_10", "r_at_10")
#: efSearch values tried, smallest first, to bring vicinity's HNSW up to our recall.
MATCH_BREADTHS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def recall_at_1(figures: dict[str, Any]) -> float:
    """A compared system's recall@1 against the exact system of its family (1.0 if exact)."""
    return 1.0 if figures["exact"] else float(figures.get("recall_at_1", 0.0))


def fastest(figures: list[dict[str, Any]], family: str, min_recall: float = 0.0) -> dict[str, Any]:
    """The figures of ``family``'s system with the highest batch q/s among those with
    :func:`recall_at_1` at least ``min_recall``."""
    return max((x for x in figures if x["family"] == family and recall_at_1(x) >= min_recall),
               key=lambda x: x["batch_qps"])  # fmt: skip


def matched_breadth(
    system: systems.System, exact: Any, texts: list[str], target: float
) -> tuple[int, bool]:
    """The smallest breadth of :data:`MATCH_BREADTHS` at which ``system`` reaches recall@1
    ``target`` on ``texts`` against ``exact`` (its family's exact top-10 scores, (nq, 10));
    returns (breadth, reached), the largest breadth when none reaches it. Leaves the
    system set to that breadth."""
    for breadth in MATCH_BREADTHS:
        system.set_breadth(breadth)
        _, scores = system.top(texts, 10)
        recall = score_recall(exact, scores)["recall_at_1"]
        print(f"  {system.name} efSearch {breadth}: recall@1 {recall:.3f} (target {target:.3f})",
              flush=True)  # fmt: skip
        if recall >= target:
            return breadth, True
    return breadth, False


#: Our kinds timed back to back with a floor (:func:`floor_pairs`).
PAIRED_KINDS = ("flat", "ivf", "ivf-fp16")


def floor_pairs(names: Iterable[str]) -> list[tuple[str, str]]:
    """(our kind, its floor's system name) pairs: flat with the flat floor, the IVF kinds
    with the IVF floor of the same nlist and nprobe."""
    floor_ivf = next(name for name in names if name.startswith("floor IVF"))
    return [(kind, "floor flat" if kind == "flat" else floor_ivf) for kind in PAIRED_KINDS]


def paired_single(
    mine: systems.System, floor: systems.System, texts: list[str], cfg: Config
) -> dict[str, Any]:
    """Single-query p50 of ours and the floor timed back to back on each query (order
    alternating), so machine noise hits both alike; medians over ``cfg.repeats`` rounds."""
    common.latencies_ms(mine.single, texts[: cfg.single_warmup])
    common.latencies_ms(floor.single, texts[: cfg.single_warmup])
    count = min(affordable(mine.single, texts, cfg.single_queries, cfg.single_round_budget_s),
                affordable(floor.single, texts, cfg.single_queries,
                           cfg.single_round_budget_s))  # fmt: skip
    rounds = []
    for r in range(cfg.repeats):
        ours_ms, floor_ms = [], []
        for i in range(count):
            text = texts[(r * count + i) % len(texts)]
            if i % 2:
                ours_ms += common.latencies_ms(mine.single, [text])
                floor_ms += common.latencies_ms(floor.single, [text])
            else:
                floor_ms += common.latencies_ms(floor.single, [text])
                ours_ms += common.latencies_ms(mine.single, [text])
        rounds.append((common.percentile(ours_ms, 50), common.percentile(floor_ms, 50)))
    ours_p50 = statistics.median(a for a, _ in rounds)
    floor_p50 = statistics.median(b for _, b in rounds)
    return {"queries_per_round": count, "rounds": len(rounds), "ours_p50_ms": ours_p50,
            "floor_p50_ms": floor_p50, "ratio": statistics.median(a / b for a, b in rounds)}

# ------------------------------------------------------------------------------ driver


def bench_size(size: int, encoder: Any, library_sha: str, cfg: Config) -> dict[str, Any]:
    """Every measurement for one catalog size."""
    from novelentitymatcher_faiss.query.match_index import load_index

    print(f"\n== {size} entities", flush=True)
    phase = time.perf_counter()
    catalog = catalog_path(size, cfg.seed)
    stamp = {"catalog_sha256": sha256_file(catalog), "library_sha256": library_sha}
    rows = read_catalog_rows(catalog)
    result: dict[str, Any] = {"entities": len(rows), "catalog": catalog.name, "builds": {}}
    phases: dict[str, float] = {}
    result["phase_seconds"] = phases

    def lap(name: str) -> None:
        nonlocal phase
        now = time.perf_counter()
        phases[name] = round(now - phase, 1)
        phase = now

    kinds = [k for k in INDEX_KINDS if k != "hnsw" or len(rows) <= HNSW_MAX_ENTITIES]
    query_kinds = [k for k in QUERY_KINDS if k in kinds]
    for kind in kinds:
        path = artifact_dir(size, kind, cfg.seed)
        if kind == "auto" and len(rows) > cfg.auto_build_max_entities:
            build = derived_auto(result["builds"])
        else:
            build = ensure_artifact(catalog, stamp, path, kind, encoder, cfg.rebuild,
                                    cfg.reuse_builds)  # fmt: skip
        result["builds"][kind] = build
        print(
            f"  build {kind:<4} -> {build['type']:<4} {build['build_s']:8.2f} s "
            f"{common.human_bytes(build['artifact_bytes']):>10}"
            + (" (reused)" if build["reused"] else "")
            + (f" (not built: same settings as {build['type']})" if build.get("derived") else ""),
            flush=True,
        )
    lap("build")
    result["vectors"] = result["builds"]["flat"]["vectors"]
    result["auto_resolves_to"] = result["builds"]["auto"]["type"]

    result["open"] = {}
    for kind in query_kinds:
        path = artifact_dir(size, kind, cfg.seed)
        index_bytes = result["builds"][kind]["index_bytes"]
        result["open"][kind] = opened = measure_open(path, cfg.open_runs, cfg.threads, index_bytes)
        print(
            f"  open  {kind:<4} {opened['open_s'] * 1000:8.2f} ms, RSS "
            f"+{common.human_bytes(opened['rss_growth_bytes'])} "
            f"({opened['rss_growth_pct_of_index']:.2f}% of index.faiss)",
            flush=True,
        )

    lap("open")
    indexes = {kind: load_index(artifact_dir(size, kind, cfg.seed)) for kind in query_kinds}
    recall_texts, recall_ids = typo_queries(rows, cfg.recall_queries, QUERY_SEED + 2)
    single_queries, _ = typo_queries(rows, cfg.single_queries * cfg.repeats, QUERY_SEED + 1)
    result["recall"], result["nprobe_sweep"] = recall_and_sweep(
        indexes, recall_texts, recall_ids, single_queries, cfg
    )
    print(
        "  recall vs exact: " + ", ".join(
            f"{k} nprobe {r['nprobe']} @1 {r['recall_at_1']:.3f} R@10 {r['r_at_10']:.3f}"
            for k in APPROX_KINDS if k in indexes for r in [result["recall"][k]])
        + "\n  ivf sweep: " + ", ".join(
            f"nprobe {p['nprobe']} @10 {p['recall_at_10']:.3f} {p['batch_qps_top10']:,.0f} q/s"
            for p in result["nprobe_sweep"]),
        flush=True,
    )  # fmt: skip
    lap("recall_and_sweep")
    count = batch_count(len(rows), cfg)
    batch_queries, _ = typo_queries(rows, count, QUERY_SEED)
    result["systems"], result["paired_floor"] = compare_systems(
        rows, encoder.path, indexes, batch_queries, recall_texts, recall_ids, single_queries, cfg,
        result["recall"],
    )
    lap("systems")
    return result


def batch_count(entities: int, cfg: Config) -> int:
    """Batch queries per system: what upstream's O(N)-per-query method answers in the budget.

    Judged as ``cfg.batch_budget_s`` at about 1.1e7 entity-queries per second (its measured
    speed here), between 1000 (``cfg.upstream_subset`` above 100k entities) and
    ``cfg.batch_queries``.
    """
    least = 1000 if entities <= UPSTREAM_FULL_MAX_ENTITIES else cfg.upstream_subset
    return int(min(cfg.batch_queries, max(least, cfg.batch_budget_s * 1.1e7 / entities)))


def by_name(size: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The systems of one size's results, by name."""
    return {system["name"]: system for system in size.get("systems", [])}


def check_targets(sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The artifact and comparison targets, judged where the measured size matches."""
    checks = []
    big = [s for s in sizes if s["builds"]["ivf"]["vectors"] >= 1_000_000]
    for s in big[-1:] or sizes[-1:]:
        opened = s["open"]["ivf"]
        single = by_name(s)["this library ivf"]["single"]
        where = f"IVF, {s['entities']:,} entities / {s['vectors']:,} vectors"
        at_size = bool(big)
        checks += [
            _check("open < 0.2 s (1M-vector artifact)", where, opened["open_s"],
                   opened["open_s"] < TARGETS["open_s"], at_size, "{:.4f} s"),
            _check("RSS growth < 10% of index.faiss", where, opened["rss_growth_pct_of_index"],
                   opened["rss_growth_pct_of_index"] < TARGETS["open_rss_pct"], at_size,
                   "{:.2f}%"),
            _check("single-query p50 < 1 ms (1M-vector IVF)", where, single["p50_ms"],
                   single["p50_ms"] < TARGETS["single_p50_ms"], at_size, "{:.3f} ms"),
        ]  # fmt: skip
    mid = [s for s in sizes if s["entities"] == 100_000]
    for s in mid or sizes[-1:]:
        named = by_name(s)
        best = fastest(s["systems"], "ours")
        ours_recall = recall_at_1(best)
        where = f"{best['name']} (recall@1 {ours_recall:.3f}), {s['entities']:,} entities"
        up = named["upstream (zero-shot)"]["batch_qps"]
        vic_any = fastest(s["systems"], "vicinity")
        vic = fastest(s["systems"], "vicinity", ours_recall)
        vic_exact = max((x for x in named.values() if x["family"] == "vicinity" and x["exact"]),
                        key=lambda x: x["batch_qps"])  # fmt: skip
        any_recall = _check(
            "batch q/s >= 2x vicinity's fastest setting at 100k, at any recall",
            f"{where}; {vic_any['name']} (recall@1 {recall_at_1(vic_any):.3f})",
            best["batch_qps"] / vic_any["batch_qps"],
            best["batch_qps"] / vic_any["batch_qps"] >= TARGETS["vicinity_ratio"], bool(mid),
            "{:.2f}x")  # fmt: skip
        if vic_any is not vic:
            any_recall["note"] = "for information: not at the same recall"
        checks += [
            _check("batch q/s >= 10x upstream at 100k", where, best["batch_qps"] / up,
                   best["batch_qps"] / up >= TARGETS["upstream_ratio"], bool(mid), "{:.1f}x"),
            _check("batch q/s >= 2x vicinity's best at 100k, at our recall@1 or better",
                   f"{where}; {vic['name']} (recall@1 {recall_at_1(vic):.3f})",
                   best["batch_qps"] / vic["batch_qps"],
                   best["batch_qps"] / vic["batch_qps"] >= TARGETS["vicinity_ratio"], bool(mid),
                   "{:.2f}x"),
            any_recall,
            _check("batch q/s >= 2x vicinity's best exact backend at 100k",
                   f"{where}; {vic_exact['name']}", best["batch_qps"] / vic_exact["batch_qps"],
                   best["batch_qps"] / vic_exact["batch_qps"] >= TARGETS["vicinity_ratio"],
                   bool(mid), "{:.2f}x"),
        ]  # fmt: skip
    for s in sizes:
        if "paired_floor" not in s and "systems" in s:  # results from before pairing
            named = by_name(s)
            for kind, floor_name in floor_pairs(named):
                if f"this library {kind}" not in named:  # a kind added after that run
                    continue
                ratio = (named[f"this library {kind}"]["single"]["p50_ms"]
                         / named[floor_name]["single"]["p50_ms"])  # fmt: skip
                checks.append(_check(
                    "single-query p50 <= 1.5x the raw floor (unpaired)", f"{kind} vs "
                    f"{floor_name}, {s['entities']:,} entities", ratio,
                    ratio <= TARGETS["floor_ratio"], True, "{:.2f}x"))  # fmt: skip
        for pair in s.get("paired_floor", []):
            default = pair["kind"] == s.get("auto_resolves_to", pair["kind"])
            check = _check(
                "single-query p50 <= 1.5x the raw floor (paired)", f"{pair['kind']} vs "
                f"{pair['floor']}, {s['entities']:,} entities", pair["ratio"],
                pair["ratio"] <= TARGETS["floor_ratio"], default, "{:.2f}x")  # fmt: skip
            if not default:
                check["note"] = "not the kind index_type='auto' builds at this size"
            checks.append(check)
    return checks


def _check(
    target: str, where: str, value: float, met: bool, at_size: bool, fmt: str
) -> dict[str, Any]:
    return {
        "target": target,
        "measured_on": where,
        "value": value,
        "shown": fmt.format(value),
        "met": met if at_size else None,
        "note": "" if at_size else "not at the target size (indicative only)",
    }


def run(cfg: Config, on_size: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the benchmark for ``cfg``; returns the results document.

    ``on_size`` gets the document so far after each catalog size (for partial results).
    """
    started = time.perf_counter()
    threads = common.pin_threads(cfg.threads)
    machine = {**common.machine_info(), "parallel_speedup": common.parallel_speedup(cfg.threads)}
    from novelentitymatcher_faiss import load_encoder

    faiss_threads = common.faiss_threads(cfg.threads)
    library_sha = library_source_hash()
    info = common.environment(
        {**threads, "faiss_omp": str(faiss_threads)}, machine,
        {**common.library_versions(), "library_sources_sha256": library_sha[:16]})
    encoder = load_encoder(MODEL, show_progress=False)
    doc: dict[str, Any] = {
        "benchmark": "artifact",
        "mode": cfg.mode,
        "model": MODEL,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": 0.0,
        "complete": False,
        "environment": info,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "targets": TARGETS,
        "sizes": [],
        "checks": [],
    }
    for size in cfg.sizes:
        doc["sizes"].append(bench_size(size, encoder, library_sha, cfg))
        doc["checks"] = check_targets(doc["sizes"])
        doc["duration_s"] = round(time.perf_counter() - started, 1)
        doc["complete"] = len(doc["sizes"]) == len(cfg.sizes)
        if on_size is not None:
            on_size(doc)
    return doc


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def to_markdown(doc: dict[str, Any]) -> str:
    """The results as Markdown: environment, figures table, recall table, targets."""
    env = doc["environment"]
    machine, versions = env["machine"], env["versions"]
    lines = [
        f"# Artifact benchmark ({doc['mode']})\n",
        f"Model {doc['model']}; {doc['started_at']}; took {doc['duration_s']:.0f} s"
        + ("" if doc.get("complete", True) else " so far (PARTIAL: not every size has run)")
        + ".\n",
        "".join(f"Sizes {', '.join(f'{n:,}' for n in r['entities'])} rerun at "
                f"{r['started_at']} (commit {r['git_commit']}).\n" for r in doc.get("reruns", [])),
        f"Machine: {machine['cpu_model']}, {machine['usable_cores']} cores, "
        f"{machine['ram_gib']} GiB RAM, {machine['os']}, Python {machine['python']}.  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".  ",
        f"Threads: {env['threads']['OMP_NUM_THREADS']} (OMP/BLAS/tokenizers, FAISS batch); "
        "the library runs single queries on 1 FAISS thread.\n",
        f"Parallel speedup of {machine['usable_cores']} busy processes: "
        f"{machine.get('parallel_speedup', '?')}x (about 1 means the cores are shared: threads "
        "barely help batch figures).\n",
        "How measured: build once (the library's `build_seconds`, model already loaded); open "
        "= `load_index` in 5 fresh subprocesses (2 in quick mode), median (page cache warm); "
        "1st query = the "
        "first `match` after opening (loads and fingerprints the model); p50/p99 = "
        "`index.match(text)` one-letter-typo queries, medians over 3 rounds (round size in "
        "the JSON; fewer than 1000 where exact search is slow); batch = "
        "`index.match(list)`, median of 3 runs (query count in brackets). Upstream = its "
        "zero-shot method reproduced in this process on the same queries.\n",
    ]
    headers = ["entities", "vectors", "index", "build s", "artifact", "index.faiss", "open ms",
               "RSS growth (% index)", "1st query s"]  # fmt: skip
    rows = []
    for s in doc["sizes"]:
        for kind in (k for k in INDEX_KINDS if k in s["builds"]):
            build = s["builds"][kind]
            shown = kind if kind != "auto" else f"auto ({build['type']})"
            if build.get("derived"):
                shown += ", not rebuilt: same build as " + build["type"]
            if build["nprobe"]:
                shown += f" nlist {build['nlist']} nprobe {build['nprobe']}"
            if build.get("ef_search"):
                shown += f" efSearch {build['ef_search']}"
            row = [f"{s['entities']:,}", f"{build['vectors']:,}", shown, f"{build['build_s']:.1f}",
                   common.human_bytes(build["artifact_bytes"]),
                   common.human_bytes(build["index_bytes"])]  # fmt: skip
            if kind in QUERY_KINDS:
                opened = s["open"][kind]
                row += [
                    _ms(opened["open_s"]),
                    f"{common.human_bytes(opened['rss_growth_bytes'])} "
                    f"({opened['rss_growth_pct_of_index']:.2f}%)",
                    f"{opened['first_query_s']:.2f}",
                ]
            else:
                row += ["same as " + build["type"], "-", "-"]
            rows.append(row)
    lines += ["## Build and open\n", common.markdown_table(headers, rows)]
    lines += ["## Side by side: every system on the same catalog and queries\n",
              "Batch = the system's bulk call on the same typo queries (count in brackets), "
              "median of runs; single = one query per call, encode included; typo top-1 = the "
              "first hit is the entity the typo was made from; recall against the exact system "
              "of the same family (our flat artifact, vicinity basic, the flat floor). "
              "x upstream = batch q/s over upstream's.\n"]  # fmt: skip
    headers = ["entities", "system", "setup s", "batch q/s (queries)", "x upstream",
               "single p50 ms", "single p99 ms", "typo top-1", "recall@1", "10-recall@10"]
    rows = []
    for s in doc["sizes"]:
        named = by_name(s)
        up = named.get("upstream (zero-shot)", {}).get("batch_qps")
        for x in s.get("systems", []):
            kind = x["name"].removeprefix("this library ")
            # ours: the entity-level recall (approximate SQ8/PQ scores are never compared)
            r = s["recall"][kind] if x["family"] == "ours" and kind in APPROX_KINDS else x
            rows.append([
                f"{s['entities']:,}", x["name"], f"{x['setup_s']:.1f}",
                f"{x['batch_qps']:,.1f} ({x['batch_queries']:,})",
                f"{x['batch_qps'] / up:.1f}x" if up else "-",
                f"{x['single']['p50_ms']:.3f}", f"{x['single']['p99_ms']:.3f}",
                f"{x['typo_top1_accuracy']:.3f}",
                "exact" if x["exact"] else f"{r.get('recall_at_1', float('nan')):.3f}",
                "exact" if x["exact"] else f"{r.get('recall_at_10', float('nan')):.3f}",
            ])  # fmt: skip
    lines.append(common.markdown_table(headers, rows))
    paired_rows = [[f"{s['entities']:,}", p["kind"], p["floor"], f"{p['ours_p50_ms']:.3f}",
                    f"{p['floor_p50_ms']:.3f}", f"{p['ratio']:.2f}x",
                    f"{p['queries_per_round']} x {p['rounds']}"]
                   for s in doc["sizes"] for p in s.get("paired_floor", [])]  # fmt: skip
    if paired_rows:
        lines += [
            "## Single query against the raw floor, paired\n",
            "Each query is timed on ours and on the floor back to back (order alternating), "
            "so machine noise hits both alike; ratio = median over rounds of p50 ours / p50 "
            "floor.\n",
            common.markdown_table(["entities", "ours", "floor", "ours p50 ms", "floor p50 ms",
                                   "ratio", "queries"], paired_rows),
        ]  # fmt: skip
    recall_rows = [
        [f"{s['entities']:,}", kind, r["nprobe"], f"{r['recall_at_1']:.4f}",
         f"{r['r_at_10']:.4f}", f"{r['recall_at_10']:.4f}",
         f"{s['recall']['typo_top1_accuracy_exact']:.4f}",
         f"{r['typo_top1_accuracy']:.4f}", r["queries"]]
        for s in doc["sizes"] for kind in APPROX_KINDS if kind in s["recall"]
        for r in [s["recall"][kind]]
    ]  # fmt: skip
    lines += [
        "## Our approximate artifacts against exact search (one-letter-typo queries, top 10)\n",
        common.markdown_table(
            ["entities", "index", "nprobe (hnsw: efSearch)", "recall@1", "R@10", "10-recall@10",
             "typo top-1 exact",
             "typo top-1", "queries"], recall_rows),
    ]  # fmt: skip
    sweep_rows = [
        [f"{s['entities']:,}", s["builds"]["ivf"]["nlist"],
         f"{p['nprobe']}" + (" (stored)" if p["stored"] else ""), f"{p['recall_at_1']:.4f}",
         f"{p['r_at_10']:.4f}", f"{p['recall_at_10']:.4f}", f"{p['batch_qps_top10']:,.0f}",
         f"{p['p50_ms']:.3f}",
         f"{p['p99_ms']:.3f}", p["single_queries"]]
        for s in doc["sizes"] for p in s["nprobe_sweep"]
    ]  # fmt: skip
    lines += [
        "## IVF nprobe sweep: recall against exact, batch q/s (top 10), single-query latency\n",
        common.markdown_table(
            ["entities", "nlist", "nprobe", "recall@1", "R@10", "10-recall@10", "batch q/s",
             "p50 ms", "p99 ms", "single queries"], sweep_rows),
    ]  # fmt: skip
    check_rows = [
        [c["target"], c["measured_on"], c["shown"],
         {True: "met", False: "NOT met", None: "n/a"}[c["met"]] + (f" ({c['note']})"
                                                                   if c["note"] else "")]
        for c in doc["checks"]
    ]  # fmt: skip
    headers = ["target", "on", "value", "status"]
    lines += ["## Targets\n", common.markdown_table(headers, check_rows)]
    return "\n".join(lines)


def merged(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``base`` results with the sizes of ``new`` replaced (rerun) and the checks redone;
    ``reruns`` records when and by which commit each replaced size was measured."""
    fresh = {size["entities"]: size for size in new["sizes"]}
    out = dict(base)
    out["sizes"] = [fresh.pop(size["entities"], size) for size in base["sizes"]]
    out["sizes"] += list(fresh.values())
    out["sizes"].sort(key=lambda size: size["entities"])
    out["reruns"] = [*base.get("reruns", []), {
        "entities": [size["entities"] for size in new["sizes"]],
        "started_at": new["started_at"],
        "git_commit": new["environment"]["versions"].get("git_commit"),
    }]  # fmt: skip
    out["checks"] = check_targets(out["sizes"])
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags (see ``--help``)."""
    parser = argparse.ArgumentParser(description="Artifact benchmark (build/open/query/recall).")
    parser.add_argument("--quick", action="store_true", help="1k and 20k only (< 3 minutes)")
    parser.add_argument("--sizes", type=make_catalog.parse_size, nargs="+",
                        help="catalog sizes, e.g. 1k 100k 1M")  # fmt: skip
    parser.add_argument("--rebuild", action="store_true", help="rebuild existing artifacts")
    parser.add_argument("--reuse-builds", action="store_true",
                        help="keep artifacts of the same catalog built by other library sources")
    parser.add_argument("--threads", type=int, default=Config().threads)
    parser.add_argument("--repeats", type=int, default=Config.repeats)
    parser.add_argument("--seed", type=int, default=make_catalog.DEFAULT_SEED)
    parser.add_argument("--probe-open", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--merge", action="store_true",
                        help="with --sizes: replace those sizes in results/artifact.json")
    parser.add_argument("--render", type=Path,
                        help="only rewrite the Markdown (and checks) of a results JSON")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> Config:
    """A :class:`Config` from parsed flags."""
    sizes = tuple(args.sizes) if args.sizes else (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    # quick: fewer queries and fresh-process opens, so six kinds at two sizes fit 3 minutes
    quick = {"batch_queries": 600, "single_queries": 150, "recall_queries": 300,
             "sweep_queries": 100, "open_runs": 2} if args.quick else {}  # fmt: skip
    return Config(
        **quick,
        sizes=sizes,
        mode="quick" if args.quick else ("full" if not args.sizes else "custom"),
        rebuild=args.rebuild,
        reuse_builds=args.reuse_builds,
        threads=args.threads,
        repeats=args.repeats,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``results/artifact[-quick].{json,md}``."""
    args = parse_args(argv)
    if args.probe_open:
        common.pin_threads(args.threads)
        print(json.dumps(probe_open(args.probe_open, args.threads)))
        return 0
    if args.render:
        doc = json.loads(args.render.read_text(encoding="utf-8"))
        doc["checks"] = check_targets(doc["sizes"])
        common.write_results(args.render.stem, doc, to_markdown(doc))
        return 0
    cfg = config_from_args(args)
    name = "artifact" if cfg.mode == "full" or args.merge else f"artifact-{cfg.mode}"
    base = None
    if args.merge:
        base = json.loads((common.RESULTS_DIR / "artifact.json").read_text(encoding="utf-8"))

    def save(partial: dict[str, Any]) -> tuple[Path, Path]:
        doc = merged(base, partial) if base is not None else partial
        return common.write_results(name, doc, to_markdown(doc))

    doc = run(cfg, save)
    json_path, _ = save(doc)
    doc = json.loads(json_path.read_text(encoding="utf-8"))
    for check in doc["checks"]:
        status = {True: "met", False: "NOT met", None: "n/a"}[check["met"]]
        print(f"  {check['target']}: {check['shown']} -> {status} ({check['measured_on']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
