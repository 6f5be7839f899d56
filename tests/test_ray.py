"""The Ray backend gives the local backend's results (which the other tests check against
references): the same feature store (files, rows, order, skips, manifest), every sink's state,
Rosetta's correlations, buddies, sets and concepts, CKA; a worker killed mid-run changes
nothing, and an interrupted run resumes.

One local Ray cluster for the module (`ray.init(num_cpus=4)`, fractional CPUs per worker: with
whole CPUs per actor on a 2-core machine the decoding tasks starve). Each Ray pass costs a few
seconds of actor start-up here, so the tests share passes: one pass feeds every sink at once."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import numpy as np
import pytest
import ray
import torch
from typer.testing import CliRunner

import zoolens
import zoolens.plan
from zoolens.analyses.similarity import compare
from zoolens.backends import LocalBackend, RayBackend, resolve_backend
from zoolens.cli import app
from zoolens.sinks import Need, Sink
from zoolens.sources import TensorSource
from zoolens.store import StoreWriter

from conftest import MESSY_SKIPPED
from test_sinks import BATCH, VIT, _sinks

# the sinks defined here travel to the workers by value (the tests folder is not importable there)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _ray_backend(workers: int = 1, **kw) -> RayBackend:
    """Half a CPU per worker. One worker where two would only cost another actor start-up
    (seconds each on 2 cores): merging per unit is exercised by several units either way."""
    return RayBackend(workers=workers, cpus_per_worker=0.5, **kw)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return zoolens.load(VIT, pretrained=False, device="cpu")


@pytest.fixture(scope="module")
def cnn(tiny_cnn_file):
    return zoolens.load(f"file:{tiny_cnn_file}:tiny_cnn", pretrained=False, device="cpu",
                        name="cnn")


@pytest.fixture(scope="module")
def scenes_with_a_bad_one():
    """16 scenes, one of them too small to use (a skip)."""
    scenes = zoolens.open_source("synthetic:scenes?n=16&size=32&seed=4")
    images = [scenes.decode(i).image for i in range(16)]
    images[2] = images[2].resize((4, 4))
    return TensorSource(images, labels=scenes.labels, ids=scenes.ids)


@contextlib.contextmanager
def one_thread():
    """PyTorch's float32 kernels round differently with another thread count (about 1e-7); the
    workers here run one thread each (0.5 CPU), so the local reference does too, and the
    comparison sees the backend alone."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _close(a, b, tol=1e-9):
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------
# the feature store


def test_extract_on_ray_writes_the_local_store_and_resumes(tmp_path, messy_dir, tiny_cnn_file,
                                                          monkeypatch):
    common = ["extract", "-m", VIT, "-m", f"file:{tiny_cnn_file}:tiny_cnn", "-i",
              str(messy_dir), "--layers", "blocks", "--no-pretrained", "-b", "2",
              "--chunk-size", "2"]
    runner = CliRunner()

    def invoke(args):
        torch.manual_seed(0)  # the same random weights in every run
        return runner.invoke(app, common + args)

    local = invoke(["-o", str(tmp_path / "local"), "--workers", "0"])
    assert local.exit_code == 0, local.output

    # an interrupted Ray run: the writer (on the driver) stops after two chunks' batches
    real, calls = StoreWriter.update, []

    def stop_after_two_batches(self, batch):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(batch.indices)
        real(self, batch)

    monkeypatch.setattr(StoreWriter, "update", stop_after_two_batches)
    cut = invoke(["-o", str(tmp_path / "ray"), "--backend", "ray", "--workers", "1"])
    assert cut.exit_code == 130, cut.output  # interrupted: finished chunks kept
    partial = zoolens.open_store(tmp_path / "ray")
    assert not partial.complete and partial.manifest["done_chunks"] == [0, 1]
    monkeypatch.setattr(StoreWriter, "update", real)

    resumed = invoke(["-o", str(tmp_path / "ray"), "--backend", "ray", "--workers", "1",
                      "--json"])
    assert resumed.exit_code == 0, resumed.output
    a, b = zoolens.open_store(tmp_path / "local"), zoolens.open_store(tmp_path / "ray")
    assert b.complete and b.manifest["done_chunks"] == a.manifest["done_chunks"]
    assert b.ids == a.ids and b.labels == a.labels
    assert b.skipped == a.skipped and {s["id"] for s in b.skipped} == MESSY_SKIPPED
    assert b.manifest["notes"] == a.manifest["notes"] and b.manifest["notes"]
    assert b.config == a.config
    files = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*.npy"))
    assert files == sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*.npy"))
    assert (a.sizes[a.valid] > 0).all()  # decoded sizes came back from the workers too
    np.testing.assert_array_equal(b.sizes, a.sizes)
    for model in a.models:
        for layer in a.layers(model):
            x, y = a.features(model, layer), b.features(model, layer)
            assert np.abs(x).sum() > 0
            np.testing.assert_allclose(y.astype(np.float32), x.astype(np.float32),
                                       rtol=1e-3, atol=1e-3)  # float16 on disk
    summary = json.loads(resumed.stdout)
    assert summary["extracted"] == int(a.valid.sum()) == 5  # 4 bad files, 1 not an image


