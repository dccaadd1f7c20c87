"""Text normalizer applied to entity texts and queries alike.

Steps, in order (as upstream's ``TextNormalizer``): strip, Unicode NFKD, optional accent
removal, lowercase, optional punctuation removal, collapse whitespace.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass

_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class NormalizerSettings:
    """What :func:`normalize_text` does; recorded in every artifact's manifest."""

    enabled: bool = True
    lowercase: bool = True
    remove_accents: bool = False
    remove_punctuation: bool = False

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, bool]) -> NormalizerSettings:
        return cls(**{key: bool(data[key]) for key in asdict(cls())})


def normalize_text(text: str, settings: NormalizerSettings = NormalizerSettings()) -> str:
    """Return ``text`` normalized by ``settings``; ``enabled=False`` returns it unchanged."""
    if not settings.enabled:
        return text
    text = unicodedata.normalize("NFKD", text.strip())
    if settings.remove_accents:
        text = "".join(ch for ch in text if not unicodedata.combining(ch))
    if settings.lowercase:
        text = text.lower()
    if settings.remove_punctuation:
        text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return _WHITESPACE.sub(" ", text).strip()


def word_trigrams(text: str) -> set[str]:
    """Character 3-grams inside each space-padded word of ``text``."""
    grams: set[str] = set()
    for word in text.split():
        padded = f" {word} "
        grams.update(padded[i : i + 3] for i in range(len(padded) - 2))
    return grams
