"""Search breadth tuning at build time: nprobe (IVF) or efSearch (HNSW), and early stop.

Both are measured on typo'd copies of the catalog's own texts against their exact top 10
(:class:`~.search.ExactTopK`, filled while the vectors are added).
Queries are float32 (q, d); recall figures are FAISS's (see :func:`tune_breadth`).
"""

from __future__ import annotations

import random
import sys
import warnings
from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..artifact.arrays import release_pages
from ..artifact.files import STAGE_GRAPH_FILE
from ..artifact.strings import StringTable
from ..models.encoders import Encoder
from ..text.lexical import LexicalSettings, featurize
from ..text.normalize import NormalizerSettings, normalize_text
from ..text.perturb import one_letter_typo
from .catalog import MAX_TEXT_CHARS
from .indexing import IndexPlan, centroid_graph
from .search import (
    EarlyStop,
    ExactTopK,
    best_of,
    fetch_count,
    hits_at_k,
    recall_at_k,
    search,
    search_lists,
)
from .timing import StageClock

#: efSearch values tried for an HNSW index, smallest first (see :func:`tune_breadth`).
EF_SEARCH_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)

#: From this many lists on, the early-stop stages (:func:`tune_early_stop`) find their lists
#: with an HNSW graph over the centroids, stored beside the index (``STAGE_GRAPH_FILE``);
#: the last, full-nprobe search keeps the exact flat quantizer. Measured on 4,558 centroids
#: of 512-d, one query asking for 49 lists: 0.25 ms against 0.66 ms flat, the graph's top 6,
#: 24 and 48 lists 99.7%, 99.1% and 98.1% the flat quantizer's (docs/benchmarks.md).
STAGE_GRAPH_MIN_NLIST = 2048
#: The stage graph's efSearch (at least the lists a search asks for) and efConstruction.
STAGE_GRAPH_EF = 64
STAGE_GRAPH_EF_CONSTRUCTION = 200
#: Typo'd catalog texts that tune nprobe and early stop. Early-stop margins are set at the
#: edge of a recall budget, so more queries set them more safely: on the 100k benchmark
#: artifact (nprobe 256), plans tuned on 1,000 kept 0.980 top-1 against exact search on
#: 1,000 new typo'd names and aliases, on 3,000 0.984 (the full nprobe: 0.991; a one-off
#: check). The 1M build takes 402 s instead of 220 s.
TUNING_QUERIES = 3000
#: nprobe tuning also requires this top-1 agreement with exact search.
TOP1_TARGET = 0.99

#: Early stopping (:class:`~.search.EarlyStop`) may lose at most this
#: much of the full nprobe's recall@1 on the tuning queries, and fall at most this far under
#: the recall@1 target nprobe is tuned to (0.99 -> 0.985), measured on all the tuning queries:
#: a floor of 0.985 on the held-out half alone left no plan at 1M with the name map (full
#: nprobe 0.990 on all; the best plan kept 0.9847 on that half). On the 1M benchmark
#: artifact without the map (full nprobe 0.993) a floor of 0.99 left 0.003 and kept plans
#: whose median single query scanned 64-130 lists (1.3-2.4 ms library search); this budget
#: kept 12, 96, then 256 lists (0.60 ms on two threads), 0.997 top-1 against exact search on
#: 2,000 new typo'd names ...
EARLY_STOP_MAX_LOSS = 0.005
#: ... and is kept only when it probes at most this share of nprobe's lists per query.
EARLY_STOP_MAX_COST = 0.75
#: Early stop probes in at most this many stages before the full nprobe (with 3,000 tuning
#: queries a fourth stage did not lower the median single query at 1M: 0.70 against 0.62
#: ms for the library search, a one-off check) ...
EARLY_STOP_MAX_STAGES = 3
#: ... and counts each stage searched as scanning this many vectors more (a search call, its
#: re-rank and bookkeeping), so a stage is added only where it saves more than that.
EARLY_STOP_STAGE_VECTORS = 256
#: Shares of the recall budget tried for the first of several stages (besides an even
#: split): a first stage allowed more of the loss stops more queries after the fewest lists.
EARLY_STOP_FIRST_SHARES = (0.5, 0.75)
#: Early stop is measured only from this stored nprobe on (below it, probing is cheap) and
#: with at least this many tuning queries (fewer make a noisy stop margin).
EARLY_STOP_MIN_NPROBE = 16
EARLY_STOP_MIN_QUERIES = 800


