"""Training examples as aliases: held-out top-1 with and without them, head-only training.

The cheapest use of labelled examples is to add each one to the index as a text of its
entity. This compares, on the country catalog and upstream's labelled variants
(``tests/data``), per fold of ``holdout_split``: zero-shot potion-8m; the alias baseline
(potion-8m built with the training texts as aliases); and ``train_index(mode="head-only")``
on mpnet without and with ``example_aliases``, each with the index, hybrid and head
scorers. Every row is also scored on one-letter typos of the entities without examples.

    python benchmarks/alias_bench.py [--folds 0 1 2] [--base-model mpnet]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from statistics import mean
from typing import Any

from common import TEST_DATA, environment, markdown_table, pin_threads, timed, write_results

THREADS = pin_threads(2)

from train_bench import accuracy, catalog_texts, other_entity_typos  # noqa: E402

from novelentitymatcher_faiss import build_index  # noqa: E402
from novelentitymatcher_faiss.index.catalog import read_catalog  # noqa: E402
from novelentitymatcher_faiss.query.scorers import scorer_for  # noqa: E402
from novelentitymatcher_faiss.text.normalize import NormalizerSettings  # noqa: E402
from novelentitymatcher_faiss.train.training import (  # noqa: E402
    check_training_data,
    holdout_split,
    train_index,
    with_examples,
)

CATALOG, TRAINING = TEST_DATA / "countries.csv", TEST_DATA / "country_training_data.csv"


def fold_rows(fold: int, base_model: str, workdir: Path) -> dict[str, dict[str, float]]:
    """Held-out and other-entity top-1 of every system on one fold."""
    ids = [entity["id"] for entity in read_catalog(CATALOG)]
    examples = check_training_data(TRAINING, ids)
    train, held = holdout_split(examples, exclude=catalog_texts(CATALOG), fold=fold)
    others = other_entity_typos(CATALOG, {row["label"] for row in train}, fold)
    out: dict[str, dict[str, float]] = {}

    def score(label: str, scorer: Any, seconds: float) -> None:
        out[label] = {"held_out": accuracy(scorer, held)[0],
                      "others": accuracy(scorer, others)[0], "seconds": seconds}  # fmt: skip

    common = {"show_progress": False, "overwrite": True}
    seconds, index = timed(lambda: build_index(CATALOG, workdir / "zero", **common))
    score("zero-shot potion-8m", index, seconds)

    def aliased() -> Any:
        catalog, _ = with_examples(CATALOG, train, NormalizerSettings())
        return build_index(catalog, workdir / "alias", **common)

    seconds, index = timed(aliased)
    score("alias baseline: potion-8m + examples as aliases", index, seconds)
    for with_aliases in (False, True):
        seconds, index = timed(lambda a=with_aliases: train_index(
            CATALOG, train, workdir / f"head-{a}", model=base_model, mode="head-only",
            example_aliases=a, **common))  # fmt: skip
        suffix = "examples as aliases" if with_aliases else "no aliases"
        for name in ("index", "hybrid", "head"):
            score(f"head-only {base_model}, {suffix} ({name})", scorer_for(index, name), seconds)
    print(f"fold {fold}: {len(train)} train, {len(held)} held out", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--base-model", default="mpnet")
    args = parser.parse_args(argv)
    info = environment(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        folds = [fold_rows(fold, args.base_model, Path(tmp)) for fold in args.folds]
    labels = list(folds[0])
    table = [[label, *[f"{f[label]['held_out']:.3f}" for f in folds],
              f"{mean(f[label]['held_out'] for f in folds):.3f}",
              f"{mean(f[label]['others'] for f in folds):.3f}",
              f"{mean(f[label]['seconds'] for f in folds):.1f}"] for label in labels]  # fmt: skip
    headers = ["system", *[f"held-out top-1, fold {f}" for f in args.folds], "mean",
               "other entities, typo top-1 (mean)", "build/train s (mean)"]
    command = "python benchmarks/alias_bench.py" + (
        f" --base-model {args.base_model}" if args.base_model != "mpnet" else "")
    text = (f"# Training examples as aliases\n\n`{command}`\n\n"
            "Countries (tests/data), upstream's labelled variants, held out per fold by "
            "`holdout_split`.\n\n" + markdown_table(headers, table))
    write_results("alias", {**info, "folds": folds}, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
