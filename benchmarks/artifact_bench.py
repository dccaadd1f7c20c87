"""Artifact benchmark: build, open, query latency and throughput, upstream baseline, recall.

For each catalog size (real-name catalogs from ``make_catalog.py``) and model potion-8m:

* build time and artifact size for ``index_type`` "flat", "ivf" (auto-tuned nprobe), "auto";
* open time and RSS growth of ``load_index`` in fresh subprocesses (median of 5);
* single-query latency p50/p99 of ``index.match(text)`` including normalize + encode;
* batch throughput of ``index.match(list_of_texts)``;
* batch throughput of upstream's zero-shot method (encode the catalog once, then per batch
  cosine_similarity against every row, full argsort per query, Python result loop),
  on the same queries in the same process;
* recall@1 / recall@10 of the IVF artifact against exact (flat) search on typo queries.

Artifacts live under ``benchmarks/data/artifacts/`` and are reused unless ``--rebuild``.
Run through ``benchmarks/run.py`` (``make bench`` / ``make bench-quick``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import make_catalog  # noqa: E402

MODEL = "potion-8m"
DEFAULT_SIZES = (1_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 20_000)
INDEX_KINDS = ("flat", "ivf", "auto")
QUERY_KINDS = ("flat", "ivf")
QUERY_SEED = 7
#: Above this many entities upstream runs on a subset of the batch queries (O(N) per query).
UPSTREAM_FULL_MAX_ENTITIES = 100_000
#: nprobe values of the IVF latency/recall sweep (those below nlist, plus the stored one).
SWEEP_NPROBES = (1, 4, 16, 64, 256, 1024)
TARGETS = {
    "open_s": 0.2,
    "open_rss_pct": 10.0,
    "single_p50_ms": 1.0,
    "upstream_ratio": 10.0,
}


@dataclass
class Config:
    """What to run; the defaults are the full benchmark."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    mode: str = "full"
    rebuild: bool = False
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
    upstream: bool = True
    upstream_subset: int = 500
    auto_build_max_entities: int = 100_000
    seed: int = make_catalog.DEFAULT_SEED


# ------------------------------------------------------------------------------ data


def catalog_path(size: int, seed: int) -> Path:
    """The catalog CSV for ``size`` entities, generated if missing."""
    suffix = "" if seed == make_catalog.DEFAULT_SEED else f"-seed{seed}"
    path = common.DATA_DIR / f"names-{make_catalog.size_label(size)}{suffix}.csv"
    if not path.exists():
        started = time.perf_counter()
        make_catalog.write_catalog(path, size, seed)
        print(f"  generated {path.name} in {time.perf_counter() - started:.1f} s")
    return path