#: :func:`tune_breadth` does not search a breadth whose predicted recall (the share of
#: queries whose exact top hit lies in that many nearest lists) is further than this below
#: the targets. Measured recall never exceeds the prediction but for ties (entities sharing
#: a text): on 100k names, predicted and measured agreed to the query at nprobe 96 and 128.
PREDICTION_MARGIN = 0.005


def nprobe_grid(nlist: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, ... (steps of about 1.5x) up to and including ``nlist``."""
    grid = {nlist}
    for i in range(nlist.bit_length() + 1):
        grid.update(v for v in (2**i, 3 * 2**i // 2) if v < nlist)
    return sorted(grid)


@dataclass(frozen=True)
class Breadth:
    """What :func:`tune_breadth` chose: the ``breadth`` (nprobe or efSearch), its table of
    measured rows (breadth ascending, the chosen one last) and the top-1 rows int64 (q, 1)
    of the tuning queries at that breadth (what early-stop tuning compares with)."""

    breadth: int
    table: list[dict[str, float]]
    top1: np.ndarray


def tune_breadth(
    index,  # noqa: ANN001
    vectors: np.ndarray,
    exact: ExactTopK,
    grid: list[int],
    fixed: int | None,
    targets: tuple[float, float],
    rerank: int,
    show_progress: bool = False,
    spill: int = 1,
) -> Breadth:
    """Smallest search breadth of ``grid`` (nprobe for IVF, efSearch for HNSW) with
    recall@10 >= ``targets[0]`` and recall@1 >= ``targets[1]`` for ``exact``'s queries,
    against its exact top-k (already fed every row of ``vectors``).

    recall@10 is FAISS's R@10 (the exact top hit is among the 10 returned), recall@1 the
    share of exact top hits (:func:`measure_breadth`). With ``fixed`` only that is measured.

    IVF indexes start at the breadth :func:`probe_ranks` predicts (the share of queries whose
    exact top hit lies in their b nearest lists) and walk the grid: down while the next
    smaller breadth passes (its prediction within ``PREDICTION_MARGIN`` of the targets),
    else up to the first that passes. Recall grows with the breadth, so this finds what a
    scan from the smallest would, in one to three searches instead of one per grid step
    (100k names: 14). HNSW indexes scan from the smallest.
    """
    import faiss

    knob = "ef_search" if isinstance(index, faiss.IndexHNSW) else "nprobe"
    target, top1 = targets
    candidates = [fixed] if fixed else grid
    measured: dict[int, tuple[dict[str, float], np.ndarray, bool]] = {}

    def passes(i: int) -> bool:
        row, first, (at_10, at_1) = measure_breadth(index, vectors, exact, knob, candidates[i],
                                                    rerank, spill)  # fmt: skip
        ok = at_10 >= target and at_1 >= top1
        measured[candidates[i]] = row, first, ok
        if show_progress:
            tqdm.write(f"{knob} {candidates[i]}: recall@10 {at_10:.3f}, recall@1 {at_1:.3f}",
                       file=sys.stderr)  # fmt: skip
        return ok

    i, share = 0, [1.0] * len(candidates)
    if knob == "nprobe" and len(candidates) > 1:
        i, share = _predicted_start(index, exact, candidates, max(target, top1))
    if passes(i):
        # a smaller breadth whose predicted share misses by more than the margin fails
        # when searched too (codes only lose exact hits; ties gain a few): not searched
        while i > 0 and share[i - 1] >= max(target, top1) - PREDICTION_MARGIN and passes(i - 1):
            i -= 1
    else:
        while i + 1 < len(candidates) and not passes(i + 1):
            i += 1
        i = min(i + 1, len(candidates) - 1)
    chosen = candidates[i]
    if not fixed and not measured[chosen][2]:
        _warn_unreached(knob, chosen, targets, measured[chosen][0])
    table = [measured[b][0] for b in sorted(measured) if b <= chosen]
    return Breadth(chosen, table, measured[chosen][1])


def _predicted_start(  # noqa: ANN001 - a faiss.Index
    index, exact: ExactTopK, candidates: list[int], goal: float
) -> tuple[int, list[float]]:
    """Per IVF breadth of ``candidates``, the share of ``exact``'s queries whose exact top
    hit lies in that many nearest lists (:func:`probe_ranks`), and the first breadth whose
    share reaches ``goal`` (else the last): where :func:`tune_breadth` starts."""
    ranks = probe_ranks(index, exact.queries, exact.result()[1][:, 0])
    share = [float(np.mean(ranks < b)) for b in candidates]
    return next((j for j, s in enumerate(share) if s >= goal), len(share) - 1), share


def measure_breadth(  # noqa: ANN001 - a faiss.Index
    index,
    vectors: np.ndarray,
    exact: ExactTopK,
    knob: str,
    breadth: int,
    rerank: int,
    spill: int,
) -> tuple[dict[str, float], np.ndarray, tuple[float, float]]:
    """Search ``exact``'s queries at ``breadth``: the table row (``knob``: "nprobe" or
    "ef_search"; recall@1, FAISS's R@10 and 10-recall@10, tie-aware, rounded), the top-1
    rows found, int64 (q, 1), and (R@10, recall@1) unrounded."""
    queries, k = exact.queries, exact.k
    truth, _ = exact.result()
    options = {"vectors": vectors, "rerank": rerank, "spill": spill}
    _, found = search(index, queries, k, nprobe=breadth, **options)
    at_10 = recall_at_k(queries, found, truth[:, :1], vectors)
    first = found[:, :1]  # without re-rank, the top-10 search's first column is top-1
    if rerank > 1:  # re-ranking fetches a different candidate count for k=1
        _, first = search(index, queries, 1, nprobe=breadth, **options)
    at_1 = recall_at_k(queries, first, truth[:, :1], vectors)
    at_10_of_10 = recall_at_k(queries, found, truth, vectors)
    release_pages(vectors)  # re-ranked rows were read through the memory map
    row = {knob: breadth, "recall_at_1": round(at_1, 4), "recall_at_10": round(at_10, 4),
           "recall_10_at_10": round(at_10_of_10, 4)}  # fmt: skip
    return row, np.array(first, dtype=np.int64), (at_10, at_1)


def _warn_unreached(
    knob: str, chosen: int, targets: tuple[float, float], best: dict[str, float]
) -> None:
    advice = (
        "the graph misses neighbours (duplicate texts can cut it apart): use a larger M or flat"
        if knob == "ef_search"
        else "the codes are too coarse: use rerank, a finer index type, or flat"
    )
    warnings.warn(
        f"no {knob} up to {chosen} reached recall@10 {targets[0]} and recall@1 {targets[1]} "
        f"(best {best}); {advice}",
        stacklevel=4,
    )


def probe_ranks(index, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """For each query of float32 (q, d), how many IVF lists of ``index`` score above the
    best-scoring list that holds its ``rows`` int64 (q,) entry (a row filed under several
    lists, with spill, counts its best): int64 (q,). Probing b lists finds the row exactly
    when its rank is below b (with the exact centroid order; an HNSW quantizer may differ).
    A row no list holds ranks nlist."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    nlist = ivf.nlist
    centroids = faiss.downcast_index(ivf.quantizer).reconstruct_n(0, nlist)
    wanted = np.zeros(ivf.ntotal if not rows.size else max(ivf.ntotal, int(rows.max()) + 1),
                      dtype=bool)  # fmt: skip
    wanted[rows[rows >= 0]] = True
    held_rows, held_lists = [], []
    for lst in range(nlist):
        size = ivf.invlists.list_size(lst)
        if not size:
            continue
        ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), size)
        hit = ids[(ids >= 0) & (ids < len(wanted))]
        hit = hit[wanted[hit]]
        if hit.size:
            held_rows.append(np.array(hit, dtype=np.int64))
            held_lists.append(np.full(hit.size, lst, dtype=np.int64))
    if not held_rows:
        return np.full(len(rows), nlist, dtype=np.int64)
    by_row = np.concatenate(held_rows)
    order = np.argsort(by_row, kind="stable")
    by_row, lists = by_row[order], np.concatenate(held_lists)[order]
    first = np.searchsorted(by_row, rows, "left")
    last = np.searchsorted(by_row, rows, "right")
    best = np.full(len(rows), -np.inf, dtype=np.float32)
    for extra in range(int((last - first).max(initial=0))):
        at = first + extra
        ok = at < last
        scores = np.einsum("qd,qd->q", queries[ok], centroids[lists[at[ok]]])
        best[ok] = np.maximum(best[ok], scores)
    ranks = np.full(len(rows), nlist, dtype=np.int64)
    found = np.isfinite(best)
    for start in range(0, len(rows), 512):
        part = slice(start, start + 512)
        above = (queries[part] @ centroids.T) > best[part, None]
        ranks[part] = np.where(found[part], above.sum(axis=1), nlist)
    return ranks


