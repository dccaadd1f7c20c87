"""Wall-clock seconds per named stage of a long job (a build), for its manifest and report."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class StageClock:
    """Exclusive seconds per stage, in the order the stages first ran: time inside a stage
    nested in another counts for the inner one only; a stage run twice adds up."""

    seconds: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    _open: list[str] = field(default_factory=list)
    _mark: float = 0.0

    def _charge(self) -> None:
        now = time.perf_counter()
        if self._open:
            name = self._open[-1]
            self.seconds[name] = self.seconds.get(name, 0.0) + now - self._mark
        self._mark = now

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` body as stage ``name``."""
        self._charge()
        self.seconds.setdefault(name, 0.0)
        self._open.append(name)
        try:
            yield
        finally:
            self._charge()
            self._open.pop()

    def total(self) -> float:
        """Seconds since the clock was made."""
        return time.perf_counter() - self.started

    def to_dict(self) -> dict[str, float]:
        """Stage name -> seconds (3 decimals), plus ``other`` for time outside any stage."""
        out = {name: round(value, 3) for name, value in self.seconds.items()}
        out["other"] = round(max(0.0, self.total() - sum(self.seconds.values())), 3)
        return out


def stage_table(stages: dict[str, float]) -> str:
    """A plain-text table of stage seconds and shares of their sum, one stage per line."""
    total = sum(stages.values()) or 1.0
    width = max([len(name) for name in stages] + [5])
    lines = [f"{'stage':<{width}}  {'seconds':>8}  {'share':>6}"]
    for name, value in stages.items():
        lines.append(f"{name:<{width}}  {value:>8.2f}  {value / total:>6.1%}")
    lines.append(f"{'total':<{width}}  {sum(stages.values()):>8.2f}  {1:>6.1%}")
    return "\n".join(lines)
