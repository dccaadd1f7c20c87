"""Write a real-name entity catalog CSV (``id,name,aliases``) of a requested size.

Names come from the word lists that ship inside the ``faker`` package (every Latin-script
first name, last name, city name and company suffix of all its locales), combined into
people ("Anna Hoffmann"), companies ("Hoffmann Logistics GmbH") and places ("University of
Bergamo"). Only the lists are used, never faker's generators, so the output depends on the
seed and the faker version alone. Rows come out in order: the first 1,000 rows of a
100k catalog are the 1k catalog of the same seed.

About a quarter of the entities get one or two aliases ("A. Hoffmann", "Hoffmann, Anna",
"Hoffmann Logistics", "Koln" for "Köln"); some aliases are shared by several entities,
as in real catalogs.

    python benchmarks/make_catalog.py --size 100k --out benchmarks/data/names-100k.csv
"""

from __future__ import annotations

import argparse
import csv
import functools
import importlib
import os
import pkgutil
import random
import sys
import time
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path

SOURCE_PACKAGE = "faker"
DEFAULT_SEED = 20240601
#: Share of entities with at least one alias, and of those, the share with two.
ALIAS_SHARE = 0.25
SECOND_ALIAS_SHARE = 0.3
_KIND_WEIGHTS = (("person", 0.6), ("company", 0.28), ("place", 0.12))
_PERSON_ATTRS = ("first_names", "first_names_male", "first_names_female", "first_names_unisex")
_LAST_ATTRS = ("last_names", "male_last_names", "female_last_names", "unisex_last_names")
_CITY_ATTRS = ("cities", "city_names")
_INDUSTRIES = (
    "Logistics", "Consulting", "Dental", "Motors", "Systems", "Pharma", "Partners", "Foods",
    "Holdings", "Engineering", "Textiles", "Construction", "Analytics", "Bakery", "Energy",
    "Insurance", "Publishing", "Robotics", "Shipping", "Software", "Optics", "Brewery",
    "Furniture", "Printing", "Security", "Travel", "Chemicals", "Media", "Solar", "Capital",
)  # fmt: skip
_PLACES = (
    "University of {c}", "{c} Central Station", "{c} City Hall", "{c} General Hospital",
    "Port of {c}", "{c} Public Library", "{c} Airport", "{c} Museum of Art",
    "{c} Chamber of Commerce", "{c} Football Club", "{c} Cathedral", "{c} Botanical Garden",
    "{c} Technical College", "{c} Opera House", "{c} Water Authority", "{c} Police Department",
)  # fmt: skip
_PLACE_ALIASES = {
    "University of {c}": "{c} University",
    "Port of {c}": "{c} Harbour",
    "{c} Central Station": "{c} Hbf",
    "{c} General Hospital": "{c} Hospital",
}


def parse_size(text: str) -> int:
    """``"1000"``, ``"20k"``, ``"1M"`` or ``"1m"`` -> number of rows."""
    value = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(value[-1:], 1)
    number = value[:-1] if scale > 1 else value
    try:
        size = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 1000, 20k or 1M)") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"size must be >= 1, got {text!r}")
    return size


def size_label(size: int) -> str:
    """1000 -> "1k", 1_000_000 -> "1m", 1234 -> "1234"."""
    if size % 1_000_000 == 0:
        return f"{size // 1_000_000}m"
    if size % 1_000 == 0:
        return f"{size // 1_000}k"
    return str(size)


def _is_latin_word(text: str) -> bool:
    """True for non-empty text made of Latin letters, spaces, hyphens and apostrophes."""
    if len(text) < 2 or not text[0].isalpha():
        return False
    for ch in text:
        if ch in " -'.":
            continue
        if not ch.isalpha() or not unicodedata.name(ch, "").startswith("LATIN"):
            return False
    return True


def _provider_words(package: str, attrs: Iterable[str]) -> list[str]:
    """Sorted unique Latin-script words from ``attrs`` of every locale's ``Provider``."""
    base = importlib.import_module(package)
    words: set[str] = set()
    for module_info in pkgutil.iter_modules(base.__path__):
        provider = importlib.import_module(f"{package}.{module_info.name}").Provider
        for attr in attrs:
            value = vars(provider).get(attr)
            if isinstance(value, dict | list | tuple):
                words.update(w.strip() for w in value if isinstance(w, str))
    return sorted(w for w in words if _is_latin_word(w))


