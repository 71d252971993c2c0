"""The benchmarks' plumbing, cheaply: every CPU bench runs in smoke mode, and the "pure" baseline of the loop
benchmarks replays exactly the loop's own work. Speed itself is measured in bench/, never asserted here."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.run import load_train_val
from model.train import Trainer

ROOT = Path(__file__).resolve().parents[1]


def test_all_benches_run_in_smoke_mode(tmp_path):
    out = tmp_path / "headlines.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "all.py"), "--smoke", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("machine: ") and "torch " in r.stdout and "commit " in r.stdout
    d = json.loads(out.read_text())
    keys = [h["key"] for h in d["headlines"]]
    assert {"data_pipeline.cache_over_usual", "data_pipeline.bucketed_tokens", "train_loop.loop_over_pure",
            "train_loop.bucketed_speedup"} <= set(keys)
    for h in d["headlines"]:
        assert h["values"] and all(v > 0 for v in h["values"])
        assert f"{h['key']} " in r.stdout  # one summary line per headline


def test_pure_steps_replay_the_loops_epoch_exactly(demo_cfg):
    sys.path.insert(0, str(ROOT / "bench"))
    from pure import pure_epoch

    split = load_train_val(demo_cfg, progress=False)
    data = split.train.subset(torch.arange(96).numpy())
    loop, pure = Trainer(demo_cfg, split, device="cpu"), Trainer(demo_cfg, split, device="cpu")
    torch.manual_seed(7)  # dropout
    loop.run_epoch(data, train=True, seed=3)
    torch.manual_seed(7)
    pure_epoch(pure, data, seed=3)
    # Same batches, augmentation draws, loss scaling and optimizer steps: the very same weights afterwards.
    for (name, a), b in zip(loop.model.state_dict().items(), pure.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_refine_bench_runs_small(tmp_path):
    """bench/refine_efficiency.py end to end at the smallest size (its numbers say nothing here)."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "refine_efficiency.py"), "--seeds", "1", "--rows", "120",
                        "--heldout", "40", "--coarse", "3", "--fine", "2", "--epochs", "2"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "seed 0: coarse+refine" in r.stdout and "| 0 |" in r.stdout and "grace_period" in r.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two searches and two confirmations through Ray: 5 min alone, 14 min on a loaded 2-core VM
