"""Deterministic query perturbations (one-letter typos, partial names), for tuning nprobe,
calibrating confidence and evaluation query sets."""

from __future__ import annotations

import random

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def one_letter_typo(text: str, rng: random.Random) -> str:
    """Drop, swap or substitute one letter of ``text`` (chosen by ``rng``).

    Texts with fewer than two letters are returned unchanged.
    """
    positions = [i for i, ch in enumerate(text) if ch.isalpha()]
    if len(positions) < 2:
        return text
    i = rng.choice(positions)
    kind = rng.choice(("drop", "swap", "substitute"))
    if kind == "drop":
        return text[:i] + text[i + 1 :]
    if kind == "swap":
        j = i + 1 if i + 1 < len(text) else i - 1
        a, b = sorted((i, j))
        return text[:a] + text[b] + text[a] + text[b + 1 :]
    choices = [c for c in _LETTERS if c != text[i].lower()]
    return text[:i] + rng.choice(choices) + text[i + 1 :]


def partial_text(text: str, rng: random.Random) -> str:
    """``text`` with one of its words dropped (two or more words), else cut to 60-85% of its
    characters (at least 3)."""
    words = text.split()
    if len(words) >= 2:
        drop = rng.randrange(len(words))
        return " ".join(words[:drop] + words[drop + 1 :])
    keep = max(3, int(len(text) * rng.uniform(0.6, 0.85)))
    return text[:keep]
