"""``Matcher``: upstream novelentitymatcher's API, served from a persisted FAISS index."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .artifact import atomic_directory, file_records, list_files, read_manifest, write_manifest
from .errors import NemFaissError, TrainingError
from .match_index import MatchIndex, load_index
from .registry import DEFAULT_MODEL

MODES = ("zero-shot",)


class Matcher:
    """Match texts to entities: ``Matcher(entities).fit()`` then ``.match(text)``.

    ``fit`` builds a memory-mapped FAISS artifact (in a temp dir until :meth:`save`);
    ``Matcher.load`` / ``Matcher.from_index`` open one. ``embedding_dim`` truncates the
    model's vectors (Matryoshka) before normalization.
    """

    def __init__(
        self,
        entities: Iterable[Mapping[str, Any]] | str | Path | None = None,
        model: str = "default",
        threshold: float = 0.7,
        normalize: bool = True,
        mode: str | None = None,
        embedding_dim: int | None = None,
        index_type: str = "auto",
        show_progress: bool = False,
    ) -> None:
        if mode is not None and mode not in MODES:
            raise TrainingError(f"mode {mode!r} is not available; choose one of {MODES}")
        self.entities = entities
        self.model = DEFAULT_MODEL if model == "default" else model
        self.threshold = threshold
        self.normalize = normalize
        self.mode = mode or "zero-shot"
        self.embedding_dim = embedding_dim
        self.index_type = index_type
        self.show_progress = show_progress
        self.index: MatchIndex | None = None
        self._workdir: Path | None = None

    # -- building ------------------------------------------------------------------------
    def fit(
        self, training_data: Sequence[Mapping[str, str]] | None = None, **kwargs: Any
    ) -> Matcher:
        """Build the index from ``entities`` (zero-shot). Returns ``self``."""
        from .build import build_index

        if training_data:
            raise TrainingError("training data was given, but this Matcher runs zero-shot only")
        if self.entities is None:
            raise NemFaissError(
                "this Matcher has no entities to fit; use Matcher.load(path) instead"
            )
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="nem-faiss-"))
            weakref.finalize(self, shutil.rmtree, self._workdir, True)
        self.index = build_index(
            self.entities,
            self._workdir / "index",
            model=self.model,
            embedding_dim=self.embedding_dim,
            index_type=self.index_type,
            normalize=self.normalize,
            show_progress=self.show_progress,
            overwrite=True,
            **kwargs,
        )
        return self

    async def fit_async(self, *args: Any, **kwargs: Any) -> Matcher:
        """:meth:`fit` in a worker thread."""
        return await asyncio.to_thread(self.fit, *args, **kwargs)

    # -- matching ------------------------------------------------------------------------
    def match(
        self,
        texts: str | Sequence[str],
        top_k: int = 1,
        threshold: float | None = None,
        nprobe: int | None = None,
    ) -> Any:
        """Upstream's shape: dict or None (one text, ``top_k=1``), lists otherwise."""
        if self.index is None:
            raise NemFaissError("call fit() (or Matcher.load) before match()")
        threshold = self.threshold if threshold is None else threshold
        return self.index.match(texts, top_k=top_k, threshold=threshold, nprobe=nprobe)

    async def match_async(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`match` in a worker thread."""
        return await asyncio.to_thread(self.match, *args, **kwargs)

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Copy the built artifact to ``path`` atomically, recording this Matcher's settings."""
        if self.index is None:
            raise NemFaissError("nothing to save: call fit() first")
        source = self.index.path
        with atomic_directory(Path(path), overwrite=overwrite) as tmp:
            for name in list_files(source):
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source / name, tmp / name)
            manifest = read_manifest(tmp)
            manifest["matcher"] = {"threshold": self.threshold, "mode": self.mode}
            manifest["files"] = file_records(tmp)
            write_manifest(tmp, manifest)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, *, verify: str = "fast") -> Matcher:
        """Open a saved Matcher (or any artifact) from ``path``."""
        index = load_index(path, verify=verify)
        settings = index.manifest.get("matcher", {})
        matcher = cls(
            model=index.manifest["model"]["name"],
            threshold=float(settings.get("threshold", 0.7)),
            mode=settings.get("mode"),
            embedding_dim=index.dim,
            index_type=index.manifest["index"]["type"],
        )
        matcher.index = index
        return matcher

    @classmethod
    def from_index(
        cls, path: str | Path, *, threshold: float = 0.7, verify: str = "fast"
    ) -> Matcher:
        """Wrap an artifact built by :func:`build_index` (or ``nem-faiss build``)."""
        matcher = cls.load(path, verify=verify)
        matcher.threshold = threshold
        return matcher

    def __len__(self) -> int:
        return 0 if self.index is None else len(self.index)
