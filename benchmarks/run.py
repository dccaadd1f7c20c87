"""Benchmark entry point: ``make bench`` (full) and ``make bench-quick`` (``--quick``).

Runs the artifact benchmark and writes ``benchmarks/results/artifact.{json,md}`` (full) or
``benchmarks/results/artifact-quick.{json,md}`` (quick); a full run also redraws the PNG
plots in ``docs/img/`` (``plots.py``). Then, full or quick, the lexical channel's benchmark
(``lexical_bench.py``: top-1 on clean, typo and cross-language queries, q/s and size
against dense-only; ``lexical.md`` or ``lexical-quick.md``). Every other flag goes through
to ``artifact_bench.py`` (``--rebuild``, ``--reuse-builds``, ``--sizes``, ``--threads``, ...);
with ``--sizes`` only the artifact benchmark runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import artifact_bench  # noqa: E402
import plots  # noqa: E402
from common import RESULTS_DIR  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark with the given flags; after a full run, draw the plots."""
    args = sys.argv[1:] if argv is None else argv
    status = artifact_bench.main(args)
    quick = "--quick" in args
    full = not any(a.startswith(("--quick", "--sizes")) for a in args)
    if status == 0 and (full or "--merge" in args):
        plots.main([str(RESULTS_DIR / "artifact.json")])
    if status == 0 and (full or quick):
        import lexical_bench  # pins its threads on import: after the artifact benchmark

        status = lexical_bench.main(["--quick"] if quick else [])
    return status


if __name__ == "__main__":
    raise SystemExit(main())
