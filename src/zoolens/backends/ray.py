"""The Ray backend: decoding in Ray tasks, the zoo in a Ray Data actor pool, sinks merged here.

A pass is cut into units: runs of consecutive batches (the engine's own `plan_batches`, so every
batch holds the images it holds locally). Ray Data hands the units to a pool of workers:

    unit ids -> map_batches(ZooWorker, compute=ActorPoolStrategy(size=N))

- ZooWorker (a Ray actor with `cpus_per_worker` CPUs and `gpus_per_worker` GPUs): the zoo is
  deserialised once per actor, from one object shipped through Ray's object store. Per unit it
  builds fresh copies of the sinks that may run anywhere (`Sink.fresh()`), and for each batch
  runs `zoolens.engine.forward_batch` and feeds them; it returns their states (`state_dict()`),
  plus, for the sinks that stay here (`Sink.on_driver`: the store writer, a sink that writes
  files or needs the whole stream), the parts of the batches they need.
- decoding (a Ray task per batch, launched by the worker ahead of its models, as many batches
  as there are CPUs left to it):
  `zoolens.engine.Decoder.decode` on each image: read and decoded once, every model's
  preprocessing applied, bad images turned into skips. Per batch rather than per unit, so that
  memory holds a few batches of inputs whatever the size of a unit.
- here (the driver): units are taken in source order, whatever order they finish in; each
  unit's states are merged into the caller's sinks (`sink.merge(sink.fresh().load_state_dict(
  state))`), then its batches go to the driver-side sinks, then `on_done` (the planner's
  checkpoint). Merged in order, the sinks hold what a local run gives: sums exactly (to float
  rounding), concatenations and ties in the local order.

Unit size. Every unit's states cross the network once and are added here, one after another,
so with states to merge a unit is an eighth of a worker's share: the driver receives about
8 x workers states (Rosetta's float64 tables between ResNet-50's and ViT-S's blocks: 2.2 GB
each), not one per few hundred images. When only rows travel (extraction), a unit is a store
chunk, so finished chunks reach the disk as they come. `images_per_unit` overrides both; what
a dead worker loses, and what an interrupted run redoes, is at most the units in flight.

Store rows go back to the driver, which writes them: the workers of a cluster need not see the
driver's disk, the store stays one writer's (its manifest is never raced), and a pooled row is
small next to what computed it (ResNet-50's 16 blocks mean-pooled: 30 KB of float16 per image).
Writing shards to shared storage would spare that transfer only for full maps (`--pool none`),
at the price of a second writer protocol and a filesystem every node shares.

Faults. Ray Data restarts a worker that dies and retries its unit on the new one; a unit counts
only when its output reaches the driver, which ignores a second copy of a unit it already has,
so no batch is lost or counted twice. A small bookkeeping actor counts the attempts of each
unit: a unit that has killed `max_retries + 1` workers (one image that exhausts memory, say)
stops the run, named, instead of looping. Decoding tasks are retried by Ray itself. A run
interrupted as a whole resumes through the planner, as a local one does: the store's finished
chunks, the sinks' checkpoints.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import math
import operator
import pickle
import socket
import time
import warnings
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Sequence

import numpy as np
import torch

from ..engine import (Decoder, RunSummary, autocast_context, count_batch, forward_batch,
                      move_zoo, plan_batches, progress_bar, running_order, tap_infos)
from ..errors import BackendError, InputError, ZoolensError
from ..sinks import Batch, Need, Sink
from ..sources import ImageSource
from ..store import default_chunk_size
from ..zoo.model import Model
from .base import Backend

__all__ = ["RayBackend", "INSTALL_HINT"]

log = logging.getLogger("zoolens")

INSTALL_HINT = "pip install 'zoolens[ray]'"
_PART_BYTES = 256 * 2**20  # a unit's output is cut into parts: Arrow binary values stay < 2 GiB
_UNITS_PER_WORKER = 8  # with states to merge: units per worker (module docstring)
_MAX_PREFETCH = 64  # batches a worker may have decoding ahead of its models


def _ray():
    """The `ray` module, or one line saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is the part zoolens uses)
    except ImportError:
        raise BackendError(f"--backend ray needs Ray (Ray Data), which is not installed here: "
                           f"{INSTALL_HINT}") from None
    return ray