# ---------------------------------------------------------------------------------------------
# every sink, merged from the workers


def test_workers_read_images_from_a_url_themselves(vit, photo_dir, tmp_path):
    """An fsspec URL (here file://, as s3:// would be) is read by the workers' decoding
    tasks, not through the driver: the store equals a local run's on the same files."""
    kw = dict(layers="blocks.1", batch_size=2, progress=False, dtype="float32")
    with one_thread():
        local = zoolens.extract(vit, photo_dir, out=tmp_path / "local", num_workers=0, **kw)
        remote = zoolens.extract(vit, photo_dir.as_uri(), out=tmp_path / "ray",
                                 backend=_ray_backend(), **kw)
    assert remote.ids == local.ids and remote.labels == local.labels
    np.testing.assert_array_equal(np.array(remote.features(VIT, "blocks.1")),
                                  np.array(local.features(VIT, "blocks.1")))


def test_every_sink_on_ray_equals_the_local_run(vit, scenes_with_a_bad_one, tmp_path):
    """One pass feeds every analysis' sink (and a store writer, and the flat CKA that stays on
    the driver); each ends where the local pass leaves it."""
    source = scenes_with_a_bad_one
    made = _sinks(vit, len(source))
    local = [make() for make, _ in made.values()]
    remote = [make() for make, _ in made.values()]
    assert any(s.on_driver for s in remote) and not all(s.on_driver for s in remote)
    kw = dict(batch_size=BATCH, progress=False, store=None)
    with one_thread():
        zoolens.plan.run([vit], source, local, backend="local", num_workers=0, **kw)
    summary = zoolens.plan.run([vit], source, remote, **kw,
                               backend=_ray_backend(workers=2, images_per_unit=8))
    assert summary.images == 15 and len(summary.skipped) == 1 and summary.forwards == 4
    for (name, (_, read)), a, b in zip(made.items(), local, remote, strict=True):
        for got, want in zip(read(b), read(a), strict=True):
            np.testing.assert_allclose(np.asarray(got, float), np.asarray(want, float),
                                       rtol=1e-9, atol=1e-9, err_msg=name)


# ---------------------------------------------------------------------------------------------
# Rosetta and CKA


def test_rosetta_and_cka_on_ray_give_the_local_results(vit, cnn, tmp_path):
    """Rosetta as in the paper: a generator draws the images (it runs first in each batch, on
    the workers, and joins the zoo), a classifier and a ViT look at them."""
    from zoolens.demo import DEMO_ZOO

    zoo = [zoolens.load(DEMO_ZOO["classifier"], device="cpu"), vit]
    kw = dict(generator=DEMO_ZOO["generator"], n_generated=20, layers="blocks", batch_size=4,
              progress=False, concepts=3, mode="relaxed")
    with one_thread():
        local = zoolens.rosetta(zoo, num_workers=0, out=tmp_path / "local", **kw)
    remote = zoolens.rosetta(zoo, backend=_ray_backend(images_per_unit=8),
                             out=tmp_path / "ray", **kw)
    assert remote.images == local.images == 20 and len(remote.models) == 3
    assert [s["units"] for s in remote.sets] == [s["units"] for s in local.sets] and local.sets
    _close([s["mean_correlation"] for s in remote.sets],
           [s["mean_correlation"] for s in local.sets])
    assert [c["sets"] for c in remote.concepts] == [c["sets"] for c in local.concepts]
    assert [c["top_images"] for c in remote.concepts] == [c["top_images"] for c in local.concepts]
    assert remote.dead_units == local.dead_units
    for pair, buddies in local.pairs.items():
        assert [p["units"] for p in remote.pairs[pair]] == [p["units"] for p in buddies]
        _close([p["correlation"] for p in remote.pairs[pair]],
               [p["correlation"] for p in buddies])

    images = "synthetic:scenes?n=20&size=32&seed=1"
    cka = dict(layers_a="blocks", metric="cka", batch_size=4, progress=False)
    with one_thread():
        want = compare(vit, cnn, images, num_workers=0, **cka)
    got = compare(vit, cnn, images, backend=_ray_backend(images_per_unit=8), **cka)
    assert got.images == want.images == 20 and got.layers_b == want.layers_b
    _close(got.array, want.array)


# ---------------------------------------------------------------------------------------------
# faults


