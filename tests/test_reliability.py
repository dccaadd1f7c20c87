"""Bad queries, damaged artifacts, fuzzing, concurrency: clear errors and no crashes."""

import json
import os
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from novelentitymatcher_faiss import (
    ArtifactCorruptError,
    ArtifactError,
    ArtifactIncompatibleError,
    ArtifactMissingError,
    NemFaissError,
    QueryError,
    build_index,
    load_index,
)
from novelentitymatcher_faiss.artifact.files import file_records
from novelentitymatcher_faiss.artifact.manifest import write_manifest

DATA = Path(__file__).parent / "data"
UNIVERSITIES = DATA / "universities.csv"
PRODUCTS = DATA / "products_mcc.csv"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    return {
        "flat": build_index(UNIVERSITIES, root / "flat", show_progress=False).path,
        "ivf": build_index(PRODUCTS, root / "ivf", index_type="ivf", show_progress=False).path,
        "pq": build_index(PRODUCTS, root / "pq", index_type="ivf-pq", show_progress=False).path,
    }


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_manifest(path: Path, change) -> None:  # noqa: ANN001
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    write_manifest(path, manifest)


# -- queries --------------------------------------------------------------------------
def test_unusual_queries_get_documented_answers(artifacts):
    index = load_index(artifacts["flat"])
    texts = [
        "جامعة هارفارد",
        "אוניברסיטת הרווארד",
        "🎓🏛️",
        "e\u0301cole polytechnique",
        "x" * 100_000,
    ]
    hits = index.match(texts, top_k=2)
    assert len(hits) == len(texts) and all(isinstance(h, list) for h in hits)
    assert index.match("   \t\n") is None and index.match("", top_k=3) == []
    for bad in (None, 42, b"bytes", {"a": 1}):
        with pytest.raises(QueryError):
            index.match(bad)
    with pytest.raises(QueryError, match="query 2"):
        index.match(["ok", "fine", 3.5])


def test_many_queries_in_one_call_are_batched(artifacts):
    index = load_index(artifacts["flat"])
    queries = [f"university number {i}" for i in range(60_000)]
    hits = index.match(queries, batch_size=4096)
    single = index.match(queries[0])
    assert len(hits) == 60_000 and hits[0]["id"] == single["id"]
    assert hits[0]["score"] == pytest.approx(single["score"], abs=1e-5)  # BLAS batch vs one


# -- damaged artifacts -----------------------------------------------------------------
DAMAGE = {
    "truncated index": lambda p: (p / "index.faiss").write_bytes(
        (p / "index.faiss").read_bytes()[:-100]
    ),
    "missing map": lambda p: (p / "row_entity.npy").unlink(),
    "missing manifest": lambda p: (p / "manifest.json").unlink(),
    "extra file": lambda p: (p / "notes.txt").write_text("hello"),
    "flipped index byte": lambda p: flip(p / "index.faiss", 200),
    "flipped map byte": lambda p: flip(p / "row_entity.npy", 130),
    "flipped entities byte": lambda p: flip(p / "entities.jsonl", 10),
    "manifest not json": lambda p: (p / "manifest.json").write_text("{not json"),
    "future format": lambda p: edit_manifest(p, lambda m: m.update(format_version=99)),
    "future faiss": lambda p: edit_manifest(p, lambda m: m.update(faiss_version="99.0.0")),
    "wrong counts": lambda p: edit_manifest(p, lambda m: m["counts"].update(vectors=7)),
    "wrong dims": lambda p: edit_manifest(p, lambda m: m["model"].update(dim=8)),
    "escape dotdot": lambda p: edit_manifest(p, lambda m: m["files"].update({"../x": {"size": 1}})),
    "escape absolute": lambda p: edit_manifest(
        p, lambda m: m["files"].update({"/etc/passwd": {"size": 1}})
    ),
}


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_artifacts_raise_artifact_errors(artifacts, tmp_path, damage):
    path = copy(artifacts["flat"], tmp_path / "a")
    DAMAGE[damage](path)
    with pytest.raises(ArtifactError) as info:
        load_index(path).match("harvard")
    assert str(path) in str(info.value) or "manifest" in str(info.value)
    expected = {
        "future format": ArtifactIncompatibleError,
        "future faiss": ArtifactIncompatibleError,
        "missing map": ArtifactMissingError,
        "missing manifest": ArtifactMissingError,
    }
    assert isinstance(info.value, expected.get(damage, ArtifactCorruptError))


