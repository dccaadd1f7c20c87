"""Build time against the raw floor, stage by stage, in one process.

Per run, in alternating order:

* ``library``: ``build_index(catalog, index_type=KIND)``, its ``build_stages`` (encode
  catalog, tuning queries, train, add, exact top 10 for tuning, tune nprobe, early stop,
  write);
* ``floor``: what any model2vec + FAISS pipeline does at least: read the CSV, model2vec
  ``encode`` every name and alias (potion-8m, 256-d), ``normalize_L2``, train the same
  FAISS factory on a sample of the size the library trains on, ``add`` every vector and
  search the same number of typo'd queries once at the library's tuned nprobe;
* ``floor at index dims``: the same FAISS train, add and search on the library's own
  stored vectors (dense + lexical, the index's dimension), the floor's encode time added:
  how much of the gap is the wider vectors.

Ratios are medians over ``--runs`` of library / floor, each run's pair measured back to back.

    python benchmarks/build_bench.py [--size 100k] [--runs 3] [--index auto]
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import environment, faiss_threads, markdown_table, pin_threads, write_results


def floor_texts(path: Path) -> list[str]:
    """Every name and alias of a catalog CSV (``id,name,aliases``), as written."""
    with open(path, encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle)
        next(rows)
        return [text for row in rows for text in (row[1], *row[2].split("|")) if text]


def faiss_part(vectors: Any, factory: str, sample: int, queries: Any, nprobe: int | None
               ) -> dict[str, float]:  # fmt: skip
    """Train ``factory`` on ``sample`` seeded rows of float32 ``vectors`` (n, d), add them
    all, search float32 ``queries`` (q, d) at ``nprobe``: seconds per stage."""
    import faiss
    import numpy as np

    out: dict[str, float] = {}
    started = time.perf_counter()
    index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rows = np.sort(np.random.default_rng(0).choice(len(vectors), sample, replace=False))
        index.train(np.ascontiguousarray(vectors[rows]))
    out["train"] = time.perf_counter() - started
    started = time.perf_counter()
    index.add(vectors)
    out["add"] = time.perf_counter() - started
    started = time.perf_counter()
    if nprobe:
        faiss.extract_index_ivf(index).nprobe = nprobe
    index.search(queries, 10)
    out["search"] = time.perf_counter() - started
    return out


def floor_run(catalog: Path, model_path: Path, factory: str, sample: int, query_texts: list[str],
              nprobe: int | None) -> dict[str, float]:  # fmt: skip
    """One floor build (module docstring): seconds per stage and ``total``."""
    import faiss
    from model2vec import StaticModel

    started = time.perf_counter()
    texts = floor_texts(catalog)
    read_s = time.perf_counter() - started
    started = time.perf_counter()
    model = StaticModel.from_pretrained(model_path)
    vectors = model.encode(texts, batch_size=4096).astype("float32")
    faiss.normalize_L2(vectors)
    queries = model.encode(query_texts).astype("float32")
    faiss.normalize_L2(queries)
    stages = {"read catalog": read_s, "encode": time.perf_counter() - started}
    stages.update(faiss_part(vectors, factory, sample, queries, nprobe))
    stages["total"] = sum(stages.values())
    return stages


def library_run(catalog: Path, out: Path, kind: str) -> dict[str, Any]:
    """One library build: its manifest's stages, total and index settings."""
    from novelentitymatcher_faiss import build_index

    shutil.rmtree(out, ignore_errors=True)
    index = build_index(catalog, out, index_type=kind, show_progress=False, keep_vectors=True)
    manifest = index.manifest.to_dict()
    return {"stages": manifest["build_stages"], "total": manifest["build_seconds"],
            "index": manifest["index"], "dim": manifest["index_dim"],
            "vectors": manifest["counts"]["vectors"]}  # fmt: skip


def same_dims_run(artifact: Path, factory: str, sample: int, queries: int, nprobe: int | None,
                  encode_s: float) -> dict[str, float]:  # fmt: skip
    """FAISS train/add/search on the artifact's stored vectors (``queries`` seeded rows of
    them as queries), plus ``encode_s``: seconds per stage and ``total``."""
    import numpy as np

    vectors = np.ascontiguousarray(np.load(artifact / "vectors.npy", mmap_mode="r"))
    rows = np.sort(np.random.default_rng(1).choice(len(vectors), queries, replace=False))
    stages = {"encode": encode_s,
              **faiss_part(vectors, factory, sample, vectors[rows].copy(), nprobe)}  # fmt: skip
    stages["total"] = sum(stages.values())
    return stages


def median_stages(runs: list[dict[str, float]], order: tuple[str, ...] = ()) -> dict[str, float]:
    """Per stage, the median over runs (stages missing from a run count as 0), stages named
    in ``order`` first, in that order."""
    seen = {name for run in runs for name in run}
    names = [name for name in order if name in seen]
    names += [name for run in runs for name in run if name not in names]
    return {name: statistics.median(run.get(name, 0.0) for run in runs) for name in names}


