"""Write the country catalog used by the training tests and benchmark.

Source: the ISO 3166-1 table that ships with the ``pycountry`` package (Debian iso-codes
data). One entity per country: ``id`` is the alpha-2 code, ``name`` the common name where
ISO gives one ("South Korea") or else the ISO name, and ``aliases`` ('|'-separated) the ISO
name when it differs from the common name, the official name and the alpha-3 code.

    python scripts/make_country_catalog.py --out tests/data/countries.csv

The output depends only on the pycountry version: rerun it after upgrading pycountry and
review the diff.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def country_rows() -> list[dict[str, str]]:
    """One ``{"id", "name", "aliases"}`` row per ISO 3166-1 country, sorted by id."""
    import pycountry

    rows = []
    for country in pycountry.countries:
        name = getattr(country, "common_name", None) or country.name
        aliases: list[str] = []
        for alias in (country.name, getattr(country, "official_name", None), country.alpha_3):
            if alias and alias != name and alias not in aliases:
                aliases.append(alias)
        rows.append({"id": country.alpha_2, "name": name, "aliases": "|".join(aliases)})
    return sorted(rows, key=lambda row: row["id"])


def main(argv: list[str] | None = None) -> int:
    """Write the catalog CSV to ``--out``; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/data/countries.csv"))
    args = parser.parse_args(argv)
    rows = country_rows()
    with open(args.out, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "name", "aliases"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} countries to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
