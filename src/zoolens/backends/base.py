"""What a backend is: the place the batches of a pass run and the sinks' states are merged.

Every backend runs the engine's own pieces (`zoolens.engine.Decoder`, `forward_batch`,
`plan_batches`), so preprocessing, reductions, generator handling and skips are the same
everywhere; it only chooses where each batch runs and how the sinks' states come together.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Iterable, Sequence

import torch

from ..engine import RunSummary
from ..sinks import Need, Sink
from ..sources import ImageSource
from ..zoo.model import Model

__all__ = ["Backend"]


class Backend:
    """Base class of the backends. A backend's constructor stores its settings only.

    The contract of `run`: every sink ends up as if it had been fed every batch of the pass,
    in source order, in this process. A sink with `on_driver` set is fed here, batch by batch;
    it gets a batch only after every other sink has taken that batch in. `on_done(indices)` is
    called with source indices (used and skipped) once every sink holds them, at points where
    the sinks' states can be checkpointed together.
    """

    name: ClassVar[str] = ""

    def run(self, models: Sequence[Model], source: ImageSource, need: Need, sinks: Sequence[Sink],
            *, indices: Iterable[int] | None = None, batch_size: int = 32,
            chunk_size: int | None = None, device=None, amp: bool = False, progress: bool = True,
            desc: str = "extracting",
            on_done: Callable[[list[int]], None] | None = None) -> RunSummary:  # pragma: no cover
        raise NotImplementedError

    def connect(self) -> None:
        """Make sure the backend can run (a cluster reached or started); errors name the setting
        to change. The planner calls it before it creates any file."""

    def load_device(self, device) -> str | torch.device | None:
        """Where an analysis loads its models and keeps the accumulators it merges: `device`
        itself for a backend that runs the models here."""
        return device

