"""Train the lexical channel's cross-language name map and write it into the package.

Data: Unicode CLDR display names of countries (two-letter territory codes) and languages
(two- or three-letter codes), read through the pinned ``babel`` package, in every
Latin-script CLDR locale except English, the 20 locales of the lexical benchmark
(``benchmarks/lexical_bench.py``) and their near copies (``no``, ``nn``, ``bs``, ``gsw``), so
the benchmark measures languages the map never saw. Currency and script names are not
used either: the benchmark keeps them as held-out kinds of entity.

Model: a linear map (``dim_in`` hashed n-gram buckets -> ``dim_out`` floats) from the
library's own n-gram counts (``lexical_vectors`` with ``dim_in`` buckets, no map), trained
with a softmax over all English names (temperature 0.05) to put each foreign name, and a
one-letter typo of it, nearest its English name; English names with a typo are positives
too, so typo robustness is kept. 20% of the input n-grams are dropped at random each step.

    python scripts/train_name_map.py            # writes novelentitymatcher_faiss/text/data
    python scripts/train_name_map.py --hold-out-entities --out DIR        # a one-off check

``--hold-out-entities`` leaves out a fixed quarter of the entities (crc32 of the code) so
that the benchmark can be split into entities the map saw and entities it did not.
The weights are derived from CLDR data: Copyright (c) Unicode, Inc., Unicode License v3.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))
sys.path.insert(0, str(REPO_DIR / "benchmarks"))

from lexical_bench import LOCALES, entity_codes  # noqa: E402

from novelentitymatcher_faiss.artifact.files import sha256_file  # noqa: E402
from novelentitymatcher_faiss.text.lexical import (  # noqa: E402
    HASH_NAME,
    PHONETIC_FEATURES,
    LexicalSettings,
    fold,
    lexical_vectors,
)
from novelentitymatcher_faiss.text.namemap import CARD_VERSION, DATA_DIR, DEFAULT_MAP  # noqa: E402
from novelentitymatcher_faiss.text.normalize import normalize_text  # noqa: E402
from novelentitymatcher_faiss.text.perturb import one_letter_typo  # noqa: E402

NEAR_COPIES = ("en", "no", "nn", "bs", "gsw")
KINDS = ("territories", "languages")
DIM_IN, DIM_OUT = 2048, 128
EPOCHS, BATCH, LR, TEMPERATURE, DROPOUT = 60, 512, 3e-3, 0.05, 0.2


def is_held_out(code: str) -> bool:
    """The fixed quarter of entity codes that ``--hold-out-entities`` leaves out."""
    return zlib.crc32(code.encode()) % 4 == 0


def latin_locales() -> list[str]:
    """CLDR locales (no region) with over 200 territory names, 95% of their letters Latin."""
    from babel import Locale, localedata

    found = []
    for ident in sorted(localedata.locale_identifiers()):
        if "_" in ident:
            continue
        names = Locale.parse(ident).territories
        letters = [ch for ch in "".join(names.values()) if ch.isalpha()]
        latin = sum("LATIN" in unicodedata.name(ch, "") for ch in letters)
        if len(names) > 200 and letters and latin / len(letters) > 0.95:
            found.append(ident)
    return found


def training_pairs(locales: list[str], hold_out: bool) -> tuple[list[str], list[tuple[str, int]]]:
    """English names (targets) and (name in another language or typo'd, target) pairs."""
    from babel import Locale

    english, pairs = [], []
    tables = {loc: Locale(loc) for loc in locales}
    for kind in KINDS:
        names = getattr(Locale("en"), kind)
        for code in entity_codes(kind):
            if hold_out and is_held_out(code):
                continue
            english.append(names[code])
            for loc in locales:
                foreign = getattr(tables[loc], kind).get(code)
                if foreign and fold(foreign) != fold(names[code]):
                    pairs.append((foreign, len(english) - 1))
    rng = random.Random(1)
    typos = [(one_letter_typo(text, rng), target) for text, target in pairs if rng.random() < 0.5]
    typos += [(one_letter_typo(name, rng), t) for t, name in enumerate(english) for _ in range(3)]
    return english, pairs + typos


def train(english: list[str], pairs: list[tuple[str, int]]) -> np.ndarray:
    """float32 (DIM_IN, DIM_OUT) weights."""
    features = LexicalSettings(dim=DIM_IN, name_map=0.0)

    def vectors(texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(lexical_vectors([normalize_text(t) for t in texts], features))

    queries, targets = vectors([text for text, _ in pairs]), vectors(english)
    labels = torch.tensor([target for _, target in pairs])
    torch.manual_seed(0)
    weights = torch.nn.Parameter(torch.randn(DIM_IN, DIM_OUT) * 0.01)
    optimizer = torch.optim.AdamW([weights], lr=LR, weight_decay=0.0)
    normalize = torch.nn.functional.normalize
    for _ in tqdm(range(EPOCHS), desc="training name map", unit="epoch"):
        order = torch.randperm(len(pairs))
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            kept = queries[rows] * (torch.rand(len(rows), DIM_IN) >= DROPOUT)
            logits = normalize(kept @ weights, dim=1) @ normalize(targets @ weights, dim=1).T
            loss = torch.nn.functional.cross_entropy(logits / TEMPERATURE, labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return weights.detach().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="folder for the map files")
    parser.add_argument(
        "--hold-out-entities", action="store_true", help="leave a fixed quarter of the entities out"
    )
    args = parser.parse_args()
    import babel

    locales = [loc for loc in latin_locales() if loc not in set(LOCALES) | set(NEAR_COPIES)]
    english, pairs = training_pairs(locales, args.hold_out_entities)
    print(f"{len(english)} entities, {len(pairs)} pairs, {len(locales)} locales")
    weights = train(english, pairs).astype(np.float16)
    args.out.mkdir(parents=True, exist_ok=True)
    weights_file = args.out / f"{DEFAULT_MAP}.npy"
    np.save(weights_file, weights, allow_pickle=False)
    card = {
        "format_version": CARD_VERSION,
        "name": DEFAULT_MAP,
        "weights": weights_file.name,
        "sha256": sha256_file(weights_file),
        "dim_in": DIM_IN,
        "dim_out": DIM_OUT,
        "ngram_min": 2,
        "ngram_max": 3,
        "hash": HASH_NAME,
        "features": PHONETIC_FEATURES,
        "training": {
            "data": f"Unicode CLDR {babel.core.get_cldr_version()} via babel {babel.__version__}"
            ", Copyright (c) Unicode, Inc., Unicode License v3",  # fmt: skip
            "kinds": list(KINDS),
            "locales": locales,
            "entities": len(english),
            "pairs": len(pairs),
            "held_out_entities": args.hold_out_entities,
            "epochs": EPOCHS,
            "batch": BATCH,
            "lr": LR,
            "temperature": TEMPERATURE,
            "dropout": DROPOUT,
            "seed": 0,
        },  # fmt: skip
    }
    (args.out / f"{DEFAULT_MAP}.json").write_text(json.dumps(card, indent=1) + "\n")
    print(f"wrote {weights_file} and its card")


if __name__ == "__main__":
    main()
