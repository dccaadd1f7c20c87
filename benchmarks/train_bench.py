"""Retraining: held-out top-1 accuracy and queries/s, zero-shot against fine-tuned.

Rows: zero-shot potion-8m (dense only, and with the lexical channel that ``build_index``
adds by default), zero-shot base model (mpnet), the SetFit fine-tuned base model (the index
alone, the hybrid scorer that ``Matcher`` uses by default after training, and the classifier
head alone; trained artifacts carry the lexical channel, as built ones do), the fine-tuned
model dense-only (index and hybrid), and the model2vec
static model distilled from the fine-tuned body (index, hybrid, head). Besides the held-out
variants, every row is scored on one-letter typos of the names of the entities that have no
training examples (a scorer that leans on the head must not pull those away).

Data: ``tests/data/country_training_data.csv`` (upstream's labelled country variants) against
``tests/data/countries.csv`` (ISO 3166-1 from pycountry, see scripts/make_country_catalog.py).
Held out: ``holdout_split`` (per label, a third of the rows ordered by the sha256 of their
text, never a text that is verbatim in the catalog; ``--fold 1`` or ``2`` holds out the next
third, for cross-validation). With ``--holdout FILE`` (text,label) the
model trains on every row of the training file and is scored on FILE instead.

The distilled row distills the fine-tuned model of the row above it
(``train_index(model=<its bundled model folder>, mode="head-only", distill=True)``): what
``train_index(..., distill=True)`` does after training, without training twice.

Training and distillation run torch on ``--train-threads`` threads (1 by default: on a
shared two-core machine two threads made each step several times slower).

Queries/s: one query per call (``match(text)`` over the held-out texts, the latency a service
sees) and batches of 256, median of repeats, after a warm-up that loads the model.

    python benchmarks/train_bench.py [--quick] [--holdout FILE] [--max-steps N] [--fold K]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    REPO_DIR,
    TEST_DATA,
    environment,
    faiss_threads,
    markdown_table,
    median_seconds,
    pin_threads,
    timed,
    write_results,
)

THREADS = pin_threads(2)

from novelentitymatcher_faiss import build_index  # noqa: E402
from novelentitymatcher_faiss.artifact.files import MODEL_DIR  # noqa: E402
from novelentitymatcher_faiss.index.catalog import read_catalog  # noqa: E402
from novelentitymatcher_faiss.models.encoders import load_encoder  # noqa: E402
from novelentitymatcher_faiss.query.scorers import HeadScorer, HybridScorer, load_head  # noqa: E402
from novelentitymatcher_faiss.text.normalize import NormalizerSettings, normalize_text  # noqa: E402
from novelentitymatcher_faiss.text.perturb import one_letter_typo  # noqa: E402
from novelentitymatcher_faiss.train.training import (  # noqa: E402
    check_training_data,
    holdout_split,
    train_index,
)

BATCH = 256


def catalog_texts(catalog: Path) -> set[str]:
    """Normalized names and aliases of the catalog (never held out: every model gets them)."""
    settings = NormalizerSettings()
    return {
        normalize_text(text, settings)
        for entity in read_catalog(catalog)
        for text in (entity["name"], *entity["aliases"])
    }


def accuracy(scorer, held: list[dict[str, str]]) -> tuple[float, list[str]]:  # noqa: ANN001
    """Top-1 accuracy of ``scorer.match`` (no threshold) and the texts it got wrong."""
    hits = scorer.match([row["text"] for row in held], top_k=1, threshold=None)
    wrong = [
        row["text"]
        for row, hit in zip(held, hits, strict=True)
        if not hit or hit["id"] != row["label"]
    ]
    return 1 - len(wrong) / len(held), wrong


def other_entity_typos(catalog: Path, labels: set[str], seed: int) -> list[dict[str, str]]:
    """One-letter typos of the names of entities without training examples: queries the
    head knows nothing about (a scorer must not pull them to the labelled entities)."""
    rng = random.Random(seed)
    return [
        {"text": one_letter_typo(entity["name"], rng), "label": entity["id"]}
        for entity in read_catalog(catalog)
        if entity["id"] not in labels
    ]


def speed(scorer, texts: list[str], repeats: int) -> dict[str, float]:  # noqa: ANN001
    """Queries per second, one text per call and in batches of ``BATCH``.

    One text per call runs torch on one thread, as a latency-bound service would: with more,
    each of the model's small kernels waits on a thread barrier, which costs far more than
    it saves on short inputs (and much more again on a shared machine).
    """
    import torch

    scorer.match(texts[:8])  # warm-up: loads the encoder
    single_texts = texts[:200]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single, _ = median_seconds(lambda: [scorer.match(t) for t in single_texts], repeats)
    finally:
        torch.set_num_threads(threads)
    batch = (texts * (BATCH // len(texts) + 1))[:BATCH]
    batched, _ = median_seconds(lambda: scorer.match(batch), repeats)
    return {
        "qps_single": round(len(single_texts) / single, 1),
        "qps_batch": round(BATCH / batched, 1),
    }


def on_threads(threads: int, func: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds rounded to 0.1, result) of ``func()`` run with torch on ``threads`` threads;
    torch goes back to the pinned thread count after."""
    import torch

    torch.set_num_threads(threads)
    seconds, result = timed(func)
    torch.set_num_threads(int(THREADS["OMP_NUM_THREADS"]))
    return round(seconds, 1), result


