"""The local backend: the engine as it is, in this process (decoding in DataLoader workers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Sequence

from .. import engine
from ..engine import RunSummary
from ..sinks import Need, Sink
from ..sources import ImageSource
from ..zoo.model import Model
from .base import Backend

__all__ = ["LocalBackend"]


@dataclass
class LocalBackend(Backend):
    """Run every batch here. num_workers: decoding processes (None: the CPU count, at most 8;
    0: decode in this process)."""

    num_workers: int | None = None
    name: ClassVar[str] = "local"

    def run(self, models: Sequence[Model], source: ImageSource, need: Need, sinks: Sequence[Sink],
            *, indices: Iterable[int] | None = None, batch_size: int = 32,
            chunk_size: int | None = None, device=None, amp: bool = False, progress: bool = True,
            desc: str = "extracting",
            on_done: Callable[[list[int]], None] | None = None) -> RunSummary:
        # looked up at call time, so a test that patches `zoolens.engine.run` sees every pass
        return engine.run(models, source, need, sinks, indices=indices, batch_size=batch_size,
                          chunk_size=chunk_size, num_workers=self.num_workers, device=device,
                          amp=amp, progress=progress, desc=desc, on_done=on_done)
