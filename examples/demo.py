"""The main job in three steps: build an index artifact, open it, query it."""

from __future__ import annotations

import tempfile
from pathlib import Path

from novelentitymatcher_faiss import build_index, load_index

CATALOG = Path(__file__).with_name("universities.csv")
QUERIES = ["harvrd univ", "MIT", "univ of cambrige", "Sorbonne", "stanford", "Hogwarts"]


def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        artifact = Path(workdir) / "universities-index"
        build_index(CATALOG, artifact, model="potion-8m")
        index = load_index(artifact)
        print(index)
        # "auto": a hit needs confidence 0.4 (the probability it is the right entity)
        for query, hit in zip(QUERIES, index.match(QUERIES, threshold="auto"), strict=True):
            found = (f"{hit['id']:<40} confidence {hit['confidence']:.2f}  ({hit['text']})"
                     if hit else "no match: no entity is likely")  # fmt: skip
            print(f"{query!r:<20} -> {found}")


if __name__ == "__main__":
    main()