def render_markdown(data: dict) -> str:
    """The Markdown report of a results dict (as written to ``results/train.json``)."""
    rows, settings, counts = data["rows"], data["settings"], data["data"]
    held = counts["held_out"]
    table = markdown_table(
        ["model", "held-out top-1", "other entities, typo top-1", "q/s (1 per call)",
         f"q/s (batch {settings['batch']})"],
        [
            [
                row["model"],
                f"{held - len(row['wrong'])}/{held} = {(held - len(row['wrong'])) / held:.1%}",
                f"{row['others_typo_top1']:.1%}" if "others_typo_top1" in row else "-",
                f"{row['qps_single']:.0f}",
                f"{row['qps_batch']:.0f}",
            ]
            for row in rows
        ],
    )
    gains = markdown_table(
        ["comparison", "top-1 points / speed-up"],
        [[key, value] for key, value in data["summary"].items()],
    )
    sweep = markdown_table(
        ["hybrid weight (fine-tuned model)", "held-out top-1", "other entities, typo top-1"],
        [[row["weight"], f"{row['top1']:.1%}", f"{row['others_typo_top1']:.1%}"]
         for row in data.get("hybrid_weight_sweep", [])],
    )  # fmt: skip
    tuned = next(row for row in rows if "steps" in row)
    static = next(row for row in rows if "distill_seconds" in row)
    machine = data["machine"]
    return (
        f"# Retraining benchmark\n\n`{data['command']}`\n\n"
        f"{counts['train_examples']} training examples, {held} held-out variants, "
        f"{counts['entities']} countries; {settings['base_model']} fine-tuned for "
        f"{tuned['steps']} steps ({tuned['train_seconds']} s, torch on "
        f"{settings['train_threads']} thread(s)); distillation {static['distill_seconds']} s. "
        f"*Other entities*: one-letter typos of the names of the "
        f"{counts.get('other_entity_typos', '?')} countries without training examples.\n\n"
        f"{table}\n{gains}\n{sweep}\nMachine: {machine['cpu_model']}, "
        f"{machine['usable_cores']} cores (shared with other jobs while measured).\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=TEST_DATA / "countries.csv")
    parser.add_argument("--training", type=Path, default=TEST_DATA / "country_training_data.csv")
    parser.add_argument("--holdout", type=Path, default=None, help="score on this file instead")
    parser.add_argument("--base-model", default="mpnet")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fold", type=int, default=0, help="which third is held out (0-2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--train-threads", type=int, default=1, help="torch threads while training/distilling"
    )
    parser.add_argument("--quick", action="store_true", help="minilm, 20 steps, 1 repeat")
    parser.add_argument("--name", default=None, help="results file name (default train[-quick])")
    args = parser.parse_args(argv)
    if args.quick:
        args.base_model, args.max_steps, args.repeats = "minilm", args.max_steps or 20, 1
    name = args.name or ("train-quick" if args.quick else "train")

    info = environment({**THREADS, "faiss": faiss_threads(2)})
    ids = [entity["id"] for entity in read_catalog(args.catalog)]
    examples = check_training_data(args.training, ids)
    if args.holdout:
        train, held = examples, check_training_data(args.holdout, ids)
    else:
        train, held = holdout_split(examples, exclude=catalog_texts(args.catalog), fold=args.fold)
    print(f"{len(train)} training examples, {len(held)} held out, {len(ids)} entities")
    texts = [row["text"] for row in held]
    rows: list[dict] = []

    others = other_entity_typos(args.catalog, {row["label"] for row in train}, args.seed)

    def record(label: str, scorer, **extra) -> None:  # noqa: ANN001, ANN003
        acc, wrong = accuracy(scorer, held)
        other, _ = accuracy(scorer, others)
        row = {"model": label, "top1": round(acc, 4), "others_typo_top1": round(other, 4),
               **speed(scorer, texts, args.repeats)}  # fmt: skip
        row.update(extra, wrong=wrong)
        rows.append(row)
        print(
            f"{label:<48} top-1 {acc:6.1%}  others {other:6.1%}  {row['qps_single']:>8.1f} "
            f"q/s single  {row['qps_batch']:>8.1f} q/s batch",
            flush=True,
        )

    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        work = Path(tmp)
        for model, lexical in (("potion-8m", False), ("potion-8m", True), (args.base_model, False)):
            index = build_index(
                args.catalog, work / f"zs-{model}-{lexical}", model=model, lexical=lexical,
                show_progress=False,
            )  # fmt: skip
            label = f"zero-shot {model}" + (" + lexical (build default)" if lexical else "")
            record(label, index, mode="zero-shot", lexical=lexical)

        seconds, tuned = on_threads(args.train_threads, lambda: train_index(
            args.catalog, train, work / "tuned", model=args.base_model, mode="full",
            num_epochs=args.epochs, max_steps=args.max_steps, seed=args.seed,
            show_progress=True,
        ))  # fmt: skip
        steps = tuned.manifest.training["steps"]
        print(f"fine-tuned {args.base_model}: {steps} steps in {seconds} s")
        record(f"fine-tuned {args.base_model} (index)", tuned, mode="full", train_seconds=seconds,
               steps=steps)  # fmt: skip
        record(f"fine-tuned {args.base_model} (hybrid, default scorer)",
               HybridScorer(tuned, load_head(tuned)), mode="full")  # fmt: skip
        record(f"fine-tuned {args.base_model} (head scorer)", HeadScorer(tuned, load_head(tuned)),
               mode="full")  # fmt: skip
        sweep = [
            {"weight": weight,
             "top1": round(accuracy(HybridScorer(tuned, load_head(tuned), weight), held)[0], 4),
             "others_typo_top1": round(
                 accuracy(HybridScorer(tuned, load_head(tuned), weight), others)[0], 4)}
            for weight in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
        ]  # fmt: skip
        print("hybrid weight sweep:", sweep, flush=True)
        folder = tuned.path / MODEL_DIR
        dense_index = build_index(
            args.catalog, work / "tuned-dense", encoder=load_encoder(str(folder)),
            lexical=False, show_progress=False,
        )  # fmt: skip
        record(f"fine-tuned {args.base_model}, dense only (index)", dense_index, mode="full")
        record(f"fine-tuned {args.base_model}, dense only (hybrid)",
               HybridScorer(dense_index, load_head(tuned)), mode="full")  # fmt: skip

        seconds, static = on_threads(args.train_threads, lambda: train_index(
            args.catalog, train, work / "static", model=str(folder), mode="head-only",
            distill=True, seed=args.seed, show_progress=True,
        ))  # fmt: skip
        record(f"fine-tuned {args.base_model}, distilled (model2vec)", static, mode="distilled",
               distill_seconds=seconds)  # fmt: skip
        record(f"fine-tuned {args.base_model}, distilled (hybrid, default scorer)",
               HybridScorer(static, load_head(static)), mode="distilled")  # fmt: skip
        record(f"fine-tuned {args.base_model}, distilled (head scorer)",
               HeadScorer(static, load_head(static)), mode="distilled")  # fmt: skip

    dense, lexical = rows[0], rows[1]
    by_name = {row["model"]: row for row in rows}
    tuned_row = by_name[f"fine-tuned {args.base_model} (hybrid, default scorer)"]
    static_row = by_name[f"fine-tuned {args.base_model}, distilled (hybrid, default scorer)"]
    summary = {
        f"{row['model']} vs {base['model']}": round(100 * (row["top1"] - base["top1"]), 1)
        for row in rows[3:]
        for base in (dense, lexical)
    }
    summary["distilled speed-up, single query"] = round(
        static_row["qps_single"] / tuned_row["qps_single"], 1
    )
    summary["distilled speed-up, batch"] = round(
        static_row["qps_batch"] / tuned_row["qps_batch"], 1
    )
    for key, value in summary.items():
        print(f"{key}: {value:+.1f}" if "speed-up" not in key else f"{key}: {value}x")
    data = {
        **info,
        "command": "python benchmarks/train_bench.py " + " ".join(argv or sys.argv[1:]),
        "data": {
            "catalog": str(args.catalog.relative_to(REPO_DIR)),
            "training": str(args.training.relative_to(REPO_DIR)),
            "holdout": str(args.holdout) if args.holdout else f"holdout_split(fold={args.fold})",
            "train_examples": len(train),
            "held_out": len(held),
            "other_entity_typos": len(others),
            "entities": len(ids),
        },
        "settings": {
            "base_model": args.base_model,
            "epochs": args.epochs,
            "max_steps": args.max_steps,
            "seed": args.seed,
            "repeats": args.repeats,
            "train_threads": args.train_threads,
            "batch": BATCH,
        },
        "rows": rows,
        "hybrid_weight_sweep": sweep,
        "summary": summary,
    }
    markdown = render_markdown(data)
    write_results(name, data, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
