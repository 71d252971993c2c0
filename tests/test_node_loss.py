"""Worker nodes of a multi-node Ray cluster lost while a trial trains on them (all of a node's Ray processes
SIGKILLed, as when a machine dies): the trial is retried on another node from its last checkpoint, and the search ends
with every trial finished and no epoch's result lost or repeated (docs/cluster.md, "When a node is lost")."""
import json
import time

import pytest

from model import metrics as M
from model import run_files as ckpt
from search.experiment.faults import ENV, ENV_DIR, HANG_MARKER, WRITE_HANG_ENV
from search.selection.results import load_trials
from search.settings.schema import NODE_ID
from search.trial.async_checkpoint import POINTER_FILE, STATE_DIR
from searchproc import kill_group, raw_results, start, write_space

pytestmark = pytest.mark.slow

# The head notices a dead node after missed health checks: seconds here instead of Ray's default ~30 s.
FAST_HEALTH_CHECKS = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                      "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}


@pytest.fixture(scope="module")
def head():
    """The head runs the driver and no trial (0 CPUs), so a trial never shares the node that is taken away."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # this module needs its own cluster, not the session's local instance
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": FAST_HEALTH_CHECKS})
    yield cluster
    cluster.shutdown()


@pytest.fixture
def workers(head, tmp_path, monkeypatch):
    """Two worker nodes of one CPU each (one trial each). Started from this process, their raylets and trial workers
    get its environment: the test's faults are set in it first."""
    def add(env: dict):
        for k, v in {ENV_DIR: str(tmp_path), **env}.items():
            monkeypatch.setenv(k, v)
        nodes = [head.add_node(num_cpus=1) for _ in range(2)]
        head.wait_for_nodes()
        return nodes

    yield add
    for node in list(head.worker_nodes):
        head.remove_node(node, allow_graceful=False)


def _wait(cond, proc, what: str, timeout: float = 240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        if proc.poll() is not None:
            raise AssertionError(f"the search ended before {what}: {proc.communicate()[1][-3000:]}")
        time.sleep(0.2)
    kill_group(proc)
    raise AssertionError(f"no {what} after {timeout} s: {proc.communicate()[1][-3000:]}")


def _remove_node_of(head, trial_dir, epoch: int) -> str:
    """Take away the node the trial reported `epoch` from, all its processes SIGKILLed at once."""
    node_id = raw_results(trial_dir)[epoch - 1][NODE_ID]
    (node,) = [n for n in head.worker_nodes if n.node_id == node_id]
    head.remove_node(node, allow_graceful=False)
    return node_id


def test_trial_survives_two_lost_nodes_without_losing_an_epoch(head, workers, tmp_path, demo_cfg):
    """One search of two trials (the same configuration and seed, so the undisturbed trial is the reference):
    1. trial X's node goes while X's training state of epoch 2 is half written (weights on storage, the rest not):
       the retry loads the whole state of epoch 1 that the last reported checkpoint names, never the half-written one;
    2. the node X was retried on goes in the middle of epoch 4, no write in flight: the retry loads the state of
       epoch 2 and continues on a third node."""
    epochs = 4
    workers({ENV: "slow:seed=0:3", WRITE_HANG_ENV: "2"})  # epochs 3 and 4 of seconds, so a node goes mid-epoch
    exp = tmp_path / "rr" / "lost"
    fixed = demo_cfg.with_overrides({"patience": 0, "epochs": epochs}).to_dict()
    space = write_space(tmp_path / "space.yaml", fixed, {"train.lr": {"choice": [2e-3]}},
                        {"grace_period": epochs, "max_failures": 2, "seed": 1, "keep_best_trials": 2})
    proc = start(["search", "--data", demo_cfg.data.data_dir, "--space", str(space), "--num-samples", "2", "--name",
                  "lost", "--storage", str(tmp_path / "rr"), "--address", head.address, "--shared-storage",
                  "--verbose", "0"])
    try:
        marker = tmp_path / HANG_MARKER
        x = exp / _wait(lambda: marker.is_file() and marker.read_text(), proc, "a background write in flight")
        _wait(lambda: len(raw_results(x)) >= 2, proc, "the report of epoch 2")
        half = _wait(lambda: list((x / STATE_DIR).glob(".epoch_000002.tmp*")), proc, "a half-written state")
        assert [p.name for p in half[0].iterdir()] == [ckpt.WEIGHTS]  # weights written, the rest not
        newest = max(x.glob("checkpoint_*"), key=lambda p: p.name)
        pointer = json.loads((newest / POINTER_FILE).read_text())
        assert pointer == {"state": f"{STATE_DIR}/epoch_000001", "reported_epoch": 2}  # the newest whole state
        first = _remove_node_of(head, x, epoch=2)
        head.add_node(num_cpus=1, wait=False)  # the replacement a cluster's autoscaler would start

        _wait(lambda: len(raw_results(x)) >= 3 and (x / STATE_DIR / "epoch_000003").is_dir(), proc,
              "the retry's report and state of epoch 3")  # epoch 4 trains now
        second = _remove_node_of(head, x, epoch=3)
        out, err = proc.communicate(timeout=300)
    except BaseException:  # a failed check: the driver (and its hung trial) must not outlive the test
        kill_group(proc)
        raise
    assert proc.returncode == 0, err[-3000:]

    trials = load_trials(exp)
    assert len(trials) == 2 and all(t.state == "TERMINATED" for t in trials), [(t.trial_id, t.state) for t in trials]
    (hit,) = [t for t in trials if t.path == x]
    (ref,) = [t for t in trials if t.path != x]
    assert hit.failures == 2 and ref.failures == 0
    rows = raw_results(x)
    assert [r[M.EPOCH] for r in rows] == list(range(1, epochs + 1))  # each epoch reported once: none lost or repeated
    nodes = [r[NODE_ID] for r in rows]
    assert nodes[:2] == [first] * 2 and nodes[2] == second and nodes[3] not in (first, second), nodes
    # the same training, exactly, as the undisturbed trial: what each retry loaded was a whole state
    assert [r[M.VAL_LOSS] for r in rows] == [r[M.VAL_LOSS] for r in raw_results(ref.path)]
    said = [line for line in err.splitlines() if line.startswith(f"trial {hit.trial_id}: the node it ran on")]
    assert len(said) == 2 and all(f"(node {n[:8]}), was lost" in line for n, line in zip((first, second), said)), err
    assert "the trial is retried from its last checkpoint (failure 2 of 2 allowed" in said[1]
    assert not list(exp.glob(f"trial_*/{STATE_DIR}"))  # finished trials keep no training state, half-written or not
    assert not list(exp.glob("trial_*/.*.tmp*"))