class _KillOnce(Sink):
    """Exits its worker process hard at its first batch while `flag` exists (deleting it
    first); counts the batches it saw, which must add up to each batch once."""

    def __init__(self, flag: str):
        self.flag = flag
        self.need = Need()
        self.add_state("batches", [], merge="cat")

    def update(self, batch):
        if os.path.exists(self.flag):
            os.unlink(self.flag)
            os._exit(1)  # the worker dies as in a crash: no exception, no cleanup
        self.batches.append(batch.indices)

    def result(self):
        return self.batches


def test_a_worker_killed_mid_run_changes_nothing(vit, cnn, tmp_path):
    from zoolens.analyses.rosetta import CorrelationSink

    source = zoolens.open_source("synthetic:scenes?n=24&size=32&seed=2")
    layers = {vit.name: ["blocks.0", "blocks.1"], cnn.name: ["2", "3"]}
    jobs = [(vit.name, cnn.name, None)]
    flag = tmp_path / "kill"
    want = [CorrelationSink(layers, 8, jobs, track=True), _KillOnce(str(flag))]
    with one_thread():
        zoolens.plan.run([vit, cnn], source, want, batch_size=4, num_workers=0, progress=False)
    flag.touch()
    got = [CorrelationSink(layers, 8, jobs, track=True), _KillOnce(str(flag))]
    summary = zoolens.plan.run([vit, cnn], source, got, batch_size=4, progress=False,
                               backend=_ray_backend(workers=2, images_per_unit=8),
                               checkpoint=tmp_path / "state.pt", key="k", every=8)
    assert not flag.exists()  # a worker did die
    saved = torch.load(tmp_path / "state.pt", weights_only=False)  # the planner's checkpoint
    assert saved["done"] == list(range(24)) and saved["sinks"][1]["batches"] == want[1].batches
    assert len(summary.redone) == 1  # its unit was redone, once
    assert got[1].result() == want[1].result()  # every batch counted once, in order
    assert summary.images == 24 and summary.forwards == 6 * 2  # 6 batches, 2 models
    acc_got, acc_want = got[0].acc[jobs[0]], want[0].acc[jobs[0]]
    assert acc_got.n == acc_want.n
    _close(acc_got.correlation(), acc_want.correlation())
    torch.testing.assert_close(got[0].top[vit.name].index, want[0].top[vit.name].index)


# ---------------------------------------------------------------------------------------------
# the backend's settings and errors


def test_backend_names_and_objects_resolve(monkeypatch):
    assert resolve_backend(None, num_workers=3) == LocalBackend(num_workers=3)
    assert resolve_backend("ray", num_workers=3).workers == 3
    assert resolve_backend(RayBackend(workers=2), num_workers=5).workers == 2  # set wins
    with pytest.raises(zoolens.InputError, match="backend 'spark'"):
        resolve_backend("spark")
    with pytest.raises(zoolens.InputError, match="--workers 0"):
        RayBackend(workers=0)
    with pytest.raises(zoolens.InputError, match="--gpus-per-worker -1"):
        RayBackend(gpus_per_worker=-1)


def test_requests_the_cluster_cannot_meet_fail_before_running(vit):
    from zoolens.analyses.layerstats import LayerStatsSink

    source = zoolens.open_source("synthetic:scenes?n=4&size=32")
    sink = LayerStatsSink({vit.name: ["blocks.0"]}, {vit.name: {"blocks.0": 192}})
    for backend, match in ((RayBackend(gpus_per_worker=1), "--gpus-per-worker 1: the Ray "
                                                           "cluster has no GPU"),
                           (RayBackend(workers=8, cpus_per_worker=0.5), "leaves no CPU"),
                           (RayBackend(workers=2, cpus_per_worker=0.5, gpus_per_worker=0,
                                       address=None), None)):
        if match is not None:
            with pytest.raises(zoolens.ZoolensError, match=match):
                zoolens.plan.run([vit], source, [sink], backend=backend, progress=False)
    assert sink.images == 0  # nothing ran


def test_worker_errors_come_back_as_one_line(tmp_path):
    """A zoolens error raised inside a worker (here: a model whose preprocessing gives images of
    two sizes) reaches the driver as itself, not as a Ray traceback."""
    zoo = tmp_path / "odd.py"
    zoo.write_text("import torch\n"
                   "from torch import nn\n"
                   "from torchvision.transforms import functional as F\n"
                   "def make(pretrained=True):\n"
                   "    return {'module': nn.Conv2d(3, 4, 3), 'input_size': 32,\n"
                   "            'preprocess': lambda im: F.to_tensor(im)}\n")
    images = [np.zeros((32, 32, 3), np.uint8), np.zeros((40, 40, 3), np.uint8)]
    model = zoolens.load(f"file:{zoo}:make", pretrained=False, device="cpu")
    with pytest.raises(zoolens.InputError, match="images of different sizes"):
        zoolens.extract(model, images, layers="all", out=tmp_path / "x", progress=False,
                        backend=_ray_backend(), batch_size=2)
