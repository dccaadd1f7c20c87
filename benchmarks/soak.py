"""Soak: query one opened artifact continuously and report RSS over time (leak check).

    python benchmarks/soak.py [--seconds 600] [--catalog CSV] [--sample-every 10]

Builds (or reuses) an artifact, warms it up (every kind of call once, then the loop itself
for a quarter of ``--seconds``, at most ``WARM_SECONDS``), then loops over single and
batch queries for ``--seconds``, sampling RSS. Reports growth from the first post-warm-up
sample to the median of the last quarter of samples; target: under 5% over 10 minutes.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from common import (
    DATA_DIR,
    TEST_DATA,
    environment,
    faiss_threads,
    markdown_table,
    pin_threads,
    rss_bytes,
    write_results,
)

THREADS = pin_threads(2)
#: The soak loop runs this long (or a quarter of --seconds) before the first RSS sample.
WARM_SECONDS = 10.0

from novelentitymatcher_faiss import build_index, load_index  # noqa: E402
from novelentitymatcher_faiss.text.perturb import one_letter_typo  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--sample-every", type=float, default=10.0)
    parser.add_argument("--catalog", type=Path, default=TEST_DATA / "products_mcc.csv")
    parser.add_argument("--out", default="soak", help="results name under benchmarks/results/")
    args = parser.parse_args(argv)
    faiss_threads(2)
    info = environment(THREADS)
    artifact = DATA_DIR / "artifacts" / f"soak-{args.catalog.stem}"
    if not artifact.exists():
        build_index(args.catalog, artifact, index_type="ivf", show_progress=False)
    index = load_index(artifact)
    rng = random.Random(0)
    names = [index.texts[i] for i in range(min(len(index.texts), 5000))]
    queries = [one_letter_typo(rng.choice(names), rng) for _ in range(2000)]
    for start in range(0, 2000, 100):  # warm-up: encoder, caches, allocator pools
        index.match(queries[start : start + 100], top_k=5)
        index.match(queries[start : start + 64], top_k=5, explain=True)  # as the loop does
        index.match(queries[start], top_k=3)
    def step(count: int) -> int:
        batch = rng.sample(queries, 64)
        index.match(batch, top_k=5, explain=count % 10 == 0)
        for text in batch[:8]:
            index.match(text, top_k=1)
        return count + 72

    # the loop itself first, for a quarter of the time (at most WARM_SECONDS): allocator
    # arenas and thread pools settle in its first seconds (+4-9 MiB once, then flat)
    warm_until = time.perf_counter() + min(WARM_SECONDS, args.seconds / 4)
    count = 0
    while time.perf_counter() < warm_until:
        count = step(count)
    samples: list[tuple[float, int]] = []
    began = next_sample = time.perf_counter()
    count = 0
    while (now := time.perf_counter()) - began < args.seconds:
        if now >= next_sample:
            samples.append((round(now - began, 1), rss_bytes()["VmRSS"]))
            next_sample += args.sample_every
        count = step(count)
    samples.append((round(time.perf_counter() - began, 1), rss_bytes()["VmRSS"]))
    first = samples[0][1]
    tail = sorted(rss for _, rss in samples[-max(1, len(samples) // 4) :])
    growth = tail[len(tail) // 2] / first - 1
    rows = [[t, f"{rss / 2**20:.1f}"] for t, rss in samples]
    md = markdown_table(["seconds", "RSS MiB"], rows)
    md += f"\n\n{count} queries in {args.seconds:.0f} s; RSS growth {growth * 100:.2f}%"
    print(md)
    write_results(
        args.out, {**info, "samples": samples, "queries": count, "rss_growth": growth}, md
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