def test_real_task_bench_smoke_and_continue(tmp_path):
    """bench/real_task.py --smoke: every method runs on a stratified held-out split and is judged; run again, it
    reads the finished runs back instead of training them again."""
    cmd = [sys.executable, str(ROOT / "bench" / "real_task.py"), "--smoke", "--work", str(tmp_path), "--methods",
           "lab,tpe,random-recommended,recommended,recommended-f1,random-recommended-x2,wide"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1700, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    for method in ("lab final", "lab procedure", "TPE+ASHA+confirm seed 0", "random+ASHA+confirm, recommended space seed 0",
                   "TPE+ASHA+confirm, recommended space seed 0",
                   "TPE+ASHA+confirm, recommended space, by macro-F1 seed 0"):
        assert f"| {method} |" in r.stdout, r.stdout[-3000:]
    # the importance search: every key it searched has an importance (Optuna's PED-ANOVA, as `mmsa report`)
    wide = r.stdout.split("Optuna importances (PED-ANOVA) for its objective: ")[1].splitlines()[0]
    assert {part.rsplit(" ", 1)[0] for part in wide.split(", ")} <= set(real_task_module().WIDE_SPACE)
    assert "macro-F1" in r.stdout and "recall positive/neutral/negative" in r.stdout
    assert "random+ASHA+confirm, recommended space, 1 seed(s): mean acc" in r.stdout and "within at <= 1/3" in r.stdout
    assert ("random+ASHA+confirm, recommended space seed 0 - TPE+ASHA+confirm, recommended space seed 0: acc "
            in r.stdout), r.stdout[-3000:]
    # what confirm adds: each search's best trial, unconfirmed, trained and judged beside its confirmed choice
    assert "| TPE+ASHA, recommended space, best trial (no confirm) seed 0 |" in r.stdout
    assert ("TPE+ASHA+confirm seed 0 - TPE+ASHA, best trial (no confirm) seed 0: acc " in r.stdout)
    # twice the trials in place of confirm: its own row (no best-trial row: it is one), paired with the confirmed search
    x2 = "random+ASHA, recommended space, 2x trials, no confirm seed 0"
    assert f"| {x2} |" in r.stdout and f"| {x2.replace(' seed 0', '')}, best trial" not in r.stdout
    assert f"{x2} - random+ASHA+confirm, recommended space seed 0: acc " in r.stdout
    trials = sorted((tmp_path / "ray_results" / "random-recommended-x2-noconfirm-seed0").glob("*/params.json"))
    assert len(trials) == 4 and not (tmp_path / "ray_results" / "random-recommended-x2-noconfirm-seed0" / "confirm").exists()
    held = (tmp_path / "heldout" / "train.txt").read_text().splitlines()[1:]
    search = (tmp_path / "search" / "train.txt").read_text().splitlines()[1:]
    assert len(held) == 30 and not set(held) & set(search)
    full = (tmp_path / "full" / "train.txt").read_text().splitlines()[1:]
    for tag in ("positive", "neutral", "negative"):  # stratified: each class in its share, within one row
        share = sum(r.endswith(tag) for r in full) / len(full) * 30
        assert abs(sum(r.endswith(tag) for r in held) - share) < 1
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == 0 and "search tpe0:" not in again.stdout + again.stderr
    assert again.stdout.split("held-out:")[1].splitlines()[1:] == r.stdout.split("held-out:")[1].splitlines()[1:]


def real_task_module():
    sys.path.insert(0, str(ROOT / "bench"))
    import real_task

    return real_task


def test_stratified_heldout_split():
    stratified_heldout = real_task_module().stratified_heldout

    tags = ["positive"] * 1433 + ["negative"] * 716 + ["neutral"] * 251
    out = stratified_heldout(tags, 600)
    assert len(out) == 600 and out == stratified_heldout(tags, 600)  # fixed
    assert [sum(tags[i] == t for i in out) for t in ("positive", "negative", "neutral")] == [358, 179, 63]


def test_real_task_verdict_counts_seeds_per_method():
    """The verdict says per method in how many seeds each of issue 23's targets was met, from the judged numbers."""
    rt = real_task_module()
    from search.settings.schema import M

    def judged(acc, f1, vs_proc_hi, vs_final):
        return {M.VAL_ACC: (acc, acc - .04, acc + .04), M.VAL_F1: (f1, f1 - .05, f1 + .05),
                f"{M.VAL_ACC} - lab procedure": (vs_proc_hi - .05, vs_proc_hi - .1, vs_proc_hi),
                f"{M.VAL_ACC} - lab final": (vs_final, vs_final - .04, vs_final + .04)}

    results = {"lab procedure": {"trial_epochs": 90},
               "TPE seed 0": {"trial_epochs": 30}, "TPE seed 1": {"trial_epochs": 31}, "TPE seed 2": {"trial_epochs": 20},
               "random seed 0": {"trial_epochs": 10}}
    j = {"TPE seed 0": judged(0.75, 0.61, 0.01, 0.16),  # every target, at exactly a third
         "TPE seed 1": judged(0.70, 0.61, 0.02, 0.10),  # within, but 31 > 30 trial-epochs
         "TPE seed 2": judged(0.74, 0.59, -0.01, 0.15),  # worse than the procedure; macro-F1 short
         "random seed 0": judged(0.60, 0.30, 0.0, 0.0)}
    met = rt.targets_met(results["TPE seed 0"], j["TPE seed 0"], 90)
    assert all(met.values()) and len(met) == 4
    lines = rt.verdict(results, j)
    tpe = next(line for line in lines if line.startswith("TPE, 3 seed(s)"))
    assert "acc >= 0.74 and macro-F1 >= 0.60: 1/3" in tpe and "acc >= lab final + 15 points: 2/3" in tpe
    assert "within the lab procedure's interval or better: 2/3" in tpe and "at most 1/3 of its trial-epochs: 2/3" in tpe
    assert "within at <= 1/3 (target: 2 of 3 seeds): 1/3" in tpe and "mean acc 0.730" in tpe
    assert any(line.startswith("random, 1 seed(s)") and "within at <= 1/3 (target: 2 of 3 seeds): 1/1" in line
               for line in lines)


def test_random_runs_are_paired_with_tpe_of_the_same_seed_and_space():
    """What TPE adds: each random run is judged against the TPE run of its seed and space, on the same resampled rows,
    and against no other (not TPE of another seed, not the default space's)."""
    import numpy as np

    rt = real_task_module()
    from search.settings.schema import M

    labels = np.array([0, 1, 2] * 100)
    right = lambda n: np.where(np.arange(300) < n, labels, (labels + 1) % 3)  # noqa: E731  the first n rows right
    tpe, rnd = rt.SEARCH_METHODS["recommended"].label, rt.SEARCH_METHODS["random-recommended"].label
    x2 = rt.SEARCH_METHODS["random-recommended-x2"].label
    results = {f"{tpe} seed 0": {"pred": right(200)}, f"{tpe} seed 1": {"pred": right(150)},
               f"{rnd} seed 0": {"pred": right(230)}, f"{rnd} seed 2": {"pred": right(100)},
               f"{rt.SEARCH_METHODS['tpe'].label} seed 0": {"pred": right(10)},
               f"{rt.unconfirmed(tpe)} seed 1": {"pred": right(150)}, f"{rt.unconfirmed(rnd)} seed 2": {"pred": right(90)},
               f"{x2} seed 2": {"pred": right(120)}, f"{x2} seed 1": {"pred": right(120)}}
    results = {k: {**v, "labels": labels} for k, v in results.items()}
    pairs = rt.paired_runs(results)
    # seed 2 has no TPE run; default-space TPE is not its pair; TPE seed 1's confirmed choice against its best trial;
    # twice the trials unconfirmed against the confirmed random search of its seed and that search's best trial (seed 1
    # has neither: no pair), never against TPE
    assert pairs == ((f"{tpe} seed 1", f"{rt.unconfirmed(tpe)} seed 1"), (f"{rnd} seed 0", f"{tpe} seed 0"),
                     (f"{rnd} seed 2", f"{rt.unconfirmed(rnd)} seed 2"),
                     (f"{x2} seed 2", f"{rnd} seed 2"), (f"{x2} seed 2", f"{rt.unconfirmed(rnd)} seed 2"))
    j = rt.judge(results, (), pairs)
    d = j[f"{rnd} seed 0"][f"{M.VAL_ACC} - {tpe} seed 0"]
    assert d[0] == pytest.approx(0.1) and 0 < d[1] <= d[0] <= d[2] < 0.2  # 30 more rows right, and only those
    assert [key for key in j[f"{rnd} seed 2"] if " - " in key] == [f"{m} - {rt.unconfirmed(rnd)} seed 2"
                                                                    for m in (M.VAL_ACC, M.VAL_F1)]
    assert j[f"{tpe} seed 1"][f"{M.VAL_ACC} - {rt.unconfirmed(tpe)} seed 1"] == (0, 0, 0)  # the same predictions
    assert j[f"{x2} seed 2"][f"{M.VAL_ACC} - {rnd} seed 2"][0] == pytest.approx(20 / 300)
    line = rt.pair_lines(j, pairs)[1]
    assert line.startswith(f"{rnd} seed 0 - {tpe} seed 0: acc +10.0 [") and "macro-F1 +" in line
