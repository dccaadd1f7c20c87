"""Benchmark entry point: ``make bench`` (full) and ``make bench-quick`` (``--quick``).

Runs the artifact benchmark and writes ``benchmarks/results/artifact.{json,md}`` (full) or
``benchmarks/results/artifact-quick.{json,md}`` (quick). Every other flag goes through to
``artifact_bench.py`` (``--rebuild``, ``--sizes``, ``--threads``, ...).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import artifact_bench  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark with the given flags."""
    return artifact_bench.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
