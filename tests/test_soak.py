"""A short soak in CI: RSS stays flat while one artifact is queried continuously."""

import re
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


def test_short_soak_keeps_rss_flat(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SOAK), "--seconds", "20", "--sample-every", "2", "--out", "soak-ci"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    growth = float(re.search(r"RSS growth (-?[\d.]+)%", done.stdout).group(1))
    queries = int(re.search(r"(\d+) queries in", done.stdout).group(1))
    assert queries > 1000 and growth < 5.0
    for suffix in ("json", "md"):
        (SOAK.parent / "results" / f"soak-ci.{suffix}").unlink()
