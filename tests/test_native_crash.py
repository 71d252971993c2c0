"""A Ray worker process that crashes in native code (issue 24 item 6): the local instance runs without Ray's metrics
export (whose thread was seen to segfault), and a trial whose worker dies of a real SIGSEGV is retried from its
checkpoint while the user reads one line naming the trial."""
import pytest

from model import metrics as M
from search.selection.results import load_trials
from search.tune.ray_cluster import LOCAL_SYSTEM_CONFIG
from searchproc import raw_results, start, write_space


def test_the_local_instance_runs_without_metrics_export(ray_local):
    import ray

    @ray.remote(num_cpus=0)
    def seen_by_a_worker():
        from ray._private.state import state

        return state.get_system_config()  # the cluster's settings, as every worker process is started with them

    assert LOCAL_SYSTEM_CONFIG == {"enable_metrics_collection": False}
    assert ray.get(seen_by_a_worker.remote(), timeout=120)["enable_metrics_collection"] is False


@pytest.mark.slow
def test_a_worker_killed_by_sigsegv_is_one_line_and_the_search_goes_on(tmp_path, demo_cfg):
    fixed = demo_cfg.with_overrides({"patience": 0, "epochs": 2}).to_dict()
    space = write_space(tmp_path / "space.yaml", fixed, {"train.batch_size": {"choice": [16, 32]}},
                        {"grace_period": 2, "max_failures": 2, "seed": 1})
    proc = start(["search", "--data", str(demo_cfg.data.data_dir), "--space", str(space), "--num-samples", "3",
                  "--name", "segv", "--storage", str(tmp_path / "rr"), "--verbose", "0"],
                 {"MMSA_TEST_FAULT": "segv:batch_size=32:2", "MMSA_TEST_FAULT_DIR": str(tmp_path)})
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    trials = load_trials(tmp_path / "rr" / "segv")
    crashed = [t for t in trials if t.config["train"]["batch_size"] == 32]
    assert crashed and len(list(tmp_path.glob("segv-*"))) == len(crashed)
    assert len(trials) == 3 and all(t.state == "TERMINATED" for t in trials)
    for t in crashed:
        assert t.failures == 1 and [r[M.EPOCH] for r in raw_results(t.path)] == [1, 2]  # from its epoch-1 checkpoint
        said = [line for line in err.splitlines() if line.startswith(f"trial {t.trial_id}: its Ray worker process died")]
        assert len(said) == 1 and "the search continues" in said[0], err[-3000:]
    assert "Trial task failed for trial" not in err  # Ray's Python traceback of the lost actor is replaced by that line


def test_a_dead_worker_is_taken_from_rays_log_by_the_newest_search_only():
    import logging

    from ray.exceptions import ActorDiedError

    from search.tune.worker_crash import TUNE_CONTROLLER_LOGGER, WorkerCrashNotice

    earlier, now = WorkerCrashNotice(), WorkerCrashNotice()
    earlier.setup()  # a fit in this process that raised: its filter stayed on Ray's logger
    now.setup()
    log = logging.getLogger(TUNE_CONTROLLER_LOGGER)
    died = ActorDiedError()
    try:
        log.error("Trial task failed for trial t1", exc_info=died)
        assert now._seen.exc is died and earlier._seen.exc is None
        assert log.filter(logging.LogRecord(TUNE_CONTROLLER_LOGGER, logging.ERROR, "", 0, "other", None,
                                            (ValueError, ValueError("x"), None)))  # a trial's own error stays
    finally:
        now.on_experiment_end(trials=[])
    assert not log.filters