def read_catalog_rows(path: Path) -> list[tuple[str, str, list[str]]]:
    """(id, name, aliases) for every row of a catalog CSV."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        return [(row[0], row[1], [a for a in row[2].split("|") if a]) for row in reader]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def library_source_hash() -> str:
    """sha256 over the library's Python sources: artifacts built by other code are rebuilt."""
    import novelentitymatcher_faiss

    root = Path(novelentitymatcher_faiss.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def typo_queries(
    rows: list[tuple[str, str, list[str]]], count: int, seed: int
) -> tuple[list[str], list[str]]:
    """``count`` one-letter-typo versions of random entity names, and their entity ids."""
    from novelentitymatcher_faiss.perturb import one_letter_typo

    rng = random.Random(seed)
    texts, ids = [], []
    while len(texts) < count:
        entity_id, name, _ = rows[rng.randrange(len(rows))]
        typo = one_letter_typo(name, rng)
        if typo != name:
            texts.append(typo)
            ids.append(entity_id)
    return texts, ids


# ------------------------------------------------------------------------------ build


def artifact_dir(size: int, kind: str, seed: int) -> Path:
    """Where the artifact for (size, kind) lives."""
    suffix = "" if seed == make_catalog.DEFAULT_SEED else f"-seed{seed}"
    label = make_catalog.size_label(size)
    return common.DATA_DIR / "artifacts" / f"names-{label}{suffix}-{kind}"


def ensure_artifact(
    catalog: Path, stamp: dict[str, str], path: Path, kind: str, encoder: Any, rebuild: bool
) -> dict[str, Any]:
    """Build the artifact unless one exists with the same ``stamp``; return its figures.

    ``stamp`` (catalog and library source hashes) is stored in the manifest under
    ``"benchmark"``, so a changed catalog or library means a rebuild.
    """
    from novelentitymatcher_faiss import build_index
    from novelentitymatcher_faiss.artifact import read_manifest

    manifest = None
    if path.exists() and not rebuild:
        try:
            manifest = read_manifest(path)
        except Exception:  # an unreadable leftover is simply rebuilt
            manifest = None
        if manifest and manifest.get("benchmark") != stamp:
            manifest = None
    reused = manifest is not None
    if manifest is None:
        print(f"  building {path.name} ...", flush=True)
        build_index(
            catalog,
            path,
            model=MODEL,
            index_type=kind,
            show_progress=False,
            overwrite=True,
            encoder=encoder,
            extra_manifest={"benchmark": stamp},
        )
        manifest = read_manifest(path)
    info = manifest["index"]
    files = manifest["files"]
    index_bytes = files["index.faiss"]["size"]
    total = (
        sum(record["size"] for record in files.values()) + (path / "manifest.json").stat().st_size
    )
    tuning = info.get("nprobe_tuning") or []
    return {
        "requested": kind,
        "type": info["type"],
        "factory": info["factory"],
        "nlist": info.get("nlist") or None,
        "nprobe": info.get("nprobe"),
        "index_dim": manifest.get("index_dim", manifest["model"]["dim"]),
        "lexical": manifest.get("lexical"),
        "tuned_recall": tuning[-1] if tuning else None,
        "build_s": manifest["build_seconds"],
        "reused": reused,
        "artifact_bytes": total,
        "index_bytes": index_bytes,
        "entities": manifest["counts"]["entities"],
        "vectors": manifest["counts"]["vectors"],
    }


def derived_auto(builds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Figures for ``index_type="auto"`` without building it again.

    Uses the library's own rule (flat below ``AUTO_FLAT_MAX_VECTORS`` vectors, else IVF with
    the same defaults), so the artifact would be the "flat" or "ivf" one, byte for byte
    but for the manifest. Used on the largest catalogs, where a build takes many minutes.
    """
    from novelentitymatcher_faiss.build import AUTO_FLAT_MAX_VECTORS

    vectors = builds["flat"]["vectors"]
    same = "flat" if vectors < AUTO_FLAT_MAX_VECTORS else "ivf"
    return {**builds[same], "requested": "auto", "derived": True, "reused": False}


# ------------------------------------------------------------------------------ open


def probe_open(path: Path, threads: int) -> dict[str, Any]:
    """In this (fresh) process: time ``load_index`` and its RSS growth, then one query."""
    started = time.perf_counter()
    import faiss  # noqa: F401 - imported before measuring, as any user would have
    import numpy  # noqa: F401

    from novelentitymatcher_faiss.match_index import load_index

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


def measure_batch(index: Any, queries: list[str], cfg: Config) -> dict[str, Any]:
    """Queries per second of ``index.match(queries)``: median of ``cfg.repeats`` runs.

    A warm-up of 500 queries estimates the speed; when all of ``queries`` would take more
    than ``cfg.batch_budget_s`` per run, a prefix that fits is used (at least 1000).
    """
    warm = queries[: min(500, len(queries))]
    warm_s, _ = common.timed(lambda: index.match(warm))
    fits = int(cfg.batch_budget_s * len(warm) / max(warm_s, 1e-9))
    used = queries[: min(len(queries), max(1000, fits))]
    median, runs = common.median_seconds(lambda: index.match(used), cfg.repeats)
    return {"queries": len(used), "runs": len(runs), "seconds": median,
            "qps": len(used) / median}  # fmt: skip


def single_latencies_ms(index: Any, texts: list[str], nprobe: int | None = None) -> list[float]:
    """Wall time of ``index.match(text)`` for each text, in milliseconds."""
    times = []
    for text in texts:
        start = time.perf_counter_ns()
        index.match(text, nprobe=nprobe)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def affordable(index: Any, texts: list[str], wanted: int, budget_s: float, **kw: Any) -> int:
    """How many single queries fit in ``budget_s`` (at least 100), judged on a warm-up."""
    warm = texts[:50]
    per_query = sum(single_latencies_ms(index, warm, **kw)) / 1000 / len(warm)
    return int(min(wanted, max(100, budget_s / per_query)))


def measure_single(index: Any, queries: list[str], cfg: Config) -> dict[str, Any]:
    """p50/p99 latency of ``index.match(text)``: medians over ``cfg.repeats`` rounds.

    A round has ``cfg.single_queries`` queries, fewer when the warm-up shows a round would
    exceed ``cfg.single_round_budget_s`` (exact search on large catalogs).
    """
    single_latencies_ms(index, queries[: cfg.single_warmup])
    count = affordable(index, queries, cfg.single_queries, cfg.single_round_budget_s)
    rounds = []
    for r in range(cfg.repeats):
        chunk = [queries[(r * count + i) % len(queries)] for i in range(count)]
        times = single_latencies_ms(index, chunk)
        rounds.append((common.percentile(times, 50), common.percentile(times, 99)))
    return {
        "queries_per_round": count,
        "rounds": len(rounds),
        "p50_ms": statistics.median(p50 for p50, _ in rounds),
        "p99_ms": statistics.median(p99 for _, p99 in rounds),
        "p50_ms_rounds": [round(p50, 4) for p50, _ in rounds],
    }


def recall_figures(exact: list[list[dict]], approx: list[list[dict]]) -> dict[str, float]:
    """Tie-aware recall@1 and @10 of ``approx`` hits against ``exact`` hits (top_k=10 lists).

    A hit counts when its score reaches the k-th exact score (1e-5 slack), so entities
    sharing an alias cannot lower the recall. Also plain overlap of entity ids.
    """
    at1, at10, ids1, ids10 = [], [], [], []
    for want, got in zip(exact, approx, strict=True):
        if not want:
            continue
        kth, first = want[-1]["score"], want[0]["score"]
        at10.append(min(len(want), sum(h["score"] >= kth - 1e-5 for h in got)) / len(want))
        at1.append(float(bool(got) and got[0]["score"] >= first - 1e-5))
        ids10.append(len({h["id"] for h in want} & {h["id"] for h in got}) / len(want))
        ids1.append(float(bool(got) and got[0]["id"] == want[0]["id"]))
    return {
        "queries": len(at1),
        "recall_at_1": statistics.fmean(at1),
        "recall_at_10": statistics.fmean(at10),
        "id_overlap_at_1": statistics.fmean(ids1),
        "id_overlap_at_10": statistics.fmean(ids10),
    }


def top1_accuracy(hits: list[list[dict]], truth_ids: list[str]) -> float:
    """Share of queries whose first hit is the entity the typo was made from."""
    pairs = zip(hits, truth_ids, strict=True)
    return statistics.fmean(float(bool(h) and h[0]["id"] == t) for h, t in pairs)


def recall_and_sweep(
    ivf: Any, flat: Any, texts: list[str], truth_ids: list[str], singles: list[str], cfg: Config
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Recall of the IVF artifact at its stored nprobe, and a sweep over other nprobes.

    The sweep gives recall and single-query p50/p99 (one round, at most
    ``cfg.sweep_queries`` queries or ``cfg.single_round_budget_s``) per nprobe.
    """
    exact = flat.match(texts, top_k=10)
    approx = ivf.match(texts, top_k=10)
    recall = {
        **recall_figures(exact, approx),
        "typo_top1_accuracy_exact": top1_accuracy(exact, truth_ids),
        "typo_top1_accuracy_ivf": top1_accuracy(approx, truth_ids),
    }
    nlist = int(ivf.manifest["index"]["nlist"])
    sweep = []
    for nprobe in sorted({p for p in SWEEP_NPROBES if p < nlist} | {ivf.nprobe}):
        figures = recall_figures(exact, ivf.match(texts, top_k=10, nprobe=nprobe))
        count = affordable(ivf, singles, cfg.sweep_queries, cfg.single_round_budget_s / 2,
                           nprobe=nprobe)  # fmt: skip
        times = single_latencies_ms(ivf, singles[:count], nprobe=nprobe)
        sweep.append({
            "nprobe": nprobe,
            "stored": nprobe == ivf.nprobe,
            "recall_at_1": figures["recall_at_1"],
            "recall_at_10": figures["recall_at_10"],
            "single_queries": count,
            "p50_ms": common.percentile(times, 50),
            "p99_ms": common.percentile(times, 99),
        })  # fmt: skip
    return recall, sweep


# ------------------------------------------------------------------------------ upstream


def upstream_normalize(text: str) -> str:
    """Upstream's default normalizer: strip, NFKD, lowercase, collapse whitespace."""
    text = unicodedata.normalize("NFKD", text.strip()).lower()
    return " ".join(text.split())


def upstream_setup(rows: list[tuple[str, str, list[str]]], model_path: Path) -> dict[str, Any]:
    """Upstream's zero-shot set-up: normalize every name and alias, encode them once."""
    from model2vec import StaticModel

    model = StaticModel.from_pretrained(model_path)
    texts, owners = [], []
    for row, (_, name, aliases) in enumerate(rows):
        for text in (name, *aliases):
            texts.append(upstream_normalize(text))
            owners.append(row)
    return {
        "model": model,
        "ids": [entity_id for entity_id, _, _ in rows],
        "texts": texts,
        "owners": owners,
        "matrix": model.encode(texts),
    }


def upstream_match(state: dict[str, Any], queries: list[str], top_k: int = 1) -> list[Any]:
    """Upstream's zero-shot query path, one batch.

    Encode the normalized queries, ``cosine_similarity`` against every entity row, a full
    ``np.argsort`` per query, and a Python loop that builds the result dicts (best text per
    entity, ``top_k`` entities).
    """
    import numpy as np
    from sklearn.metrics.pairwise import cosine_similarity

    vectors = state["model"].encode([upstream_normalize(q) for q in queries])
    similarities = cosine_similarity(vectors, state["matrix"])
    ids, texts, owners = state["ids"], state["texts"], state["owners"]
    results: list[Any] = []
    for row in similarities:
        order = np.argsort(row)[::-1]
        hits, seen = [], set()
        for j in order:
            owner = owners[j]
            if owner in seen:
                continue
            seen.add(owner)
            hits.append({"id": ids[owner], "score": float(row[j]), "text": texts[j]})
            if len(hits) == top_k:
                break
        results.append((hits[0] if hits else None) if top_k == 1 else hits)
    return results


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


def measure_upstream(
    rows: list[tuple[str, str, list[str]]],
    model_path: Path,
    queries: list[str],
    ours: dict[str, Any],
    batches: dict[str, dict[str, Any]],
    cfg: Config,
) -> dict[str, Any]:
    """Upstream's batch throughput, and the ratio ours/upstream on the very same queries.

    ``ours`` maps an index kind to its opened :class:`MatchIndex`; ``batches`` to its batch
    figures, reused when they were measured on these queries (else ours is re-measured).
    """
    setup_s, state = common.timed(lambda: upstream_setup(rows, model_path))
    upstream_match(state, queries[:50])  # warm-up
    runs: list[float] = []
    upstream_s = budgeted_median(lambda: upstream_match(state, queries), cfg, runs)
    reference = upstream_match(state, queries[:1000])
    state.clear()
    out: dict[str, Any] = {
        "queries": len(queries),
        "runs": len(runs),
        "setup_s": setup_s,
        "seconds": upstream_s,
        "qps": len(queries) / upstream_s,
    }
    for kind, index in ours.items():
        if batches[kind]["queries"] == len(queries):
            ours_s = batches[kind]["seconds"]
        else:
            ours_s = budgeted_median(lambda index=index: index.match(queries), cfg)
        mine = index.match(queries[:1000])
        same = [
            a is not None and b is not None
            and (a["id"] == b["id"] or abs(a["score"] - b["score"]) < 1e-5)
            for a, b in zip(reference, mine, strict=True)
        ]  # fmt: skip
        out[kind] = {
            "qps": len(queries) / ours_s,
            "ratio": upstream_s / ours_s,
            "top1_agreement": statistics.fmean(same),
        }
    return out


# ------------------------------------------------------------------------------ driver


def bench_size(size: int, encoder: Any, library_sha: str, cfg: Config) -> dict[str, Any]:
    """Every measurement for one catalog size."""
    from novelentitymatcher_faiss.match_index import load_index

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

    for kind in INDEX_KINDS:
        path = artifact_dir(size, kind, cfg.seed)
        if kind == "auto" and len(rows) > cfg.auto_build_max_entities:
            build = derived_auto(result["builds"])
        else:
            build = ensure_artifact(catalog, stamp, path, kind, encoder, cfg.rebuild)
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
    for kind in QUERY_KINDS:
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
    batch_queries, _ = typo_queries(rows, cfg.batch_queries, QUERY_SEED)
    single_queries, _ = typo_queries(rows, cfg.single_queries * cfg.repeats, QUERY_SEED + 1)
    indexes = {kind: load_index(artifact_dir(size, kind, cfg.seed)) for kind in QUERY_KINDS}
    result["queries"] = {}
    for kind, index in indexes.items():
        batch = measure_batch(index, batch_queries, cfg)
        single = measure_single(index, single_queries, cfg)
        result["queries"][kind] = {"batch": batch, "single": single}
        print(
            f"  query {kind:<4} single p50 {single['p50_ms']:.3f} ms p99 {single['p99_ms']:.3f} ms"
            f" ({single['queries_per_round']} x {single['rounds']}), "
            f"batch {batch['qps']:,.0f} q/s",
            flush=True,
        )

    lap("queries")
    recall_texts, recall_ids = typo_queries(rows, cfg.recall_queries, QUERY_SEED + 2)
    result["recall"], result["nprobe_sweep"] = recall_and_sweep(
        indexes["ivf"], indexes["flat"], recall_texts, recall_ids, single_queries, cfg
    )
    print(
        f"  recall ivf vs exact: @1 {result['recall']['recall_at_1']:.4f} "
        f"@10 {result['recall']['recall_at_10']:.4f}; sweep: "
        + ", ".join(
            f"nprobe {p['nprobe']} @1 {p['recall_at_1']:.3f} p50 {p['p50_ms']:.2f} ms"
            for p in result["nprobe_sweep"]
        ),
        flush=True,
    )

    lap("recall_and_sweep")
    if cfg.upstream:
        full = len(rows) <= UPSTREAM_FULL_MAX_ENTITIES
        batches = {kind: q["batch"] for kind, q in result["queries"].items()}
        # The same queries for both sides: the fewest any of our batch runs used (a prefix
        # of the same list), or a fixed subset on the largest catalogs.
        fewest = min(b["queries"] for b in batches.values())
        count = fewest if full else min(cfg.upstream_subset, fewest)
        upstream = measure_upstream(
            rows, encoder.path, batch_queries[:count], indexes, batches, cfg
        )
        upstream["subset"] = not full
        result["upstream"] = upstream
        print(
            f"  upstream {upstream['qps']:,.1f} q/s on {count} queries; ours/upstream: "
            + ", ".join(f"{k} {upstream[k]['ratio']:.1f}x" for k in indexes),
            flush=True,
        )
        lap("upstream")
    return result


def check_targets(sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The DESIGN targets, judged where the measured size matches the target's size."""
    checks = []
    big = [s for s in sizes if s["builds"]["ivf"]["vectors"] >= 1_000_000]
    for s in big[-1:] or sizes[-1:]:
        opened, single = s["open"]["ivf"], s["queries"]["ivf"]["single"]
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
    mid = [s for s in sizes if s["entities"] == 100_000 and "upstream" in s]
    for s in mid or [s for s in sizes if "upstream" in s][-1:]:
        kind = s["auto_resolves_to"] if s["auto_resolves_to"] in QUERY_KINDS else "ivf"
        ratio = s["upstream"][kind]["ratio"]
        checks.append(
            _check("batch ours/upstream >= 10x at 100k", f"{kind} (auto), {s['entities']:,} "
                   "entities", ratio, ratio >= TARGETS["upstream_ratio"], bool(mid), "{:.1f}x")
        )  # fmt: skip
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
    info = {
        "machine": machine,
        "versions": {**common.library_versions(), "library_sources_sha256": library_sha[:16]},
        "threads": {**threads, "faiss_omp": str(faiss_threads)},
    }
    common.print_environment(info)
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
        f"Machine: {machine['cpu_model']}, {machine['usable_cores']} cores, "
        f"{machine['ram_gib']} GiB RAM, {machine['os']}, Python {machine['python']}.  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".  ",
        f"Threads: {env['threads']['OMP_NUM_THREADS']} (OMP/BLAS/tokenizers, FAISS batch); "
        "the library runs single queries on 1 FAISS thread.\n",
        f"Parallel speedup of {machine['usable_cores']} busy processes: "
        f"{machine.get('parallel_speedup', '?')}x (about 1 means the cores are shared: threads "
        "barely help batch figures).\n",
        "How measured: build once (the library's `build_seconds`, model already loaded); open "
        "= `load_index` in 5 fresh subprocesses, median (page cache warm); 1st query = the "
        "first `match` after opening (loads and fingerprints the model); p50/p99 = "
        "`index.match(text)` one-letter-typo queries, medians over 3 rounds (round size in "
        "the JSON; fewer than 1000 where exact search is slow); batch = "
        "`index.match(list)`, median of 3 runs (query count in brackets). Upstream = its "
        "zero-shot method reproduced in this process on the same queries.\n",
    ]
    headers = [
        "entities", "vectors", "index", "build s", "artifact", "index.faiss", "open ms",
        "RSS growth (% index)", "1st query s", "p50 ms", "p99 ms", "batch q/s (queries)",
        "upstream q/s", "ours/upstream",
    ]  # fmt: skip
    rows = []
    for s in doc["sizes"]:
        for kind in INDEX_KINDS:
            build = s["builds"][kind]
            shown = kind if kind != "auto" else f"auto ({build['type']})"
            if build.get("derived"):
                shown += ", not rebuilt: same build as " + build["type"]
            if build["nprobe"]:
                shown += f" nlist {build['nlist']} nprobe {build['nprobe']}"
            row = [f"{s['entities']:,}", f"{build['vectors']:,}", shown, f"{build['build_s']:.1f}",
                   common.human_bytes(build["artifact_bytes"]),
                   common.human_bytes(build["index_bytes"])]  # fmt: skip
            if kind in QUERY_KINDS:
                opened, q = s["open"][kind], s["queries"][kind]
                up = s.get("upstream")
                row += [
                    _ms(opened["open_s"]),
                    f"{common.human_bytes(opened['rss_growth_bytes'])} "
                    f"({opened['rss_growth_pct_of_index']:.2f}%)",
                    f"{opened['first_query_s']:.2f}",
                    f"{q['single']['p50_ms']:.3f}",
                    f"{q['single']['p99_ms']:.3f}",
                    f"{q['batch']['qps']:,.0f} ({q['batch']['queries']:,})",
                    f"{up['qps']:,.1f} ({up['queries']:,})" if up else "-",
                    f"{up[kind]['ratio']:.1f}x" if up else "-",
                ]
            else:
                row += ["same as " + build["type"]] + ["-"] * 7
            rows.append(row)
    lines += ["## Figures\n", common.markdown_table(headers, rows)]
    recall_rows = [
        [f"{s['entities']:,}", s["builds"]["ivf"]["nprobe"], f"{r['recall_at_1']:.4f}",
         f"{r['recall_at_10']:.4f}", f"{r['typo_top1_accuracy_exact']:.4f}",
         f"{r['typo_top1_accuracy_ivf']:.4f}", r["queries"]]
        for s in doc["sizes"] for r in [s["recall"]]
    ]  # fmt: skip
    lines += [
        "## IVF recall against exact search (one-letter-typo queries)\n",
        common.markdown_table(
            ["entities", "nprobe", "recall@1", "recall@10", "typo top-1 exact", "typo top-1 IVF",
             "queries"], recall_rows),
    ]  # fmt: skip
    sweep_rows = [
        [f"{s['entities']:,}", s["builds"]["ivf"]["nlist"],
         f"{p['nprobe']}" + (" (stored)" if p["stored"] else ""), f"{p['recall_at_1']:.4f}",
         f"{p['recall_at_10']:.4f}", f"{p['p50_ms']:.3f}", f"{p['p99_ms']:.3f}",
         p["single_queries"]]
        for s in doc["sizes"] for p in s["nprobe_sweep"]
    ]  # fmt: skip
    lines += [
        "## IVF nprobe sweep: recall against exact, single-query latency (one round)\n",
        common.markdown_table(
            ["entities", "nlist", "nprobe", "recall@1", "recall@10", "p50 ms", "p99 ms",
             "queries"], sweep_rows),
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags (see ``--help``)."""
    parser = argparse.ArgumentParser(description="Artifact benchmark (build/open/query/recall).")
    parser.add_argument("--quick", action="store_true", help="1k and 20k only (< 3 minutes)")
    parser.add_argument("--sizes", type=make_catalog.parse_size, nargs="+",
                        help="catalog sizes, e.g. 1k 100k 1M")  # fmt: skip
    parser.add_argument("--rebuild", action="store_true", help="rebuild existing artifacts")
    parser.add_argument("--threads", type=int, default=Config().threads)
    parser.add_argument("--repeats", type=int, default=Config.repeats)
    parser.add_argument("--no-upstream", action="store_true", help="skip upstream's baseline")
    parser.add_argument("--seed", type=int, default=make_catalog.DEFAULT_SEED)
    parser.add_argument("--probe-open", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> Config:
    """A :class:`Config` from parsed flags."""
    sizes = tuple(args.sizes) if args.sizes else (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    quick = {"batch_queries": 1000, "single_queries": 500, "recall_queries": 500,
             "sweep_queries": 100} if args.quick else {}  # fmt: skip
    return Config(
        **quick,
        sizes=sizes,
        mode="quick" if args.quick else ("full" if not args.sizes else "custom"),
        rebuild=args.rebuild,
        threads=args.threads,
        repeats=args.repeats,
        upstream=not args.no_upstream,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``results/artifact[-quick].{json,md}``."""
    args = parse_args(argv)
    if args.probe_open:
        common.pin_threads(args.threads)
        print(json.dumps(probe_open(args.probe_open, args.threads)))
        return 0
    cfg = config_from_args(args)
    name = "artifact" if cfg.mode == "full" else f"artifact-{cfg.mode}"
    doc = run(cfg, lambda partial: common.write_results(name, partial, to_markdown(partial)))
    json_path, md_path = common.write_results(name, doc, to_markdown(doc))
    print(f"\nwrote {json_path.relative_to(common.REPO_DIR)} and "
          f"{md_path.relative_to(common.REPO_DIR)}")  # fmt: skip
    for check in doc["checks"]:
        status = {True: "met", False: "NOT met", None: "n/a"}[check["met"]]
        print(f"  {check['target']}: {check['shown']} -> {status} ({check['measured_on']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
