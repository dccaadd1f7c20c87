"""Upstream's own benchmark catalog, side by side: products_mcc, names and typo splits.

As upstream describes it (``tests/data`` copy of its ``products_mcc.csv``): aliases shared
by several entities or equal to the id are dropped; 120 entities are indexed (the first
120 rows; our reading, the exact selection is not published) and a seeded 40 of them
queried. The *names* split queries their names as they are; the
*typo* split perturbs the last indexed text of each (remove a parenthetical, "&" -> "and",
keep the first clause, drop the middle character of the longest word of 5+ letters).
Every system answers the same queries in one process: top-1 accuracy per split and
queries per second of one bulk call of the 40 queries (median of repeats).
Upstream published 23,622 q/s, top-1 0.95 (names) and 0.725 (typo) with potion-8m.

    python benchmarks/upstream_splits.py
"""

from __future__ import annotations

import random
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import batch_qps, markdown_table, pin_threads, timed, write_results

THREADS = pin_threads(2)

import systems  # noqa: E402
from harness import as_entities, test_catalog, unique_aliases  # noqa: E402

ENTITIES, QUERIES, SEED, REPEATS = 120, 40, 0, 200
PUBLISHED = {"qps": 23_622, "names": 0.95, "typo": 0.725}


def split_catalog() -> tuple[list[tuple[str, str, list[str]]], list[tuple[str, str, list[str]]]]:
    """(indexed entities, queried entities) as (id, name, aliases), seeded."""
    rows = test_catalog("products_mcc")
    aliases = unique_aliases(rows, str.lower)
    entities = [(row["id"], row["name"], kept) for row, kept in zip(rows, aliases, strict=True)]
    indexed = entities[:ENTITIES]  # catalog order, as upstream's benchmark loads it
    return indexed, random.Random(SEED).sample(indexed, QUERIES)


def perturb(text: str) -> str:
    """Upstream's held-out perturbation of an indexed text (see the module docstring)."""
    text = re.sub(r"\s*\([^)]*\)", "", text).replace("&", "and")
    text = re.split(r"[,;]", text)[0].strip()
    words = text.split()
    longest = max((w for w in words if len(w) >= 5 and w.isalpha()), key=len, default=None)
    if longest:
        cut = longest[: len(longest) // 2] + longest[len(longest) // 2 + 1 :]
        text = text.replace(longest, cut, 1)
    return text


def our_system(indexed: list[tuple[str, str, list[str]]], folder: Path) -> systems.System:
    """This library's default artifact (auto: flat at this size) as a System."""
    from novelentitymatcher_faiss import build_index

    setup_s, index = timed(lambda: build_index(as_entities(indexed), folder / "ours",
                                               show_progress=False))  # fmt: skip
    return systems.library("this library (auto)", index, exact=True, setup_s=setup_s)


def main() -> int:
    from novelentitymatcher_faiss import load_encoder

    indexed, queried = split_catalog()
    splits = {
        "names": ([name for _, name, _ in queried], [i for i, _, _ in queried]),
        "typo": ([perturb((name, *aliases)[-1]) for _, name, aliases in queried],
                 [i for i, _, _ in queried]),
    }  # fmt: skip
    model_path = load_encoder("potion-8m", show_progress=False).path
    catalog = systems.encode_catalog(indexed, model_path)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        made = [lambda: our_system(indexed, Path(tmp)), lambda: systems.upstream(catalog),
                lambda: systems.vicinity(catalog, "basic"),
                lambda: systems.vicinity(catalog, "faiss", index_type="flat"),
                lambda: systems.floor(catalog)]  # fmt: skip
        for make in made:
            system = make()
            row: dict[str, Any] = {"system": system.name}
            for split, (texts, truth) in splits.items():
                ids, _ = system.top(texts, 1)
                row[split] = statistics.fmean(float(a == b) for a, b in zip(ids[:, 0], truth,
                                                                               strict=True))
            texts = splits["names"][0]
            row["qps"] = batch_qps(system.batch, texts, REPEATS, warm=len(texts))
            results.append(row)
            print(f"  {row['system']:<28} names {row['names']:.3f} typo {row['typo']:.3f} "
                  f"{row['qps']:,.0f} q/s", flush=True)  # fmt: skip
    doc = {"benchmark": "upstream-splits", "entities": ENTITIES, "queries": QUERIES,
           "seed": SEED, "published_upstream": PUBLISHED, "results": results,
           "typo_queries": splits["typo"][0]}  # fmt: skip
    table = markdown_table(["system", "top-1 names", "top-1 typo", "bulk q/s (40 queries)"],
                           [[r["system"], f"{r['names']:.3f}", f"{r['typo']:.3f}",
                             f"{r['qps']:,.0f}"] for r in results]
                           + [["upstream, as published", f"{PUBLISHED['names']:.3f}",
                               f"{PUBLISHED['typo']:.3f}", f"{PUBLISHED['qps']:,}"]])  # fmt: skip
    markdown = "\n".join(["# Upstream's products_mcc splits\n", __doc__.split("\n\n")[1] + "\n",
                          table])  # fmt: skip
    write_results("upstream-splits", doc, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
