"""The nem-faiss CLI, run as a real subprocess on real data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

UNIVERSITIES = Path(__file__).parent / "data" / "universities.csv"


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "novelentitymatcher_faiss.cli", *args],
        input=stdin, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "unis"
    done = cli("build", str(UNIVERSITIES), "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    return out


def test_build_then_query_arguments(artifact):
    done = cli("query", str(artifact), "harvard univ", "MIT", "--json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["matches"][0]["id"] for line in lines] == [
        "harvard_university",
        "massachusetts_institute_of_technology",
    ]
    plain = cli("query", str(artifact), "stanford", "--top-k", "2")
    assert plain.stdout.splitlines()[0].split("\t")[1] == "stanford_university"
    assert len(plain.stdout.splitlines()) == 2


def test_query_reads_stdin_and_writes_json_lines(artifact):
    done = cli(
        "query", str(artifact), "--threshold", "auto", stdin="oxford university\nzzzz qqqq\n"
    )
    assert done.returncode == 0, done.stderr
    first, second = (json.loads(line) for line in done.stdout.splitlines())
    assert (
        first["query"] == "oxford university"
        and first["matches"][0]["id"] == "university_of_oxford"
        and first["matches"][0]["confidence"] >= 0.4
    )
    assert second == {"query": "zzzz qqqq", "matches": []}  # no likely entity: none
    bad = cli("query", str(artifact), "x", "--threshold", "high")
    assert bad.returncode == 2 and "expected a number or 'auto'" in bad.stderr


def test_info_and_verify(artifact):
    info = cli("info", str(artifact))
    assert "50 entities" in info.stdout and "potion-8m" in info.stdout
    assert "confidence: logistic over" in info.stdout and "AUROC" in info.stdout
    manifest = json.loads(cli("info", str(artifact), "--json").stdout)
    assert manifest["counts"]["entities"] == 50
    assert cli("verify", str(artifact)).returncode == 0


def test_verify_detects_damage_and_errors_exit_2(artifact, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    blob = copy / "texts.bin"
    data = bytearray(blob.read_bytes())
    data[0] ^= 0x20  # same size: only the sha256 check sees it
    blob.write_bytes(bytes(data))
    done = cli("verify", str(copy))
    assert done.returncode == 2 and "sha256" in done.stderr and "texts.bin" in done.stderr
    missing = cli("query", str(tmp_path / "nowhere"), "x")
    assert missing.returncode == 2 and "no artifact directory" in missing.stderr
    exists = cli("build", str(UNIVERSITIES), "--out", str(artifact), "--quiet")
    assert exists.returncode == 2 and "overwrite" in exists.stderr
    dense = cli("build", str(UNIVERSITIES), "--out", str(tmp_path / "dense"), "--no-lexical",
                "--quiet")  # fmt: skip
    assert dense.returncode == 0, dense.stderr
    manifest = json.loads((tmp_path / "dense" / "manifest.json").read_text())
    assert manifest["lexical"] is None and manifest["index_dim"] == manifest["model"]["dim"]
    no_map = cli("build", str(UNIVERSITIES), "--out", str(tmp_path / "nomap"), "--no-name-map",
                 "--quiet")  # fmt: skip
    assert no_map.returncode == 0, no_map.stderr
    lexical = json.loads((tmp_path / "nomap" / "manifest.json").read_text())["lexical"]
    assert lexical["name_map"] == 0.0 and "map_name" not in lexical
    assert "spelling forms, no name map" in cli("info", str(tmp_path / "nomap")).stdout
    assert "name map cldr-names-v1 (share 0.7)" in cli("info", str(artifact)).stdout
    assert "lexical:    none" in cli("info", str(tmp_path / "dense")).stdout
    pq = cli("build", str(UNIVERSITIES), "--out", str(tmp_path / "pq"), "--index", "ivf-pq",
             "--spill", "3", "--json")  # fmt: skip
    assert pq.returncode == 0, pq.stderr
    report = json.loads(pq.stdout)  # progress, tuning lines and the stage table: stderr
    assert report["index"]["type"] == "ivf-pq" and report["build_stages"]["train"] > 0
    assert "tune nprobe" in pq.stderr and "stages:" in cli("info", str(tmp_path / "pq")).stdout
    assert json.loads((tmp_path / "pq" / "manifest.json").read_text())["index"]["spill"] == 3
    assert "spill 3" in cli("info", str(tmp_path / "pq")).stdout
    bad = cli("build", str(UNIVERSITIES), "--out", str(tmp_path / "bad"), "--index", "ivf",
              "--spill", "2", "--quiet")  # fmt: skip
    assert bad.returncode == 2 and "needs rerank" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_models_list_and_path():
    listing = cli("models", "list")
    assert listing.returncode == 0
    for alias in ("potion-8m", "potion-32m", "mrl-en", "mrl-multi", "minilm", "mpnet", "bge-base"):
        assert alias in listing.stdout
    path = cli("models", "path", "potion-8m")
    assert path.returncode == 0 and Path(path.stdout.strip(), "model.safetensors").is_file()


def test_models_fetch_populates_an_empty_cache(tmp_path):
    import os

    env = {**os.environ, "NEM_FAISS_CACHE_DIR": str(tmp_path / "cache"), "NEM_FAISS_OFFLINE": "1"}
    run = [sys.executable, "-m", "novelentitymatcher_faiss.cli", "models"]
    before = subprocess.run([*run, "path", "minilm"], env=env, capture_output=True, text=True)
    assert before.returncode == 1 and "not cached" in before.stderr
    fetched = subprocess.run([*run, "fetch", "minilm"], env=env, capture_output=True, text=True)
    assert fetched.returncode == 0, fetched.stderr
    folder = Path(fetched.stdout.strip().splitlines()[-1])
    assert (folder / "model.safetensors").is_file() and str(tmp_path) in str(folder)
    after = subprocess.run([*run, "path", "minilm"], env=env, capture_output=True, text=True)
    assert Path(after.stdout.strip()) == folder
    listing = subprocess.run([*run, "list"], env=env, capture_output=True, text=True).stdout
    row = next(line.split() for line in listing.splitlines() if line.startswith("minilm"))
    assert row[5] == "yes"
