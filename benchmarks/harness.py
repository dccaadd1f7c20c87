"""Shared benchmark data and measures: catalogs, typo queries, cached artifacts, recall.

The real-name catalogs of ``make_catalog.py`` (generated once under ``benchmarks/data``),
the CSV catalogs of ``tests/data``, seeded one-letter-typo queries, the artifacts of the
artifact benchmark (``benchmarks/data/artifacts``, rebuilt when the catalog or the
library's build-path sources change), and recall of a FAISS index against exact search.
"""

from __future__ import annotations

import csv
import hashlib
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import make_catalog
from common import DATA_DIR, TEST_DATA

MODEL = "potion-8m"
#: Seed of the artifact benchmark's typo queries (other benchmarks use it plus an offset).
QUERY_SEED = 7
Row = tuple[str, str, list[str]]
Entity = dict[str, Any]


def catalog_path(size: int, seed: int) -> Path:
    """The catalog CSV for ``size`` entities, generated if missing."""
    suffix = "" if seed == make_catalog.DEFAULT_SEED else f"-seed{seed}"
    path = DATA_DIR / f"names-{make_catalog.size_label(size)}{suffix}.csv"
    if not path.exists():
        started = time.perf_counter()
        make_catalog.write_catalog(path, size, seed)
        print(f"  generated {path.name} in {time.perf_counter() - started:.1f} s")
    return path


