"""Training examples as aliases: held-out top-1 with and without them, head-only training.

The cheapest use of labelled examples is to add each one to the index as a text of its
entity. This compares, per fold of ``holdout_split``: zero-shot potion-8m; the alias
baseline (potion-8m built with the training texts as aliases); and
``train_index(mode="head-only")`` on potion-8m (static, kept as it is: the body stays
frozen) and on mpnet, without and with ``example_aliases``, each with
the index, hybrid and head scorers. Every row is also scored on one-letter typos of the
entities without examples. Two tasks:

- ``countries``: the country catalog and upstream's labelled variants (``tests/data``);
- ``nicknames``: English given names (the ``nicknames`` package's hand-curated list,
  Apache-2.0), each canonical name an entity and each nickname that belongs to one name
  only (and is not itself a canonical name) an example of it ("bobby" -> Robert); half of
  each name's nicknames are held out per fold.

    python benchmarks/alias_bench.py [--task countries|nicknames] [--folds 0 1 2]
        [--base-models potion-8m mpnet]
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


def nickname_task(workdir: Path) -> tuple[Path, list[dict[str, str]]]:
    """The nicknames task: a catalog CSV of canonical given names written to ``workdir``
    and the examples ``[{"text": nickname, "label": name}]`` of the nicknames that belong
    to one name only and are not names themselves."""
    import csv

    from nicknames import with_names_csv_path

    with with_names_csv_path() as path, open(path, encoding="utf-8") as handle:
        pairs = [(row["name1"], row["name2"]) for row in csv.DictReader(handle)
                 if row["relationship"] == "has_nickname"]  # fmt: skip
    names = sorted({name for name, _ in pairs})
    canonical = set(names)
    owners: dict[str, set[str]] = {}
    for name, nickname in pairs:
        owners.setdefault(nickname, set()).add(name)
    examples = [{"text": nickname, "label": next(iter(owner))}
                for nickname, owner in sorted(owners.items())
                if len(owner) == 1 and nickname not in canonical]  # fmt: skip
    catalog = workdir / "given-names.csv"
    with open(catalog, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "name", "aliases"])
        writer.writerows([name, name.title(), ""] for name in names)
    return catalog, examples


def fold_rows(
    fold: int, base_models: list[str], workdir: Path, task: str
) -> dict[str, dict[str, float]]:
    """Held-out and other-entity top-1 of every system on one fold of ``task``."""
    if task == "nicknames":
        catalog, examples, fraction = *nickname_task(workdir), 0.5
    else:
        catalog, examples, fraction = CATALOG, TRAINING, 1 / 3
    ids = [entity["id"] for entity in read_catalog(catalog)]
    examples = check_training_data(examples, ids)
    train, held = holdout_split(examples, fraction, exclude=catalog_texts(catalog), fold=fold)
    others = other_entity_typos(catalog, {row["label"] for row in train}, fold)
    out: dict[str, dict[str, float]] = {}

    def score(label: str, scorer: Any, seconds: float) -> None:
        out[label] = {"held_out": accuracy(scorer, held)[0],
                      "others": accuracy(scorer, others)[0], "seconds": seconds}  # fmt: skip

    common = {"show_progress": False, "overwrite": True}
    seconds, index = timed(lambda: build_index(catalog, workdir / "zero", **common))
    score("zero-shot potion-8m", index, seconds)

    def aliased() -> Any:
        aliased_catalog, _ = with_examples(catalog, train, NormalizerSettings())
        return build_index(aliased_catalog, workdir / "alias", **common)

    seconds, index = timed(aliased)
    score("alias baseline: potion-8m + examples as aliases", index, seconds)
    for base_model in base_models:
        for with_aliases in (False, True):
            seconds, index = timed(lambda a=with_aliases, m=base_model: train_index(
                catalog, train, workdir / f"head-{m}-{a}", model=m, mode="head-only",
                example_aliases=a, **common))  # fmt: skip
            suffix = "examples as aliases" if with_aliases else "no aliases"
            for name in ("index", "hybrid", "head"):
                score(f"head-only {base_model}, {suffix} ({name})", scorer_for(index, name),
                      seconds)  # fmt: skip
    print(f"fold {fold}: {len(train)} train, {len(held)} held out", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--base-models", nargs="+", default=["potion-8m", "mpnet"],
                        help="bodies of the head-only rows (static ones stay static)")
    parser.add_argument("--task", choices=("countries", "nicknames"), default="countries")
    args = parser.parse_args(argv)
    info = environment(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        folds = [fold_rows(fold, args.base_models, Path(tmp), args.task) for fold in args.folds]
    labels = list(folds[0])
    table = [[label, *[f"{f[label]['held_out']:.3f}" for f in folds],
              f"{mean(f[label]['held_out'] for f in folds):.3f}",
              f"{mean(f[label]['others'] for f in folds):.3f}",
              f"{mean(f[label]['seconds'] for f in folds):.1f}"] for label in labels]  # fmt: skip
    headers = ["system", *[f"held-out top-1, fold {f}" for f in args.folds], "mean",
               "other entities, typo top-1 (mean)", "build/train s (mean)"]
    command = "python benchmarks/alias_bench.py" + (
        f" --task {args.task}" if args.task != "countries" else "")
    about = {"countries": "Countries (tests/data), upstream's labelled variants",
             "nicknames": "English given names and their nicknames (the `nicknames` package), "
                          "half of each name's nicknames"}[args.task]  # fmt: skip
    text = (f"# Training examples as aliases ({args.task})\n\n`{command}`\n\n{about}, held "
            "out per fold by `holdout_split`.\n\n" + markdown_table(headers, table))
    name = "alias" if args.task == "countries" else f"alias-{args.task}"
    write_results(name, {**info, "task": args.task, "folds": folds}, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
