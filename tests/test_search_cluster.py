"""A two-node Ray cluster on one machine, each node declaring one GPU (there is no CUDA here)."""
import pytest

from data_pipeline.errors import UserError
from search.selection.results import load_trials
from search.settings.space import parse_spec
from search.settings.schema import DEVICE, GPU_IDS, NODE_ID, REPORTED_AT
from search.tune.tuner import run_search

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_node_cluster():
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # leave the session's local instance; this module needs its own cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 1})
    cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def _spec(demo_cfg, epochs=3):
    return parse_spec({"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}, "train.batch_size": {"choice": [16, 32, 64]}},
                       "fixed": demo_cfg.with_overrides({"epochs": epochs, "patience": 0}).to_dict(),
                       "search": {"grace_period": min(3, epochs)}}, "cluster test")


def test_local_storage_refused_on_multi_node(two_node_cluster, demo_cfg, tmp_path):
    with pytest.raises(UserError) as e:
        run_search(_spec(demo_cfg), 2, "refused", str(tmp_path), address=two_node_cluster.address, log=lambda *a: None)
    assert "the cluster has 2 nodes" in str(e.value) and "s3://" in str(e.value) and "--shared-storage" in str(e.value)


def test_one_gpu_per_trial_on_two_nodes(two_node_cluster, demo_cfg, tmp_path):
    run_search(_spec(demo_cfg), 4, "cluster", str(tmp_path), address=two_node_cluster.address, shared_storage=True,
               verbose=0, log=lambda *a: None)
    trials = load_trials(tmp_path / "cluster")
    assert len(trials) == 4 and all(t.state == "TERMINATED" and len(t.results) == 3 for t in trials)
    spans = []
    for t in trials:
        r0, r1 = t.results[0], t.results[-1]
        assert r0[DEVICE] == "cpu"  # a GPU was reserved, CUDA is absent: the trainable fell back to the CPU
        assert r0[GPU_IDS] in ("0",)  # each node numbers its own GPUs
        spans.append((r0[REPORTED_AT] - r0["time_this_iter_s"], r1[REPORTED_AT], (r0[NODE_ID], r0[GPU_IDS])))
    assert len({s[2][0] for s in spans}) == 2  # both nodes were used
    for start, _, _ in spans:  # the trials running at the moment each one starts
        running = [b for b in spans if b[0] < start + 0.5 < b[1]]
        assert len(running) <= 2, spans  # never more than two trials at once
        assert len({b[2] for b in running}) == len(running), spans  # each on its own (node, GPU)


def test_fractional_gpus_pack_two_trials_per_gpu(two_node_cluster, demo_cfg, tmp_path):
    spec = _spec(demo_cfg, epochs=2)
    spec.search.gpus_per_trial = 0.5
    run_search(spec, 6, "packed", str(tmp_path), address=two_node_cluster.address, shared_storage=True,
               verbose=0, log=lambda *a: None)
    trials = load_trials(tmp_path / "packed")
    assert len(trials) == 6 and all(t.state == "TERMINATED" for t in trials)
    # reported_at, not Ray's whole-second timestamp: on a warm worker the next trial starts within a second
    spans = [(t.results[0][REPORTED_AT] - t.results[0]["time_this_iter_s"], t.results[-1][REPORTED_AT],
              (t.results[0][NODE_ID], t.results[0][GPU_IDS])) for t in trials]
    most = 0
    for start, _, _ in spans:  # the trials running at each moment one starts (a trial that runs long may overlap
        at = start + 0.5  # several short ones that follow each other on the same GPU: that is not sharing)
        running = [b for b in spans if b[0] < at < b[1]]
        per_gpu = {}
        for b in running:
            per_gpu[b[2]] = per_gpu.get(b[2], 0) + 1
        assert max(per_gpu.values(), default=0) <= 2, spans  # half a GPU each: at most two trials share one
        most = max(most, len(running))
    assert most > 2  # packing let more trials run at once than there are GPUs


def test_every_node_runs_the_drivers_versions(two_node_cluster):
    """`mmsa search --address` compares each node's versions with the driver's (a zero-CPU task per node)."""
    from search.tune.ray_cluster import check_cluster_versions, local_versions, node_versions, version_mismatches

    nodes = node_versions()
    assert len(nodes) == 2 and all(v == local_versions() for v in nodes.values())
    check_cluster_versions(two_node_cluster.address)  # same environment: accepted
    other = {**local_versions(), "ray": "2.59.0"}
    bad = version_mismatches(local_versions(), {**nodes, "10.0.0.9": other})
    assert bad == [f"node 10.0.0.9: ray 2.59.0 (this machine: {local_versions()['ray']})"]


@pytest.mark.parametrize("search, flag", [({"cpus_per_trial": 3.0}, "--cpus-per-trial"),
                                          ({"gpus_per_trial": 2.0}, "--gpus-per-trial")])
def test_a_trial_must_fit_on_one_node_not_on_the_sum(two_node_cluster, demo_cfg, search, flag):
    """Two nodes of 2 CPUs and 1 GPU: 4 CPUs and 2 GPUs in all, but a trial of 3 CPUs or 2 GPUs fits on neither."""
    from search.tune.ray_cluster import capacity

    spec = _spec(demo_cfg)
    for k, v in search.items():
        setattr(spec.search, k, v)
    with pytest.raises(UserError) as e:
        capacity(spec)
    assert flag in str(e.value) and str(e.value).count("2 CPUs, 1 GPU,") == 2  # each node's amounts
    spec.search.cpus_per_trial, spec.search.gpus_per_trial = 2.0, 1.0
    assert capacity(spec) == ({"cpu": 2.0, "gpu": 1.0}, 2)  # one trial per node
