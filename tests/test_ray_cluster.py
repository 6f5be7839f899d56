"""The Ray backend on a two-node cluster (`ray.cluster_utils.Cluster`: two raylets on this
machine, one worker on each): `zoolens extract --backend ray --address HOST:PORT` from another
process writes the local backend's store, and Rosetta's correlation sums merged from both nodes
equal the local ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import ray
import torch
from ray.cluster_utils import Cluster

import zoolens
import zoolens.plan
from zoolens.analyses.rosetta import CorrelationSink
from zoolens.backends import RayBackend

VIT = "timm:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=2"
# two CPUs per worker and three per node: each node holds one worker, and one CPU to decode
ONE_PER_NODE = dict(workers=2, cpus_per_worker=2, images_per_unit=4)


@pytest.fixture(scope="module")
def cluster():
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    nodes.add_node(num_cpus=3)
    nodes.wait_for_nodes()
    ray.init(address=nodes.address, logging_level="WARNING")
    yield nodes
    ray.shutdown()
    nodes.shutdown()


def test_extract_from_another_process_through_the_address(cluster, tmp_path, tiny_cnn_file):
    args = ["extract", "-m", f"file:{tiny_cnn_file}:tiny_cnn", "-i",
            "synthetic:scenes?n=12&size=32&seed=3", "--layers", "blocks", "--no-pretrained",
            "-b", "2", "--chunk-size", "4", "--json"]
    local = zoolens.extract(f"file:{tiny_cnn_file}:tiny_cnn", "synthetic:scenes?n=12&size=32&seed=3",
                            layers="blocks", out=tmp_path / "local", batch_size=2, chunk_size=4,
                            pretrained=False, num_workers=0, progress=False)
    code = "import sys; from zoolens.cli import app; sys.argv[0] = 'zoolens'; app()"
    run = subprocess.run([sys.executable, "-c", code, *args, "-o", str(tmp_path / "ray"),
                          "--backend", "ray", "--address", cluster.address, "--workers", "2"],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    assert summary["complete"] and summary["extracted"] == 12
    assert summary["last_run"]["device"].startswith("ray (2 workers")
    remote = zoolens.open_store(tmp_path / "ray")
    assert remote.manifest["done_chunks"] == local.manifest["done_chunks"] == [0, 1, 2]
    assert remote.ids == local.ids and remote.skipped == local.skipped == []
    for layer in local.layers(local.models[0]):
        np.testing.assert_allclose(remote.features(remote.models[0], layer).astype(np.float32),
                                   local.features(local.models[0], layer).astype(np.float32),
                                   rtol=1e-3, atol=1e-3)  # float16 on disk


def test_correlations_merged_from_two_nodes_equal_the_local_ones(cluster, tiny_cnn_file):
    torch.manual_seed(0)
    vit = zoolens.load(VIT, pretrained=False, device="cpu")
    cnn = zoolens.load(f"file:{tiny_cnn_file}:tiny_cnn", pretrained=False, device="cpu",
                       name="cnn")
    source = zoolens.open_source("synthetic:scenes?n=16&size=32&seed=5")
    layers = {vit.name: ["blocks.0", "blocks.1"], cnn.name: ["2", "3"]}
    job = (vit.name, cnn.name, None)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # as each worker (2 CPUs): the same float32 rounding
    try:
        want = CorrelationSink(layers, 8, [job], track=True)
        zoolens.plan.run([vit, cnn], source, [want], batch_size=4, num_workers=0,
                         progress=False)
    finally:
        torch.set_num_threads(threads)
    got = CorrelationSink(layers, 8, [job], track=True)
    summary = zoolens.plan.run([vit, cnn], source, [got], batch_size=4, progress=False,
                               backend=RayBackend(**ONE_PER_NODE))
    assert len(summary.nodes) == 2 and sum(summary.nodes.values()) == 4  # 4 units, both nodes
    assert got.images == want.images == 16 and got.acc[job].n == want.acc[job].n
    np.testing.assert_allclose(got.acc[job].correlation(), want.acc[job].correlation(),
                               rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got.top[cnn.name].index, want.top[cnn.name].index)