def read_catalog_rows(path: Path, step: int = 1) -> list[Row]:
    """(id, name, aliases) for every ``step``-th row of a catalog CSV (streamed)."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        return [(row[0], row[1], [a for a in row[2].split("|") if a])
                for number, row in enumerate(reader) if number % step == 0]  # fmt: skip


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


#: Library modules that never run during a build: changing them keeps built artifacts.
QUERY_ONLY_MODULES = frozenset({"cli.py", "match_index.py", "matcher.py", "train.py"})


def library_source_hash() -> str:
    """sha256 over the library's build-path sources: artifacts built by other code are rebuilt.

    Covers every module but :data:`QUERY_ONLY_MODULES`.
    """
    import novelentitymatcher_faiss

    root = Path(novelentitymatcher_faiss.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*.py") if p.name not in QUERY_ONLY_MODULES):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def typo_queries(
    rows: list[Row], count: int, seed: int
) -> tuple[list[str], list[str]]:
    """``count`` one-letter-typo versions of random entity names, and their entity ids."""
    from novelentitymatcher_faiss.text.perturb import one_letter_typo

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
    return DATA_DIR / "artifacts" / f"names-{label}{suffix}-{kind}"


def ensure_artifact(
    catalog: Path, stamp: dict[str, str], path: Path, kind: str, encoder: Any, rebuild: bool,
    reuse: bool = False,
) -> dict[str, Any]:
    """Build the artifact unless one exists with the same ``stamp``; return its figures.

    ``stamp`` (catalog and library source hashes) is stored in the manifest under
    ``"benchmark"``, so a changed catalog or library means a rebuild; with ``reuse`` an
    artifact of the same catalog built by other library sources is kept (the figures
    record which sources built it).
    """
    from novelentitymatcher_faiss import build_index
    from novelentitymatcher_faiss.artifact.manifest import read_manifest

    manifest = None
    if path.exists() and not rebuild:
        try:
            manifest = read_manifest(path).to_dict()
        except Exception:  # an unreadable leftover is simply rebuilt
            manifest = None
        built_by = (manifest or {}).get("benchmark") or {}
        same_catalog = built_by.get("catalog_sha256") == stamp["catalog_sha256"]
        if manifest and built_by != stamp and not (reuse and same_catalog):
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
        manifest = read_manifest(path).to_dict()
    info = manifest["index"]
    files = manifest["files"]
    index_bytes = files["index.faiss"]["size"]
    total = (
        sum(record["size"] for record in files.values()) + (path / "manifest.json").stat().st_size
    )
    tuning = info.get("nprobe_tuning") or info.get("ef_search_tuning") or []
    return {
        "requested": kind,
        "type": info["type"],
        "factory": info["factory"],
        "nlist": info.get("nlist") or None,
        "nprobe": info.get("nprobe"),
        "ef_search": info.get("ef_search"),
        "index_dim": manifest.get("index_dim", manifest["model"]["dim"]),
        "lexical": manifest.get("lexical"),
        "tuned_recall": tuning[-1] if tuning else None,
        "build_s": manifest["build_seconds"],
        "reused": reused,
        "built_by_library_sha256": (manifest.get("benchmark") or {}).get("library_sha256", "")[:16],
        "artifact_bytes": total,
        "index_bytes": index_bytes,
        "entities": manifest["counts"]["entities"],
        "vectors": manifest["counts"]["vectors"],
    }


def catalog_rows(size: int, seed: int = make_catalog.DEFAULT_SEED) -> list[Row]:
    """(id, name, aliases) of every row of the ``size``-entity real-name catalog."""
    return read_catalog_rows(catalog_path(size, seed))


def as_entities(rows: Iterable[Row], **columns: Callable[[str], Any]) -> list[Entity]:
    """``{"id", "name", "aliases"}`` dicts of (id, name, aliases) rows; each of ``columns``
    adds a metadata column, its value computed from the id."""
    return [{"id": i, "name": n, "aliases": a, **{k: f(i) for k, f in columns.items()}}
            for i, n, a in rows]  # fmt: skip


def existing_artifact(size: str, kind: str) -> Path | None:
    """The artifact benchmark's artifact of ``size`` (e.g. ``"1M"``) and ``kind``, or None
    (with a message saying how to build it) when it has not been built."""
    path = artifact_dir(make_catalog.parse_size(size), kind, make_catalog.DEFAULT_SEED)
    if path.exists():
        return path
    print(f"{path} is missing: run benchmarks/artifact_bench.py --sizes {size} first")
    return None


def read_csv(path: Path) -> list[dict[str, str]]:
    """Every row of a CSV file with a header, as dicts."""
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_catalog(name: str) -> list[dict[str, str]]:
    """The rows of ``tests/data/NAME.csv``."""
    return read_csv(TEST_DATA / f"{name}.csv")


def unique_aliases(rows: list[dict[str, str]], key: Callable[[str], str]) -> list[list[str]]:
    """Per CSV row (``id``, ``aliases`` joined by ``|``), its aliases that no other row has
    (compared by ``key``) and that differ from its id, as upstream's benchmark keeps them."""
    owners: dict[str, set[str]] = {}
    for row in rows:
        for alias in filter(None, row["aliases"].split("|")):
            owners.setdefault(key(alias), set()).add(row["id"])
    return [[a for a in filter(None, row["aliases"].split("|"))
             if len(owners[key(a)]) == 1 and a != row["id"]] for row in rows]  # fmt: skip


def search_recall(ix: Any, queries: Any, truth: Any, vectors: Any, nprobe: int,
                  **options: Any) -> dict[str, float]:  # fmt: skip
    """recall@1, R@10 (the exact top hit among the 10 returned) and 10-recall@10 of the
    library's ``search`` over FAISS index ``ix`` for float32 ``queries`` (q, d), against
    ``truth`` int64 (q, 10), the exact top-10 rows over float32 ``vectors`` (n, d);
    ``options``: ``search``'s (rerank, spill)."""
    from novelentitymatcher_faiss.index.search import recall_at_k, search

    _, found = search(ix, queries, 10, nprobe=nprobe, vectors=vectors, **options)
    _, first = search(ix, queries, 1, nprobe=nprobe, vectors=vectors, **options)
    return {"recall_at_1": recall_at_k(queries, first, truth[:, :1], vectors),
            "r_at_10": recall_at_k(queries, found, truth[:, :1], vectors),
            "recall_10_at_10": recall_at_k(queries, found, truth, vectors)}  # fmt: skip