@dataclass
class RayBackend(Backend):
    """Run a pass on a Ray cluster (Ray Data): decoding in tasks, the zoo in an actor pool.

    address: "auto" (the cluster this machine belongs to, `ray start`), "HOST:PORT" or
        "ray://HOST:10001"; None starts a local cluster for this process (or uses the one
        `ray.init` already connected to).
    workers: model workers (actors). Default: one per GPU share, else half the cluster's CPUs.
    gpus_per_worker: GPUs per worker, fractions allowed (0.5: two workers share a GPU).
        Default: 1 when the cluster has GPUs (and `device` is not "cpu"), else 0.
    cpus_per_worker: CPUs per worker, fractions allowed; PyTorch uses that many threads
        (rounded up). Default: at most 1, leaving one CPU to the decoding tasks.
    images_per_unit: images per unit of work. Default: a store chunk (about 256 images), grown
        to an eighth of a worker's share when the sinks have states to merge (each unit's
        states travel to the driver). A dead worker loses at most its unit.
    max_retries: how many dead workers one unit may cost before the run stops.
    """

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float | None = None
    images_per_unit: int | None = None
    max_retries: int = 3
    name: ClassVar[str] = "ray"

    def __post_init__(self) -> None:
        def bad(flag, value, what):
            raise InputError(f"{flag} {value!r}: {what}")

        if self.workers is not None and (isinstance(self.workers, bool) or int(self.workers) !=
                                         self.workers or self.workers < 1):
            bad("--workers", self.workers, "Ray needs at least 1 model worker")
        if self.gpus_per_worker is not None and not self.gpus_per_worker >= 0:
            bad("--gpus-per-worker", self.gpus_per_worker, "give 0 or more (fractions allowed)")
        if self.cpus_per_worker is not None and not self.cpus_per_worker > 0:
            bad("cpus_per_worker", self.cpus_per_worker, "give more than 0 (fractions allowed)")
        if self.images_per_unit is not None and not (int(self.images_per_unit) ==
                                                     self.images_per_unit >= 1):
            bad("images_per_unit", self.images_per_unit, "give a positive number of images")
        if not (int(self.max_retries) == self.max_retries >= 0):
            bad("max_retries", self.max_retries, "give 0 or more")
        _ray()  # Ray missing: say so now, before anything runs

    # -- the cluster -------------------------------------------------------------------------

    def connect(self) -> None:
        """Attach to the cluster at `address`, or start a local one (once per process)."""
        ray = _ray()
        if not ray.is_initialized():
            if self.address is None:
                log.info("starting a local Ray cluster for this run")
                _init(ray)
            else:
                _reachable(self.address)
                try:
                    _init(ray, address=self.address)
                except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
                    raise BackendError(
                        f"--address {self.address}: no Ray cluster answers there "
                        f"({_first_line(exc)}); start one with `ray start --head` (then "
                        "--address auto on its machines), or leave --address out to start a "
                        "local one") from None
        # no per-run execution plans and progress lines, no note that the bars are off
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        bars = logging.getLogger("ray.data._internal.progress")
        if not any(isinstance(f, _NoBarsNote) for f in bars.filters):
            bars.addFilter(_NoBarsNote())

    def load_device(self, device) -> str:
        # the driver runs no model: it loads them on the CPU (a head node without a GPU works)
        # and merges the workers' states there
        return "cpu"

    def _placement(self, ray, device) -> tuple[int, float, float, float, float]:
        """(workers, CPUs and GPUs per worker, CPUs per decoding task, CPUs left to decoding)
        for this cluster; a request the cluster cannot meet is an error here, not a run that
        waits forever."""
        have = ray.cluster_resources()
        cpus, gpus = float(have.get("CPU", 0)), float(have.get("GPU", 0))
        kind = torch.device(device).type if device is not None else None
        gpw = self.gpus_per_worker
        if gpw is None:
            gpw = 1.0 if gpus > 0 and kind in (None, "cuda") else 0.0
        if kind == "cuda" and gpw == 0:
            raise InputError(f"--device {device}: Ray workers see a GPU only when they hold one; "
                             "give --gpus-per-worker (e.g. 1, or 0.5 to share a GPU)")
        if gpw > 0 and gpus == 0:
            raise BackendError(f"--gpus-per-worker {gpw:g}: the Ray cluster has no GPU; give "
                               "--gpus-per-worker 0")
        workers = self.workers or (max(1, int(gpus // gpw)) if gpw > 0 else max(1, int(cpus // 2)))
        if gpw * workers > gpus + 1e-9:
            raise BackendError(f"--workers {workers} x --gpus-per-worker {gpw:g} needs "
                               f"{gpw * workers:g} GPUs; the Ray cluster has {gpus:g}")
        cpw = self.cpus_per_worker
        if cpw is None:
            cpw = min(1.0, (cpus - 1) / workers) if cpus > 1 else cpus / (2 * workers)
        free = cpus - workers * cpw  # left to the decoding tasks once the workers hold theirs
        if free <= 1e-9:
            raise BackendError(f"--workers {workers} x {cpw:g} CPUs leaves no CPU of the "
                               f"cluster's {cpus:g} for decoding the images; use fewer workers "
                               "or fewer CPUs per worker (fractions allowed)")
        return workers, cpw, gpw, min(1.0, free), free

    # -- a pass ------------------------------------------------------------------------------

    def run(self, models: Sequence[Model], source: ImageSource, need: Need, sinks: Sequence[Sink],
            *, indices: Iterable[int] | None = None, batch_size: int = 32,
            chunk_size: int | None = None, device=None, amp: bool = False, progress: bool = True,
            desc: str = "extracting",
            on_done: Callable[[list[int]], None] | None = None) -> RunSummary:
        zoo = running_order(models, source)
        order = list(range(len(source))) if indices is None else [int(i) for i in indices]
        summary = RunSummary(device="ray")
        if not order:
            return summary
        self.connect()
        ray = _ray()
        workers, cpw, gpw, decode_cpus, free = self._placement(ray, device)
        remote = [s for s in sinks if not s.on_driver]
        here = [s for s in sinks if s.on_driver]
        batches = plan_batches(order, batch_size, chunk_size)
        units = _units(batches, self._unit_images(len(order), batch_size, chunk_size, workers,
                                                  merging=bool(remote)))
        ship = functools.reduce(operator.or_, [s.need for s in here], Need())
        tap_infos(zoo, need)  # the dry run describing the layers, once, before shipping
        move_zoo(zoo, torch.device("cpu"))  # shipped as CPU tensors: any worker can load them
        decoder_ref = ray.put(Decoder(source, zoo, need))
        attempts = _attempts_actor().remote()
        job = _Job(zoo=zoo, source=source, need=need, ship=ship,
                   sinks=[s.fresh() for s in remote], device=None if device is None else
                   str(device), amp=amp, threads=max(1, math.ceil(cpw)),
                   attempts=attempts, max_attempts=self.max_retries + 1, units=units,
                   decoder=[decoder_ref], decode_cpus=decode_cpus,
                   # decoding ahead: the CPUs left to each worker's decoding, at least 2 batches
                   prefetch=max(2, min(_MAX_PREFETCH,
                                       int(free / workers / decode_cpus))))
        job_ref = ray.put(job)
        log.info("ray: %d units of about %d images on %d worker(s) (%g CPU, %g GPU each)",
                 len(units), len(order) / len(units), workers, cpw, gpw)
        bar = progress_bar(len(order), progress, desc)
        start = time.perf_counter()
        try:
            # Ray Data copies its settings object per dataset, which sets (and warns about) its
            # own deprecated fields: nothing a zoolens user can act on
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                data = self._dataset(ray, len(units), job_ref, workers, cpw, gpw)
                self._gather(data, units, remote, here, summary, bar, on_done)
        except ZoolensError:
            raise
        except Exception as exc:
            cause = _zoolens_cause(exc)
            if cause is not None:
                raise cause from None
            raise BackendError(f"the Ray run failed: {_first_line(exc)}") from exc
        finally:
            bar.close()
            summary.seconds = time.perf_counter() - start
            redone = ray.get(attempts.redone.remote())
            ray.kill(attempts)
        for unit, tries in sorted(redone.items()):
            first, last = units[unit][0][0], units[unit][-1][-1]
            log.warning("ray: a worker died; unit %d (images %d..%d) was redone (%d attempts)",
                        unit, first, last, tries)
        summary.device = f"ray ({workers} workers, {gpw:g} GPU and {cpw:g} CPU each)"
        summary.redone = sorted(redone)
        return summary

    def _unit_images(self, n: int, batch_size: int, chunk_size: int | None, workers: int, *,
                     merging: bool) -> int:
        """Images per unit: `images_per_unit`, else a store chunk, grown to an eighth of a
        worker's share when there are states to merge (module docstring)."""
        if self.images_per_unit:
            return int(self.images_per_unit)
        chunk = chunk_size or default_chunk_size(n, batch_size)
        if not merging:
            return chunk
        share = -(-n // (_UNITS_PER_WORKER * workers))
        return chunk * max(1, -(-share // chunk))

    @staticmethod
    def _dataset(ray, n_units: int, job_ref, workers: int, cpw: float, gpw: float):
        """unit ids -> the actor pool of ZooWorkers."""
        # blocks made here (no read task, which would need a whole CPU of its own), one per
        # unit so that units spread over the workers
        items = [{"id": u} for u in range(n_units)]
        try:
            data = ray.data.from_items(items, override_num_blocks=n_units)
        except TypeError:  # Ray < 2.10 names it `parallelism`
            data = ray.data.from_items(items, parallelism=n_units)
        data = data.map_batches(_ZooWorker, batch_size=1, fn_constructor_args=([job_ref],),
                                compute=ray.data.ActorPoolStrategy(size=workers),
                                num_cpus=cpw, num_gpus=gpw)
        # this dataset's settings only (the process' Ray Data defaults stay the user's):
        data.context.enable_progress_bars = False  # zoolens draws its own bar
        if hasattr(data.context, "raise_original_map_exception"):  # newer Ray Data
            data.context.raise_original_map_exception = True  # a worker's InputError, as itself
        return data

    @staticmethod
    def _gather(data, units, remote: list[Sink], here: list[Sink], summary: RunSummary, bar,
                on_done) -> None:
        """Take the units' outputs as they come, merge them in source order."""
        parts: dict[int, dict[int, bytes]] = {}
        ready: dict[int, dict] = {}
        following = 0  # the next unit to merge
        for row in data.iter_rows():
            unit, part, count = int(row["unit"]), int(row["part"]), int(row["parts"])
            if unit < following or unit in ready:
                continue  # a second copy of a unit already here: never counted twice
            parts.setdefault(unit, {})[part] = row["payload"]
            if len(parts[unit]) < count:
                continue
            got = parts.pop(unit)
            ready[unit] = pickle.loads(b"".join(got[k] for k in range(count)))
            while following in ready:
                _absorb(ready.pop(following), remote, here, summary, bar)
                if on_done is not None:
                    on_done([i for batch in units[following] for i in batch])
                following += 1
        if following != len(units):
            missing = len(units) - following
            raise BackendError(f"the Ray run ended with {missing} of {len(units)} units "
                               "missing; rerun the same command (finished work is kept)")


def _absorb(payload: dict, remote: list[Sink], here: list[Sink], summary: RunSummary,
            bar) -> None:
    """One unit's output into the sinks: the workers' states merged, then the driver-side sinks
    fed its batches, in order."""
    for sink, state in zip(remote, payload["states"], strict=True):
        sink.merge(sink.fresh().load_state_dict(state))
    for batch in payload["batches"]:
        for sink in here:
            sink.update(batch)
        count_batch(summary, batch, bar)
    summary.forwards += payload["forwards"]
    summary.nodes[payload["node"]] = summary.nodes.get(payload["node"], 0) + 1


def _units(batches: list[list[int]], images: int) -> list[list[list[int]]]:
    """Consecutive batches grouped into units of at most `images` images (at least one batch)."""
    units: list[list[list[int]]] = []
    size = 0
    for batch in batches:
        if units and size + len(batch) <= images:
            units[-1].append(batch)
            size += len(batch)
        else:
            units.append([batch])
            size = len(batch)
    return units


# ---------------------------------------------------------------------------------------------
# connecting


def _init(ray, **kwargs) -> None:
    ray.init(include_dashboard=False, logging_level=logging.WARNING, **kwargs)


def _reachable(address: str, timeout: float = 5.0) -> None:
    """A quick TCP check of HOST:PORT (or ray://HOST:PORT) before Ray's own, slower retries."""
    if address == "auto":
        return
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise InputError(f"--address {address!r}: give auto, HOST:PORT (the head's GCS port, "
                         "6379 by default) or ray://HOST:10001")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise BackendError(f"--address {address}: nothing answers there ({exc.strerror or exc}); "
                           "start the cluster with `ray start --head` on that machine, or leave "
                           "--address out to start a local one") from None


class _NoBarsNote(logging.Filter):
    """Ray Data's warning that its progress bars are off: zoolens turned them off, for its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Progress bars disabled" not in record.getMessage()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _zoolens_cause(exc: BaseException) -> ZoolensError | None:
    """The zoolens error a worker raised, from inside Ray's wrappers (None if there is none).
    Ray's `RayTaskError(InputError)` is itself an InputError, but with the worker's traceback
    in its text: the original is its `cause`, or further down the chain."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(cause, ZoolensError):
            return cause
        if isinstance(e, ZoolensError) and not hasattr(e, "cause"):
            return e
        stack += [cause, e.__cause__, e.__context__]
    return None


# ---------------------------------------------------------------------------------------------
# what runs on the cluster


@dataclass
class _Job:
    """Everything a worker needs, shipped once through the object store (one pickle, so the
    models shared by the source, the zoo and the sinks stay one object each)."""

    zoo: list[Model]
    source: ImageSource
    need: Need
    ship: Need  # what the driver-side sinks need of each batch
    sinks: list[Sink]  # empty sinks; each unit feeds fresh copies of them
    device: str | None
    amp: bool
    threads: int
    attempts: object  # the _Attempts actor
    max_attempts: int
    units: list[list[list[int]]]
    decoder: list  # [ObjectRef of the Decoder], boxed: fetched once per process, not per task
    decode_cpus: float  # per decoding task
    prefetch: int  # batches decoding ahead of the models, per worker


_CACHE: dict[str, object] = {}


def _fetch(ref):
    """A shipped object, deserialised once per worker process (tasks reuse processes)."""
    import ray

    key = ref.hex()
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = ray.get(ref)
    return _CACHE[key]


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _decode_batch(box: list, indices: list[int]) -> list:
    """A Ray task: one batch decoded and preprocessed for every model."""
    decoder: Decoder = _fetch(box[0])
    return [decoder.decode(i) for i in indices]


@functools.cache
def _decode_task(cpus: float):
    import ray

    return ray.remote(num_cpus=cpus)(_decode_batch)


def _worker_device(requested: str | None, ray) -> torch.device:
    if requested is not None:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"--device {requested}: this Ray worker sees no GPU; give "
                               "--gpus-per-worker")
        return device
    return torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")


class _ZooWorker:
    """A Ray actor: the zoo loaded once; per unit, every batch through every model into fresh
    sinks; returns the unit's sink states and the driver-side sinks' share of its batches."""

    def __init__(self, box: list):
        import ray

        job: _Job = ray.get(box[0])
        torch.set_num_threads(job.threads)
        self.job = job
        self.device = _worker_device(job.device, ray)
        move_zoo(job.zoo, self.device)
        self.infos = tap_infos(job.zoo, job.need)
        self.decoder = Decoder(job.source, job.zoo, job.need)  # windows of drawn images
        self.autocast = autocast_context(self.device, job.amp)
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ray

        out: dict[str, list] = {"unit": [], "part": [], "parts": [], "payload": []}
        for unit in rows["id"]:
            unit = int(unit)
            tries = ray.get(self.job.attempts.start.remote(unit))
            if tries > self.job.max_attempts:
                first, last = self.job.units[unit][0][0], self.job.units[unit][-1][-1]
                raise BackendError(f"images {first}..{last} killed {tries - 1} Ray workers "
                                   "(out of memory?); run them with --backend local to see why, "
                                   "or use a smaller --batch-size")
            data = pickle.dumps(self._unit(self.job.units[unit]), protocol=5)
            cut = [data[k:k + _PART_BYTES] for k in range(0, len(data), _PART_BYTES)] or [b""]
            out["unit"] += [unit] * len(cut)
            out["part"] += list(range(len(cut)))
            out["parts"] += [len(cut)] * len(cut)
            out["payload"] += cut
        return {"unit": np.asarray(out["unit"], np.int64), "part": np.asarray(out["part"], np.int64),
                "parts": np.asarray(out["parts"], np.int64), "payload": _objects(out["payload"])}

    def _decoded(self, batches: list[list[int]]):
        """The unit's batches decoded by Ray tasks, in order, `prefetch` batches ahead."""
        import ray

        task = _decode_task(self.job.decode_cpus)
        pending: collections.deque = collections.deque()
        ahead = iter(batches)
        for batch in itertools.islice(ahead, self.job.prefetch):
            pending.append(task.remote(self.job.decoder, batch))
        while pending:
            items = ray.get(pending.popleft())
            for batch in itertools.islice(ahead, 1):
                pending.append(task.remote(self.job.decoder, batch))
            yield items

    def _unit(self, batches: list[list[int]]) -> dict:
        job = self.job
        sinks = [s.fresh() for s in job.sinks]
        shipped, forwards = [], 0
        for items in self._decoded(batches):
            batch = forward_batch(job.zoo, job.source, items, job.need, self.infos, self.device,
                                  self.autocast, self.decoder)
            forwards += len(job.zoo) if batch.indices else 0
            for sink in sinks:
                sink.update(batch)
            shipped.append(_for_driver(batch, job.ship))
        return {"states": [s.state_dict() for s in sinks], "batches": shipped,
                "forwards": forwards, "node": self.node}


def _for_driver(batch: Batch, ship: Need) -> Batch:
    """The part of a batch the driver-side sinks need (features on the CPU)."""
    features = {m: {layer: {how: batch.features[m][layer][how].detach().cpu() for how in hows}
                    for layer, hows in by.items()}
                for m, by in ship.taps.items() if m in batch.features}
    return Batch(batch.indices, batch.ids, features, skipped=batch.skipped, notes=batch.notes,
                 sizes=batch.sizes, windows=batch.windows if ship.windows else {},
                 images=batch.images if ship.images else None)


@functools.cache
def _attempts_actor():
    """The bookkeeping actor class (defined on first use: Ray is imported only then)."""
    import ray

    @ray.remote(num_cpus=0)
    class Attempts:
        """Counts how often each unit was started: more than once means a worker died."""

        def __init__(self):
            self.count: dict[int, int] = {}

        def start(self, unit: int) -> int:
            self.count[unit] = self.count.get(unit, 0) + 1
            return self.count[unit]

        def redone(self) -> dict[int, int]:
            return {u: n for u, n in self.count.items() if n > 1}

    return Attempts