@functools.cache
def word_pools() -> dict[str, list[str]]:
    """The faker word lists this catalog draws from: first, last, city, suffix."""
    suffixes = _provider_words("faker.providers.company", ("company_suffixes",))
    return {
        "first": _provider_words("faker.providers.person", _PERSON_ATTRS),
        "last": _provider_words("faker.providers.person", _LAST_ATTRS),
        "city": _provider_words("faker.providers.address", _CITY_ATTRS),
        "suffix": [s for s in suffixes if len(s) <= 12],
    }


def _ascii_fold(text: str) -> str:
    """Drop accents: "Köln" -> "Koln"."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _person(rng: random.Random, pools: dict[str, list[str]]) -> tuple[str, list[str]]:
    first, last = rng.choice(pools["first"]), rng.choice(pools["last"])
    name = f"{first} {last}"
    options = [f"{first[0]}. {last}", f"{last}, {first}"]
    if _ascii_fold(name) != name:
        options.append(_ascii_fold(name))
    return name, options


def _company(rng: random.Random, pools: dict[str, list[str]]) -> tuple[str, list[str]]:
    suffix = rng.choice(pools["suffix"])
    pattern = rng.random()
    if pattern < 0.5:
        stem = f"{rng.choice(pools['last'])} {rng.choice(_INDUSTRIES)}"
    elif pattern < 0.75:
        stem = f"{rng.choice(pools['last'])} & {rng.choice(pools['last'])}"
    else:
        stem = f"{rng.choice(pools['city'])} {rng.choice(_INDUSTRIES)}"
    options = [stem]
    initials = "".join(word[0] for word in stem.split() if word[0].isalpha())
    if len(initials) >= 2:
        options.append(f"{initials.upper()} {suffix}")
    return f"{stem} {suffix}", options


def _place(rng: random.Random, pools: dict[str, list[str]]) -> tuple[str, list[str]]:
    city, pattern = rng.choice(pools["city"]), rng.choice(_PLACES)
    options = []
    if pattern in _PLACE_ALIASES:
        options.append(_PLACE_ALIASES[pattern].format(c=city))
    if _ascii_fold(city) != city:
        options.append(pattern.format(c=_ascii_fold(city)))
    return pattern.format(c=city), options


_MAKERS = {"person": _person, "company": _company, "place": _place}


def generate(size: int, seed: int = DEFAULT_SEED) -> Iterator[tuple[str, str, list[str]]]:
    """Yield ``size`` entities ``(id, name, aliases)`` with unique names, in a fixed order."""
    rng = random.Random(seed)
    pools = word_pools()
    kinds = [kind for kind, _ in _KIND_WEIGHTS]
    weights = [weight for _, weight in _KIND_WEIGHTS]
    width = max(7, len(str(size)))
    seen: set[str] = set()
    for row in range(size):
        for _ in range(100):
            kind = rng.choices(kinds, weights)[0]
            name, options = _MAKERS[kind](rng, pools)
            if name not in seen:
                break
        else:
            raise RuntimeError(f"could not find a new unique name for row {row}")
        seen.add(name)
        aliases: list[str] = []
        if options and rng.random() < ALIAS_SHARE:
            count = 2 if len(options) > 1 and rng.random() < SECOND_ALIAS_SHARE else 1
            aliases = rng.sample(options, count)
        yield f"E{row:0{width}d}", name, aliases


def write_catalog(path: Path, size: int, seed: int = DEFAULT_SEED) -> Path:
    """Write the catalog CSV atomically (temp file, then rename); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(("id", "name", "aliases"))
            for entity_id, name, aliases in generate(size, seed):
                writer.writerow((entity_id, name, "|".join(aliases)))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def source_version() -> str:
    """Version of the package the word lists come from."""
    from importlib.metadata import version

    return version(SOURCE_PACKAGE)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--size N --out FILE [--seed S]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, required=True, help="rows, e.g. 1000, 100k, 1M")
    parser.add_argument(
        "--out", type=Path, help="CSV path (default benchmarks/data/names-SIZE.csv)"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    out = args.out or Path(__file__).parent / "data" / f"names-{size_label(args.size)}.csv"
    started = time.perf_counter()
    write_catalog(out, args.size, args.seed)
    pools = word_pools()
    print(
        f"wrote {args.size} entities to {out} in {time.perf_counter() - started:.1f} s "
        f"(faker {source_version()}, seed {args.seed}; pools: "
        + ", ".join(f"{len(v)} {k}" for k, v in pools.items())
        + ")",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
