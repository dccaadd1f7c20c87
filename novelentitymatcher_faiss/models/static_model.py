"""A model2vec folder opened directly: ``tokenizer.json`` plus memory-mapped safetensors.

Opening the query encoder this way skips importing model2vec (and, through it,
huggingface_hub) and copying the embedding matrix: the tensors are ``np.memmap`` views of
``model.safetensors``. :class:`StaticParts` carries exactly what
:func:`~.encoders.static_mean` reads, derived as model2vec's
``StaticModel.from_pretrained`` derives it (tokens in id order, the unknown token's id,
the median token length, ``max_length`` from the config or 512, padding off, truncation
at ``max_length``); tests check that both give the same vectors. Folders of any other
layout return None, and the caller loads them with model2vec.
"""

from __future__ import annotations

import functools
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: model2vec's default ``max_length`` when the config names none.
DEFAULT_MAX_LENGTH = 512
#: safetensors dtype names -> numpy dtypes this loader maps.
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8}  # fmt: skip
_TENSORS = {"embeddings", "weights", "mapping"}


@dataclass
class StaticParts:
    """What a model2vec sentence vector needs: ``embedding`` float (vocab | rows, dim),
    optional ``weights`` (vocab,) and ``token_mapping`` int (vocab,), the tokenizer (a
    ``tokenizers.Tokenizer``), ``unk_token_id``, ``max_length`` and
    ``median_token_length``."""

    tokenizer: Any
    embedding: np.ndarray
    weights: np.ndarray | None
    token_mapping: np.ndarray | None
    unk_token_id: int | None
    max_length: int | None

    @property
    def dim(self) -> int:
        return int(self.embedding.shape[1])

    @functools.cached_property
    def median_token_length(self) -> int:
        """The median character length of the vocabulary's tokens (model2vec cuts a text to
        ``max_length`` times it before tokenizing); read at first use, which only texts
        longer than ``max_length`` characters need (reading the vocabulary costs a cold
        start about 15 ms)."""
        return int(np.median([len(token) for token in self.tokenizer.get_vocab()]))


def safetensors_header(path: Path) -> tuple[dict[str, Any], int] | None:
    """(the JSON header of a safetensors file, its size in bytes), or None when the file
    is unreadable or its header is not a JSON object of at most 100 MB."""
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > 100_000_000:
                return None
            header = json.loads(handle.read(size))
    except (OSError, ValueError, struct.error):
        return None
    return (header, size) if isinstance(header, dict) else None


def map_safetensors(path: Path) -> dict[str, np.ndarray] | None:
    """The tensors of a safetensors file as read-only ``np.memmap`` views, or None when the
    header is unreadable, holds a dtype this loader does not map, or points past the end
    of the file."""
    read = safetensors_header(path)
    if read is None:
        return None
    header, size = read
    length = path.stat().st_size
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(_DTYPES[info["dtype"]])
            start, stop = (int(x) for x in info["data_offsets"])
            shape = tuple(int(x) for x in info["shape"])
        except (KeyError, TypeError, ValueError):
            return None
        if stop - start != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            return None
        if 8 + size + stop > length:
            return None
        tensors[name] = np.memmap(path, dtype=dtype.newbyteorder("<"), mode="r",
                                  offset=8 + size + start, shape=shape)  # fmt: skip
    return tensors


def load_static_parts(path: Path) -> StaticParts | None:
    """:class:`StaticParts` of the model2vec folder ``path`` (``config.json`` with
    ``model_type`` model2vec, ``tokenizer.json``, ``model.safetensors`` holding
    ``embeddings`` and optionally ``weights`` and ``mapping``), or None for any other
    layout."""
    config_path, tokenizer_path = path / "config.json", path / "tokenizer.json"
    tensors_path = path / "model.safetensors"
    if not (config_path.is_file() and tokenizer_path.is_file() and tensors_path.is_file()):
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    tensors = map_safetensors(tensors_path)
    if (
        not isinstance(config, dict)
        or config.get("model_type") != "model2vec"
        or tensors is None
        or "embeddings" not in tensors
        or not set(tensors) <= _TENSORS
        or tensors["embeddings"].ndim != 2
    ):
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    padding = tokenizer.padding
    if padding is not None:  # no padding, the pad token kept (as model2vec does)
        tokenizer.enable_padding(pad_id=padding["pad_id"], pad_token=padding["pad_token"],
                                 pad_type_id=padding["pad_type_id"], length=0)  # fmt: skip
    max_length = config.get("max_length", DEFAULT_MAX_LENGTH)
    if max_length is None:
        tokenizer.no_truncation()
    else:
        tokenizer.enable_truncation(int(max_length))
    mapping = tensors.get("mapping")
    if mapping is None and len(tensors["embeddings"]) != tokenizer.get_vocab_size():
        return None
    return StaticParts(
        tokenizer=tokenizer,
        embedding=tensors["embeddings"],
        weights=tensors.get("weights"),
        token_mapping=mapping,
        unk_token_id=_unk_token_id(tokenizer),
        max_length=None if max_length is None else int(max_length),
    )


def _unk_token_id(tokenizer: Any) -> int | None:
    """The id of the tokenizer's unknown token (WordPiece, BPE, WordLevel: its
    ``unk_token``; Unigram: the model's ``unk_id``), or None."""
    model = tokenizer.model
    if hasattr(model, "unk_token"):
        token = model.unk_token
        return None if token is None else tokenizer.token_to_id(token)
    return json.loads(tokenizer.to_str())["model"].get("unk_id")