def test_symlink_inside_artifact_is_refused(artifacts, tmp_path):
    path = copy(artifacts["flat"], tmp_path / "a")
    (path / "texts.bin").rename(tmp_path / "elsewhere.bin")
    (path / "texts.bin").symlink_to(tmp_path / "elsewhere.bin")
    with pytest.raises(ArtifactCorruptError, match="symbolic link"):
        load_index(path)


def test_index_of_another_type_is_detected(artifacts, tmp_path):
    path = copy(artifacts["ivf"], tmp_path / "a")
    shutil.copy(artifacts["pq"] / "index.faiss", path / "index.faiss")  # IVF-PQ where IVF-Flat was
    edit_manifest(path, lambda m: m.update(files=file_records(path)))  # consistent sizes/hashes
    with pytest.raises(ArtifactCorruptError, match="index type"):
        load_index(path)


def test_files_swapped_between_artifacts_are_detected(artifacts, tmp_path):
    path = copy(artifacts["flat"], tmp_path / "a")
    for name in ("ids.bin", "ids.offsets.npy"):
        shutil.copy(artifacts["ivf"] / name, path / name)
    with pytest.raises(ArtifactCorruptError):
        load_index(path)


def test_large_artifact_fast_open_checks_sizes_and_full_checks_hashes(
    artifacts, tmp_path, monkeypatch
):
    from novelentitymatcher_faiss.artifact import files as artifact

    monkeypatch.setattr(artifact, "FAST_HASH_MAX_BYTES", 0)  # treat every artifact as large
    path = copy(artifacts["flat"], tmp_path / "a")
    flip(path / "texts.bin", 3)
    load_index(path)  # sizes match: the fast open of a large artifact does not hash
    with pytest.raises(ArtifactCorruptError, match="sha256"):
        load_index(path, verify="full")


# -- fuzzing ---------------------------------------------------------------------------
FUZZ_CHILD = r"""
import sys
from novelentitymatcher_faiss import NemFaissError, load_index
for line in sys.stdin:
    path = line.strip()
    try:
        load_index(path).match(["harvard univ", "veterinary services"], top_k=3)
        print("ok", path, flush=True)
    except NemFaissError as exc:
        print("error", path, type(exc).__name__, flush=True)
    except Exception as exc:
        print("foreign", path, type(exc).__name__, str(exc)[:200].replace("\n", " "), flush=True)
"""


def mutate(src: Path, dst: Path, rng: random.Random) -> str:
    shutil.copytree(src, dst)
    files = sorted(p for p in dst.rglob("*") if p.is_file())
    target = rng.choice(files)
    data = bytearray(target.read_bytes())
    kind = rng.choice(("flip", "flip", "truncate", "zero", "append"))
    if kind == "flip" and data:
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        data = data[: rng.randrange(len(data) + 1)]
    elif kind == "zero" and data:
        start = rng.randrange(len(data))
        data[start : start + 64] = bytes(len(data[start : start + 64]))
    else:
        data += b"\0" * rng.randrange(1, 64)
    target.write_bytes(bytes(data))
    return f"{kind} {target.relative_to(dst)}"


def run_fuzz(artifacts: dict, root: Path, count: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    cases = {}
    for i in range(count):
        name = rng.choice(sorted(artifacts))
        dst = root / f"m{i}"
        cases[str(dst)] = mutate(artifacts[name], dst, rng)
    child = subprocess.run(
        [sys.executable, "-c", FUZZ_CHILD], input="\n".join(cases) + "\n",
        capture_output=True, text=True, timeout=60 + count,
    )  # fmt: skip
    lines = child.stdout.splitlines()
    done = {line.split()[1] for line in lines}
    crashed = [f"{p} ({cases[p]})" for p in cases if p not in done]
    assert child.returncode == 0 and not crashed, f"crash at {crashed[:1]}: {child.stderr[-2000:]}"
    foreign = [line for line in lines if line.startswith("foreign")]
    assert not foreign, foreign[:5]
    tally = {"ok": 0, "error": 0}
    for line in lines:
        tally[line.split()[0]] += 1
    return tally


def test_fuzz_loader_short(artifacts, tmp_path):
    tally = run_fuzz(artifacts, tmp_path, int(os.environ.get("NEM_FAISS_FUZZ_N", "120")), seed=1)
    assert tally["error"] >= 0.8 * sum(tally.values())  # small artifacts are fully hashed


@pytest.mark.slow
def test_fuzz_loader_long(artifacts, tmp_path):
    tally = run_fuzz(artifacts, tmp_path, 600, seed=2)
    assert tally["error"] >= 0.8 * sum(tally.values())


# -- concurrency -----------------------------------------------------------------------
def test_threads_give_the_same_results_as_serial(artifacts):
    index = load_index(artifacts["ivf"])
    rng = random.Random(3)
    names = [line.split(",")[1] for line in PRODUCTS.read_text().splitlines()[1:400]]
    queries = [[rng.choice(names) for _ in range(rng.choice((1, 1, 5, 50)))] for _ in range(64)]
    serial = [index.match(q, top_k=5) for q in queries]
    results: dict[int, list] = {}

    def worker(w: int) -> None:
        for i in range(w, len(queries), 8):
            results[i] = index.match(queries[i], top_k=5)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(queries))] == serial