def one_pair(
    run: int,
    catalog: Path,
    model_path: Path,
    artifact: Path,
    kind: str,
    query_texts: list[str],
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    """Library and floor builds back to back: the library first on even runs, the floor
    first on odd ones (taking its factory and nprobe from ``previous``, the last run's
    library build: the build is seeded, so they do not change)."""
    from novelentitymatcher_faiss.index.indexing import training_sample_size

    library = library_run(catalog, artifact, kind) if run % 2 == 0 or previous is None else None
    index = (library or previous)["index"]
    vectors = (library or previous)["vectors"]
    sample = min(vectors, training_sample_size(index["factory"], 256))
    floor = floor_run(catalog, model_path, index["factory"], sample, query_texts, index["nprobe"])
    library = library or library_run(catalog, artifact, kind)
    sample = min(vectors, training_sample_size(index["factory"], library["dim"]))
    same = same_dims_run(artifact, index["factory"], sample, len(query_texts), index["nprobe"],
                         floor["encode"])  # fmt: skip
    return {"library": library, "floor": floor, "same_dims": same}


def report(args: argparse.Namespace, info: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """Print and write ``results/build-SIZE-KIND.{md,json}``."""
    from novelentitymatcher_faiss.index.build import BUILD_STAGES

    library = median_stages([pair["library"]["stages"] for pair in runs], BUILD_STAGES)
    library["total"] = statistics.median(pair["library"]["total"] for pair in runs)
    floor = median_stages([pair["floor"] for pair in runs])
    same = median_stages([pair["same_dims"] for pair in runs])
    ratio = statistics.median(p["library"]["total"] / p["floor"]["total"] for p in runs)
    ratio_same = statistics.median(p["library"]["total"] / p["same_dims"]["total"] for p in runs)
    index = runs[-1]["library"]["index"]
    rows = [[name, f"{value:.2f}"] for name, value in library.items() if name != "total"]
    floor_rows = [[f"floor: {name}", f"{value:.2f}"] for name, value in floor.items()
                  if name != "total"]  # fmt: skip
    same_rows = [[f"floor at index dims: {name}", f"{value:.2f}"] for name, value in same.items()
                 if name != "total"]  # fmt: skip
    totals = [["**library total**", f"**{library['total']:.2f}**"],
              ["**floor total**", f"**{floor['total']:.2f}**"],
              ["**floor at index dims total**", f"**{same['total']:.2f}**"],
              ["library / floor (median of per-run ratios)", f"{ratio:.2f}x"],
              ["library / floor at index dims", f"{ratio_same:.2f}x"]]  # fmt: skip
    name = f"build-{args.size.lower()}-{args.index}"
    markdown = (
        f"# Build time against the floor ({args.size}, {args.index})\n\n"
        f"`python benchmarks/build_bench.py --size {args.size} --index {args.index} "
        f"--runs {args.runs}`; medians of {args.runs} runs, seconds. Index "
        f"`{index['factory']}`, nprobe {index['nprobe']}, "
        f"{runs[-1]['library']['vectors']:,} vectors of {runs[-1]['library']['dim']} dims "
        f"(the floor's: 256).\n\n"
        + markdown_table(["stage", "seconds"], rows + floor_rows + same_rows + totals)
    )
    write_results(name, {**info, "size": args.size, "index_type": args.index, "runs": runs,
                         "median": {"library": library, "floor": floor, "same_dims": same},
                         "ratio": ratio, "ratio_same_dims": ratio_same}, markdown)  # fmt: skip
    print(markdown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="100k", help="catalog size (make_catalog.py)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--index", default="auto")
    args = parser.parse_args(argv)
    threads = pin_threads(2)
    import make_catalog
    from harness import catalog_path

    from novelentitymatcher_faiss.index.tuning import TUNING_QUERIES
    from novelentitymatcher_faiss.models.sources import fetch_model
    from novelentitymatcher_faiss.text.perturb import one_letter_typo

    info = environment(threads, faiss_threads=faiss_threads(2))
    catalog = catalog_path(make_catalog.parse_size(args.size), make_catalog.DEFAULT_SEED)
    model_path = fetch_model("potion-8m", show_progress=False)
    rng = random.Random(0)
    texts = floor_texts(catalog)
    query_texts = [one_letter_typo(rng.choice(texts), rng) for _ in range(TUNING_QUERIES)]
    work = Path(tempfile.mkdtemp(prefix="build-bench-"))
    runs: list[dict[str, Any]] = []
    try:
        for run in range(args.runs):
            previous = runs[-1]["library"] if runs else None
            pair = one_pair(run, catalog, model_path, work / "artifact", args.index,
                            query_texts, previous)  # fmt: skip
            runs.append(pair)
            print(f"run {run + 1}: library {pair['library']['total']:.1f} s, floor "
                  f"{pair['floor']['total']:.1f} s, floor at index dims "
                  f"{pair['same_dims']['total']:.1f} s", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(args, info, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