def tune_early_stop(
    index,  # noqa: ANN001 - a faiss.IndexIVF
    vectors: np.ndarray,
    exact: ExactTopK,
    nprobe: int,
    grid: list[int],
    target_top1: float,
    rerank: int,
    spill: int = 1,
    stage_quantizer=None,  # noqa: ANN001 - a faiss.Index over the centroids
    top1: np.ndarray | None = None,
) -> tuple[EarlyStop | None, list[dict[str, Any]]]:
    """Staged probing (:class:`EarlyStop`) for top-1 searches at ``nprobe``, or None.

    None below ``EARLY_STOP_MIN_NPROBE`` or ``EARLY_STOP_MIN_QUERIES``. For each breadth
    of ``grid`` up to ``nprobe // 2``, the tuning queries of ``exact`` give each query's
    best hit within that many nearest lists, whether it is the exact top hit, and its
    margin over the centroid score of the next list. Every plan of 1 to
    ``EARLY_STOP_MAX_STAGES`` breadths, with each share of the recall budget in
    ``EARLY_STOP_FIRST_SHARES`` for its first stage, is scored by :func:`plan_early_stop`;
    the usable plan ranked lowest by :func:`plan_rank` is kept, if its lists per query are
    at most ``EARLY_STOP_MAX_COST * nprobe``. Returns it and a table: every one-stage plan,
    then the lowest-ranked plan of each longer length. The stages' lists are
    those ``stage_quantizer`` (default: the index's coarse quantizer) finds, as in search.
    ``top1``: the queries' top-1 rows int64 (q, 1) at ``nprobe`` when already searched
    (:class:`Breadth`). The lists are scanned once, in the segments between breadths, each
    segment's best ``fetch`` merged into those so far (100k names: 64 lists a query, not
    the 220 of a search per breadth).
    """
    import faiss

    queries = exact.queries
    firsts = [g for g in grid if g <= nprobe // 2]
    if not firsts or nprobe < EARLY_STOP_MIN_NPROBE or len(queries) < EARLY_STOP_MIN_QUERIES:
        return None, []
    truth = exact.result()[0][:, :1]
    if top1 is None:
        _, top1 = search(index, queries, 1, nprobe=nprobe, vectors=vectors, rerank=rerank,
                         spill=spill)  # fmt: skip
    full = hits_at_k(queries, top1, truth, vectors)
    ivf = faiss.extract_index_ivf(index)
    quantizer = ivf.quantizer if stage_quantizer is None else stage_quantizer
    margins, hits = stage_margins(ivf, quantizer, exact, vectors, firsts, rerank, spill)
    call_lists = EARLY_STOP_STAGE_VECTORS * ivf.nlist / max(1, ivf.ntotal)
    plans = [
        plan_early_stop(stages, margins, hits, full, nprobe, target_top1, call_lists, share)
        for size in range(1, EARLY_STOP_MAX_STAGES + 1)
        for stages in combinations(firsts, size)
        for share in sorted({1 / size, *(s for s in EARLY_STOP_FIRST_SHARES if size > 1)})
    ]
    table = [plan for plan in plans if not plan["then"]]
    for size in range(2, EARLY_STOP_MAX_STAGES + 1):
        longer = [p for p in plans if len(p["then"]) == size - 1 and p["usable"]]
        table += [min(longer, key=plan_rank)] if longer else []
    usable = [plan for plan in table if plan["usable"]]
    best = min(usable, key=plan_rank) if usable else None
    if best is None or best["lists_per_query"] > EARLY_STOP_MAX_COST * nprobe:
        return None, table
    return EarlyStop.from_dict(best), table


def stage_margins(  # noqa: ANN001 - faiss objects
    ivf,
    quantizer,
    exact: ExactTopK,
    vectors: np.ndarray,
    firsts: list[int],
    rerank: int,
    spill: int,
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Per breadth of ``firsts`` (ascending): each tuning query's margin, float32 (q,), of
    its best hit within that many nearest lists (``quantizer``'s) over the centroid score
    of the next list, and whether that hit is the exact top hit, bool (q,). The lists are
    scanned once, in the segments between breadths."""
    queries, truth = exact.queries, exact.result()[0][:, :1]
    coarse, lists = quantizer.search(queries, firsts[-1] + 1)
    fetch = fetch_count(ivf.ntotal, 1, rerank, spill)
    exact_rows = vectors if fetch > 1 else None
    margins, hits = {}, {}
    pool = (np.full((len(queries), 0), -np.inf, dtype=np.float32),
            np.full((len(queries), 0), -1, dtype=np.int64))  # fmt: skip
    done = 0
    for first in firsts:
        found = search_lists(ivf, queries, fetch, lists[:, done:first], coarse[:, done:first])
        pool, done = _best_candidates(pool, found, fetch), first
        scores, rows = best_of(queries, *pool, exact_rows)
        margins[first] = scores[:, 0] - coarse[:, first]
        hits[first] = hits_at_k(queries, rows, truth, vectors)
    release_pages(vectors)
    return margins, hits


def _best_candidates(
    pool: tuple[np.ndarray, np.ndarray], found: tuple[np.ndarray, np.ndarray], fetch: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``fetch`` (scores float32, rows int64) (q, fetch) by index score of two
    candidate sets (q, c) each: what one search over both sets' lists would keep."""
    scores = np.hstack([pool[0], found[0]])
    rows = np.hstack([pool[1], found[1]])
    if scores.shape[1] <= fetch:
        return scores, rows
    keep = np.argpartition(-scores, fetch - 1, axis=1)[:, :fetch]
    return np.take_along_axis(scores, keep, 1), np.take_along_axis(rows, keep, 1)


def plan_rank(plan: dict[str, Any]) -> float:
    """How an early-stop plan of :func:`plan_early_stop` is ranked, lowest best: its mean
    ``cost`` (which sets batch throughput) plus its median ``p50_cost`` (single-query
    latency). By the mean alone, plans that stop the median query late cost about as much
    as ones that stop it after a few lists (1M typo'd names: 63.1 against 62.4 lists per
    query, but 4.9 against 25.8 for the median query)."""
    return plan["cost"] + plan["p50_cost"]


def plan_early_stop(
    stages: tuple[int, ...],
    margins: dict[int, np.ndarray],
    hits: dict[int, np.ndarray],
    full: np.ndarray,
    nprobe: int,
    target_top1: float,
    call_lists: float,
    first_share: float | None = None,
) -> dict[str, Any]:
    """Margins and figures of probing in ``stages`` (breadths, narrowest first) before the
    full ``nprobe``, for q tuning queries: ``margins[b]`` float32 (q,) their best score
    within b lists minus the centroid score of list b + 1, ``hits[b]`` and ``full``
    float (q,) whether that hit (or the full nprobe's) is the exact top hit.

    The margins are set stage by stage on the first half of the queries: each the lowest
    (:func:`lowest_safe_margin`) that keeps recall@1, with the queries stopped so far scoring
    their stage's hit and the rest the full nprobe's, at least the full recall@1 minus the
    stages' share so far of ``EARLY_STOP_MAX_LOSS`` (the first stage's is ``first_share``,
    default an even split, the later ones share the rest evenly), and never more loss than
    keeps the full recall@1 of all the queries at ``target_top1 - EARLY_STOP_MAX_LOSS``.
    The plan is ``usable`` when some query stops and the held-out second half keeps the
    whole budget. ``cost`` and ``p50_cost``
    are the mean and median over the queries of the lists scanned plus ``call_lists`` for
    every stage searched (a search call, its re-rank and bookkeeping, in lists).
    """
    n = len(full)
    tune = np.arange(n) < n // 2
    got, lists, calls = full.astype(float), np.full(n, float(nprobe)), np.ones(n)
    going = np.ones(n, dtype=bool)

    # the loss a part may take against the full nprobe on that same part: its share of the
    # budget, and never more than keeps the full recall@1 of all queries over target - budget
    # (measured on all queries: a half's own full recall is noisier than the budget)
    headroom = max(0.0, float(full.mean()) - (target_top1 - EARLY_STOP_MAX_LOSS))

    def floor(part: np.ndarray, share: float) -> float:
        return float(full[part].mean()) - min(EARLY_STOP_MAX_LOSS * share, headroom)

    first_share = 1 / len(stages) if first_share is None else first_share
    chosen = []
    for i, breadth in enumerate(stages):
        rest = going & tune
        kept = got[tune & ~going].sum()  # recall already fixed by earlier stops
        share = first_share + (1 - first_share) * i / max(1, len(stages) - 1)
        wanted = (floor(tune, share) * tune.sum() - kept) / max(1, rest.sum())
        margin = 2.0
        if rest.any():
            margin = max(-2.0, lowest_safe_margin(margins[breadth][rest], hits[breadth][rest],
                                                  full[rest], wanted))  # fmt: skip
        stop = going & (margins[breadth] >= margin)
        got[stop], lists[stop], calls[going] = hits[breadth][stop], breadth, i + 1
        going &= ~stop
        chosen.append((breadth, margin))
    calls[going] += 1  # the last search, over the rest of the nprobe lists
    held = ~tune
    usable = bool(not going.all() and got[held].mean() >= floor(held, 1.0))
    return _plan_row(chosen, hits, going, lists + call_lists * calls, lists, got[held],
                     first_share, usable)  # fmt: skip


def _plan_row(
    chosen: list[tuple[int, float]],
    hits: dict[int, np.ndarray],
    going: np.ndarray,
    spent: np.ndarray,
    lists: np.ndarray,
    held_got: np.ndarray,
    first_share: float,
    usable: bool,
) -> dict[str, Any]:
    """The table row of a plan: its stages ``chosen`` ((breadth, margin), narrowest first)
    and figures over the queries (``going`` bool (q,): not stopped; ``spent`` and
    ``lists`` float (q,): cost and lists scanned; ``held_got``: the held-out half's hits)."""
    first, first_margin = chosen[0]
    return {
        "nprobe": first, "margin": first_margin,
        "then": [{"nprobe": b, "margin": m} for b, m in chosen[1:]],
        "recall_at_1": round(float(hits[first].mean()), 4),
        "stopped": round(float(1 - going.mean()), 4),
        "lists_per_query": round(float(lists.mean()), 2),
        "cost": round(float(spent.mean()), 2), "p50_cost": round(float(np.median(spent)), 2),
        "first_share": round(first_share, 4),
        "held_out_recall_at_1": round(float(held_got.mean()), 4),
        "usable": usable,
    }  # fmt: skip


def lowest_safe_margin(
    margins: np.ndarray, hits: np.ndarray, full: np.ndarray, floor: float
) -> float:
    """The lowest stop margin for first-pass ``margins`` float32 (q,) whose mixed recall@1
    (``hits`` (q,) for queries that stop, ``full`` (q,) for the others) is at least
    ``floor`` for it and for every higher margin; 2.0 (no query stops) when there is none."""
    order = np.argsort(-margins, kind="stable")
    change = np.concatenate([[0.0], np.cumsum(hits[order] - full[order])])
    recall = (full.sum() + change) / len(margins)  # recall when the best m queries stop
    failing = np.flatnonzero(recall < floor - 1e-9)
    m = int(failing[0]) - 1 if len(failing) else len(margins)
    if m <= 0:
        return 2.0
    margin = margins[order[m - 1]]
    if m < len(margins) and margins[order[m]] == margin:  # a tie would let more queries stop
        margin = np.nextafter(margin, np.float32(np.inf))
    return float(margin)

@dataclass(frozen=True)
class TuningConfig:
    """How a build sets its search settings. ``nprobe``: a fixed breadth (IVF nprobe, or
    an HNSW index's efSearch) instead of the tuned one; ``target_recall`` (FAISS's R@10
    against exact search) and ``target_top1`` (the top hit is the exact one): what the
    tuned breadth must reach on typo'd catalog texts; ``early_stop``: IVF indexes also
    measure staged probing for top-1 queries (:func:`tune_early_stop`) and keep it when it
    saves work; ``stage_graph``: its stages find their lists with an HNSW graph over the
    centroids (None: from ``STAGE_GRAPH_MIN_NLIST`` lists on, flat coarse quantizers
    only); ``seed``: of the tuning queries."""

    nprobe: int | None = None
    target_recall: float = 0.95
    target_top1: float = TOP1_TARGET
    early_stop: bool = True
    stage_graph: bool | None = None
    seed: int = 0


@dataclass(frozen=True)
class Tuned:
    """A build's search settings: breadth (nprobe or efSearch; None for exact indexes),
    the measured breadth table, the early-stop plan (or None) and its measurements."""

    breadth: int | None
    table: list[dict[str, Any]]
    early: EarlyStop | None
    early_table: list[dict[str, Any]]


def tune_index(  # noqa: ANN001 - a faiss.Index
    tmp: Path,
    index,
    vectors: np.ndarray,
    exact: ExactTopK | None,
    plan: IndexPlan,
    config: TuningConfig,
    show_progress: bool,
    clock: StageClock,
) -> Tuned:
    """Tune the search breadth (unless ``config`` fixes it) and, for IVF indexes, early
    stop, on the queries of ``exact`` (None: nothing to tune, an exact index); a stage
    graph it chose is written to ``tmp``."""
    if exact is None:
        return Tuned(config.nprobe, [], None, [])
    targets = (config.target_recall, config.target_top1)
    with clock.stage("tune nprobe"):
        grid = list(EF_SEARCH_GRID) if plan.graph else nprobe_grid(plan.nlist)
        tuned = tune_breadth(index, vectors, exact, grid, config.nprobe, targets, plan.rerank,
                             show_progress, plan.spill)  # fmt: skip
    if not (config.early_stop and plan.nlist and not plan.graph):
        return Tuned(tuned.breadth, tuned.table, None, [])
    with clock.stage("tune early stop"):
        stages = _stage_graph(index, config.stage_graph)
        early, early_table = tune_early_stop(
            index, vectors, exact, tuned.breadth, nprobe_grid(plan.nlist), targets[1],
            plan.rerank, plan.spill, stages, tuned.top1,
        )  # fmt: skip
        if early is not None and stages is not None:
            import faiss

            early = replace(early, graph_ef_search=STAGE_GRAPH_EF)
            faiss.write_index(stages, str(tmp / STAGE_GRAPH_FILE))
    return Tuned(tuned.breadth, tuned.table, early, early_table)


def _stage_graph(index, wanted: bool | None):  # noqa: ANN001, ANN202 - faiss objects
    """The early-stop stage graph for IVF ``index`` (:func:`centroid_graph`), or None:
    ``wanted`` None means from ``STAGE_GRAPH_MIN_NLIST`` lists on. Only a flat coarse
    quantizer gets one."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    if not isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat):
        return None
    if not (ivf.nlist >= STAGE_GRAPH_MIN_NLIST if wanted is None else wanted):
        return None
    return centroid_graph(ivf, STAGE_GRAPH_EF, STAGE_GRAPH_EF_CONSTRUCTION)


def typo_queries(
    tmp: Path,
    encoder: Encoder,
    lexical: LexicalSettings | None,
    settings: NormalizerSettings,
    seed: int,
) -> np.ndarray:
    """Encode one-letter-typo versions of up to 1000 of the catalog's texts, float32 (q, d).

    Texts a typo cannot change (codes, numbers) are skipped: they would inflate the recall.
    """
    texts = StringTable(tmp, "texts")
    rng = random.Random(seed)
    rows = rng.sample(range(len(texts)), min(TUNING_QUERIES * 4, len(texts)))
    queries: list[str] = []
    for row in rows:
        text = texts[row][:MAX_TEXT_CHARS]
        typo = normalize_text(one_letter_typo(text, rng), settings)
        if typo and typo != normalize_text(text, settings):
            queries.append(typo)
        if len(queries) == TUNING_QUERIES:
            break
    return featurize(queries or [normalize_text(texts[0], settings) or " "], encoder, lexical)