READER = r"""
import json, sys
from novelentitymatcher_faiss import load_index
index = load_index(sys.argv[1])
first = index.match(["harvard univ", "oxford"], top_k=2)
sys.stdout.write(json.dumps(first) + "\n"); sys.stdout.flush()
sys.stdin.readline()  # wait while the artifact is rebuilt under us
print(json.dumps(index.match(["harvard univ", "oxford"], top_k=2)))
"""


def test_processes_share_an_artifact_and_survive_a_rebuild(artifacts, tmp_path):
    path = copy(artifacts["flat"], tmp_path / "live")
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", READER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(3)
    ]
    before = [json.loads(r.stdout.readline()) for r in readers]
    assert before[0] == before[1] == before[2]
    build_index([{"id": "only", "name": "Nothing Else"}], path, overwrite=True, show_progress=False)
    after = [json.loads(r.communicate("go\n", timeout=120)[0]) for r in readers]
    assert after == before  # old readers keep their mapped artifact
    assert len(load_index(path)) == 1 and load_index(path, verify="full")


RACER = r"""
import sys
from novelentitymatcher_faiss import ArtifactExistsError, build_index
rows = [{"id": f"{sys.argv[2]}-{i}", "name": f"{sys.argv[2]} entity {i}"} for i in range(3000)]
try:
    build_index(rows, sys.argv[1], overwrite=sys.argv[3] == "1", show_progress=False)
    print("built")
except ArtifactExistsError:
    print("exists")
"""


@pytest.mark.parametrize("overwrite", ["0", "1"])
def test_racing_builds_leave_one_complete_artifact(tmp_path, overwrite):
    target = tmp_path / "raced"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(target), tag, overwrite],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for tag in ("alpha", "beta")
    ]
    outcomes = sorted(p.communicate(timeout=300)[0].strip() for p in procs)
    assert outcomes == (["built", "exists"] if overwrite == "0" else ["built", "built"])
    index = load_index(target, verify="full")
    tags = {index.ids[i].split("-")[0] for i in range(len(index))}
    assert len(index) == 3000 and len(tags) == 1  # one build's artifact, never a mixture
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raced"]


def test_no_public_call_adds_to_a_mapped_index(artifacts):
    index = load_index(artifacts["flat"])
    public = [name for name in dir(index) if not name.startswith("_")]
    assert not [name for name in public if "add" in name or "update" in name]
    assert np.all(np.asarray(index.row_entity) >= 0)
    with pytest.raises(NemFaissError):
        build_index(
            UNIVERSITIES, artifacts["flat"], show_progress=False
        )  # exists: no in-place writes


def _rss_file_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile line")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_streaming_over_a_mapped_file_does_not_grow_rss(tmp_path):
    from novelentitymatcher_faiss.artifact.arrays import load_array
    from novelentitymatcher_faiss.index.search import iter_chunks

    path = tmp_path / "big.npy"
    np.save(path, np.ones((128 * 1024, 512), dtype=np.float32))  # 256 MiB
    vectors = load_array(path, np.float32, ndim=2)
    before, peak, total = _rss_file_bytes(), 0, 0.0
    for _, block in iter_chunks(vectors, 8192):
        total += float(block[:, 0].sum())
        peak = max(peak, _rss_file_bytes() - before)
    assert total == 128 * 1024
    assert peak < 64 * 2**20, peak  # without releasing pages this reaches the file's size
