"""Dense-only against dense + lexical channel: top-1 on clean, typo and cross-language queries.

Query sets, all from public data:
- clean and typo: the names of the real catalogs in tests/data (duplicate names and aliases
  shared by several entities dropped, as upstream's benchmark does); typo queries drop, swap
  or substitute one letter (seeded);
- cross-language: CLDR country and language names (from the ``babel`` package) in Latin-script
  locales, matched against a catalog of their English names; only names that differ from the
  English one after folding case and accents;
- cross-language, held out: the same for CLDR currency and script names, a second check of
  settings chosen on the country and language names.
Also batch queries per second and artifact size, dense-only against each setting, measured in
one process on the same catalog and queries (median of repeats).

    python benchmarks/lexical_bench.py [--quick] [--sweep]

``make bench`` runs it after the artifact benchmark (``results/lexical.md``), ``make
bench-quick`` with ``--quick`` (fewer queries, no large catalog: ``results/lexical-quick.md``).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

from common import (
    DATA_DIR,
    batch_qps,
    environment,
    faiss_threads,
    markdown_table,
    pin_threads,
    write_results,
)

THREADS = pin_threads(2)

from harness import read_csv, test_catalog, unique_aliases  # noqa: E402

from novelentitymatcher_faiss import build_index  # noqa: E402
from novelentitymatcher_faiss.text.lexical import (  # noqa: E402
    PHONETIC_FEATURES,
    LexicalSettings,
    fold,
)
from novelentitymatcher_faiss.text.perturb import one_letter_typo  # noqa: E402

CATALOGS = ("products_mcc", "universities", "currencies", "languages", "timezones",
            "industries_sic", "occupations")  # fmt: skip
LOCALES = ("de", "fr", "es", "it", "pt", "nl", "sv", "da", "nb", "pl", "cs", "ro", "hu", "fi",
           "tr", "id", "ca", "hr", "sk", "sl")  # fmt: skip
#: Entity id prefixes of the CLDR tables (kept as before for the country variants set).
KINDS = {"territories": "country", "languages": "language"}


def sweep_settings() -> list[LexicalSettings]:
    """What ``--sweep`` tries besides the default (made on call: settings read the name map)."""
    return [
        LexicalSettings(dim=256, name_map=0.0),  # the default before the name map
        LexicalSettings(name_map=0.0),
        *(LexicalSettings(name_map=m) for m in (0.5, 0.85)),
        *(LexicalSettings(weight=w) for w in (0.7, 0.9)),
        LexicalSettings(dim=256, phonetic=False, name_map=0.0),
        LexicalSettings(dim=64),
        LexicalSettings(dim=256),
        LexicalSettings(dim=256, ngram_min=2, ngram_max=4, name_map=0.0),
    ]


def label(lexical: dict | None) -> str:
    """A short name for a manifest ``lexical`` entry."""
    if lexical is None:
        return "dense only"
    return (
        f"w={lexical['weight']} dim={lexical['dim']} n={lexical['ngram_min']}-"
        f"{lexical['ngram_max']} map={lexical.get('name_map', 0.0)}"
        + ("" if lexical["features"] == PHONETIC_FEATURES else " no spelling forms")
    )


def real_catalogs() -> list[dict]:
    """Entities of every catalog in tests/data, ids prefixed, repeated names/aliases dropped."""
    entities, seen_names = [], set()
    for name in CATALOGS:
        rows = test_catalog(name)
        for row, aliases in zip(rows, unique_aliases(rows, fold), strict=True):
            key = fold(row["name"])
            if key in seen_names:
                continue
            seen_names.add(key)
            entities.append({"id": f"{name}:{row['id']}", "name": row["name"], "aliases": aliases})
    return entities


def entity_codes(kind: str) -> list[str]:
    """The CLDR codes of table ``kind`` (a babel ``Locale`` attribute) that make entities:
    letters only, 2-4 of them; territories two, languages two or three."""
    from babel import Locale

    codes = [c for c in getattr(Locale("en"), kind) if c.isalpha() and len(c) in (2, 3, 4)]
    if kind == "territories":
        return [c for c in codes if len(c) == 2]
    if kind == "languages":
        return [c for c in codes if len(c) in (2, 3)]
    return codes


def cldr_sets(
    tables: tuple[str, ...] = ("territories", "languages"),
) -> tuple[list[dict], list[tuple[str, str]]]:
    """English CLDR display names of ``tables`` (babel ``Locale`` attributes) as a catalog,
    and (foreign name, id) queries. Territories: two-letter codes only; languages: two- or
    three-letter codes."""
    from babel import Locale

    english = Locale("en")
    catalog, queries = [], []
    for kind in tables:
        names = getattr(english, kind)
        codes = entity_codes(kind)
        for code in codes:
            catalog.append({"id": f"{KINDS.get(kind, kind)}:{code}", "name": names[code]})
        for loc in LOCALES:
            table = getattr(Locale(loc), kind)
            for code in codes:
                foreign = table.get(code)
                if foreign and fold(foreign) != fold(names[code]):
                    queries.append((foreign, f"{KINDS.get(kind, kind)}:{code}"))
    return catalog, queries


def country_variants(catalog: list[dict]) -> list[tuple[str, str]]:
    """Labelled country variants (typos, endonyms, official names) from tests/data."""
    ids = {e["id"] for e in catalog}
    rows = test_catalog("country_training_data")
    return [(r["text"], f"country:{r['label']}") for r in rows if f"country:{r['label']}" in ids]


def top1(index, queries: list[tuple[str, str]]) -> float:
    hits = index.match([q for q, _ in queries], threshold=None)
    right = [h is not None and h["id"] == want for h, (_, want) in zip(hits, queries, strict=True)]
    return sum(right) / len(queries)


def evaluate(settings: LexicalSettings | None, sets: dict, workdir: Path, repeats: int) -> dict:
    """Top-1 per query set, batch QPS and artifact size for one lexical setting."""
    row: dict = {"lexical": settings.to_dict() if settings else None}
    for name, (catalog, queries) in sets.items():
        index = build_index(catalog, workdir / f"{name}-{id(settings)}", index_type="flat",
                            lexical=settings, show_progress=False, overwrite=True)  # fmt: skip
        row[f"top1_{name}"] = round(top1(index, queries), 4)
        if name == "typo":
            texts = [q for q, _ in queries] * max(1, 20000 // len(queries))
            row["batch_qps"] = round(batch_qps(index.match, texts, repeats, warm=2000))
            row["artifact_bytes"] = sum(r["size"] for r in index.manifest.files.values())
    return row


def at_scale(catalog: Path, workdir: Path, repeats: int) -> list[dict]:
    """Batch q/s, top-1 on typos and artifact size, dense-only vs default, on a large catalog.

    Both artifacts use ``index_type="auto"`` (IVF above 100k vectors, nprobe auto-tuned).
    """
    rows = read_csv(catalog)
    rng = random.Random(1)
    sample = rng.sample(rows, min(10000, len(rows)))
    queries = [(one_letter_typo(r["name"], rng), r["id"]) for r in sample]
    out = []
    for settings in (None, LexicalSettings()):
        index = build_index(catalog, workdir / f"scale-{settings is None}", lexical=settings,
                            show_progress=False, overwrite=True)  # fmt: skip
        qps = batch_qps(index.match, [q for q, _ in queries], repeats, warm=1000)
        out.append({
            "catalog": catalog.name,
            "lexical": settings.to_dict() if settings else None,
            "index": index.manifest.index.factory,
            "nprobe": index.manifest.index.nprobe,
            "top1_typo": round(top1(index, queries), 4),
            "batch_qps": round(qps),
            "artifact_bytes": sum(r["size"] for r in index.manifest.files.values()),
        })  # fmt: skip
    out[1]["qps_vs_dense"] = round(out[1]["batch_qps"] / out[0]["batch_qps"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="fewer queries and repeats, no large catalog"
    )
    parser.add_argument("--sweep", action="store_true", help="also try other weights/dims/n-grams")
    parser.add_argument(
        "--catalog",
        type=Path,
        default=DATA_DIR / "names-100k.csv",
        help="large catalog for the throughput comparison (make_catalog.py)",
    )
    args = parser.parse_args(argv)
    faiss_threads(2)
    info = environment(THREADS)
    rng = random.Random(0)
    entities = real_catalogs()
    clean = [(e["name"].upper(), e["id"]) for e in entities]
    typo = [(one_letter_typo(e["name"], rng), e["id"]) for e in entities]
    typo = [(q, i) for (q, i), e in zip(typo, entities, strict=True) if fold(q) != fold(e["name"])]
    cldr_catalog, xlang = cldr_sets()
    held_catalog, held = cldr_sets(("currencies", "scripts"))
    variants = country_variants(cldr_catalog)
    if args.quick:
        typo, xlang, held = typo[:400], rng.sample(xlang, 800), rng.sample(held, 400)
    sets = {
        "clean": (entities, clean),
        "typo": (entities, typo),
        "xlang": (cldr_catalog, xlang),
        "xheld": (held_catalog, held),
        "variants": (cldr_catalog, variants),
    }
    print(f"catalog {len(entities)} entities; queries: clean {len(clean)}, typo {len(typo)}, "
          f"cross-language {len(xlang)} ({len(cldr_catalog)} CLDR entities), held out "
          f"{len(held)} ({len(held_catalog)}) and country variants {len(variants)}")  # fmt: skip
    repeats = 3 if args.quick else 5
    candidates = [None, LexicalSettings(), *(sweep_settings() if args.sweep else [])]
    with tempfile.TemporaryDirectory(dir=DATA_DIR if DATA_DIR.exists() else None) as tmp:
        rows = [evaluate(s, sets, Path(tmp), repeats) for s in candidates]
        large = args.catalog.exists() and not args.quick
        scale = at_scale(args.catalog, Path(tmp), repeats) if large else []
    base = rows[0]
    table = []
    for row in rows:
        row["qps_vs_dense"] = round(row["batch_qps"] / base["batch_qps"], 3)
        table.append([label(row["lexical"]), row["top1_clean"], row["top1_typo"], row["top1_xlang"],
                      row["top1_xheld"], row["top1_variants"], row["batch_qps"],
                      row["qps_vs_dense"], row["artifact_bytes"]])  # fmt: skip
    headers = ["setting", "top-1 clean", "top-1 typo", "top-1 cross-language",
               "top-1 cross-language held out", "top-1 country variants", "batch q/s",
               "q/s vs dense", "artifact bytes"]  # fmt: skip
    md = markdown_table(headers, table)
    if scale:
        md += "\n\n" + markdown_table(
            ["catalog", "setting", "index", "nprobe", "top-1 typo", "batch q/s", "artifact bytes"],
            [[r["catalog"], "dense only" if r["lexical"] is None else "default lexical",
              r["index"], r["nprobe"], r["top1_typo"], r["batch_qps"], r["artifact_bytes"]]
             for r in scale],
        )  # fmt: skip
        md += f"\n\nbatch q/s with the lexical channel / dense only: {scale[1]['qps_vs_dense']}"
    elif not args.quick:
        print(f"({args.catalog} not found: run benchmarks/make_catalog.py for the scale figures)")
    print(md)
    name = "lexical-sweep" if args.sweep else "lexical-quick" if args.quick else "lexical"
    write_results(name, {**info, "rows": rows, "scale": scale, "quick": args.quick}, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
