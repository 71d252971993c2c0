"""Per-trial resources no node of the cluster has (CPUs, GPUs, memory) are refused before any trial starts, with
the numbers: Ray would keep such a trial pending forever. A real local Ray instance; the two-node case is in
tests/test_search_cluster.py."""
import shutil

import pytest
import yaml

from data_pipeline.errors import UserError
from search.tune.ray_cluster import capacity, check_fits
from search.settings.space import parse_spec
from search.tune.tuner import run_search

# Hostile or impossible per-trial requests (search: section keys) and the flag the refusal must name.
IMPOSSIBLE = [({"cpus_per_trial": 1000.0}, "--cpus-per-trial", "1000 CPUs"),
              ({"gpus_per_trial": 8.0}, "--gpus-per-trial", "8 GPUs"),
              ({"memory_per_trial": 100000.0}, "--memory-per-trial", "100000.0 GiB memory")]


def _spec(demo_cfg, **search):
    return parse_spec({"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}},
                       "fixed": demo_cfg.with_overrides({"epochs": 1, "patience": 0}).to_dict(),
                       "search": {"grace_period": 1, **search}}, "resources test")


@pytest.mark.parametrize("search, flag, shown", IMPOSSIBLE)
def test_impossible_request_refused_with_numbers(ray_local, demo_cfg, search, flag, shown):
    import ray

    with pytest.raises(UserError) as e:
        capacity(_spec(demo_cfg, **search))
    msg = str(e.value)
    cpus = ray.cluster_resources()["CPU"]
    assert "each trial needs " in msg and shown in msg and flag in msg and "would wait forever" in msg
    assert f"{cpus:g} CPUs" in msg  # what the node has


def test_a_request_the_node_holds_is_accepted(ray_local, demo_cfg):
    import ray

    cpus = ray.cluster_resources()["CPU"]
    resources, at_once = capacity(_spec(demo_cfg, cpus_per_trial=cpus, gpus_per_trial=0.0, memory_per_trial=0.01))
    assert resources == {"cpu": cpus, "gpu": 0.0, "memory": int(0.01 * 2**30)} and at_once == 1


def test_gpus_compared_with_the_node(ray_local, demo_cfg):
    """Where the node has GPUs (a GPU machine), all of them in one trial fit and one more does not."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus:
        assert capacity(_spec(demo_cfg, cpus_per_trial=1.0, gpus_per_trial=gpus))[0]["gpu"] == gpus
        assert capacity(_spec(demo_cfg, cpus_per_trial=1.0))[0]["gpu"] == 1.0  # -1: one GPU per trial
    with pytest.raises(UserError, match=f"each trial needs 1 CPU, {gpus + 1:g} GPU"):
        capacity(_spec(demo_cfg, cpus_per_trial=1.0, gpus_per_trial=gpus + 1))


@pytest.mark.parametrize("resources", [{"cpu": "many"}, {"cpu": float("nan")}, {"cpu": -1}, {"disk": 1}, ["cpu"],
                                       {"cpu": True}])
def test_damaged_resources_in_metadata_refused(ray_local, resources):
    with pytest.raises(UserError, match="metadata is damaged"):
        check_fits(resources, "EXP")


def test_search_refused_before_anything_is_written(ray_local, demo_cfg, tmp_path):
    with pytest.raises(UserError, match="--cpus-per-trial"):
        run_search(_spec(demo_cfg, cpus_per_trial=1000.0), 1, "big", str(tmp_path), log=lambda *a: None)
    assert not (tmp_path / "big").exists()


@pytest.mark.slow
def test_resume_on_a_smaller_machine_refused(ray_local, demo_cfg, tmp_path):
    """A search started where a trial fitted, resumed where it cannot: resume refuses instead of waiting."""
    from search.tune.tuner import resume_search

    run_search(_spec(demo_cfg), 1, "small", str(tmp_path), verbose=0, log=lambda *a: None)
    exp = tmp_path / "small"
    meta = yaml.safe_load((exp / "mmsa_search.yaml").read_text())
    meta["resources"]["cpu"] = 1000.0
    (exp / "mmsa_search.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    before = {p: p.stat().st_mtime_ns for p in exp.rglob("*") if p.is_file() and ".mmsa-lock" not in p.name}
    with pytest.raises(UserError) as e:
        resume_search(exp, verbose=0, log=lambda *a: None)
    assert f"{exp}: each trial needs 1000 CPUs" in str(e.value)
    after = {p: p.stat().st_mtime_ns for p in exp.rglob("*") if p.is_file() and ".mmsa-lock" not in p.name}
    assert {p: t for p, t in after.items() if p in before} == before
    shutil.rmtree(exp)
