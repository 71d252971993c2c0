"""A search's time budget (search.time_budget, --time-budget): parsing and refusals, the file that keeps the time used
(untrusted like every experiment file), and end to end on real Ray: trials stop at an epoch boundary with their
checkpoint, none starts after the budget, resume of a spent budget, a raised one continues, status and export."""
import math
import shutil

import pytest
import yaml

from data_pipeline.errors import UserError
from search.cli import main
from search.experiment import time_used
from search.settings.duration import describe, parse_duration
from search.settings.space import parse_spec
from searchproc import without_ray_sigterm_noise, write_space

SPACE = {"train.lr": {"loguniform": [3e-4, 3e-3]}, "train.batch_size": {"choice": [16, 32]}}


@pytest.mark.parametrize("text, seconds", [("90m", 5400), ("2h", 7200), ("1.5h", 5400), ("45s", 45), ("3600", 3600),
                                           (3600, 3600), (" 2H ", 7200), (0.5, 0.5)])
def test_durations(text, seconds):
    assert parse_duration(text, "x") == seconds


@pytest.mark.parametrize("text", ["0", "0h", "-1h", "2x", "h", "1e9", "1h30m", "", "9000h", True, "nan", [1]])
def test_bad_durations_are_one_line_naming_the_key(text):
    with pytest.raises(UserError) as e:
        parse_duration(text, "--time-budget")
    assert str(e.value).startswith("--time-budget: ") and "\n" not in str(e.value)


def test_describe():
    assert (describe(5400), describe(45.4), describe(0), describe(3725)) == ("1h 30m", "45s", "0s", "1h 2m 5s")


def test_space_file_key(demo_cfg):
    d = {"space": SPACE, "fixed": demo_cfg.to_dict(), "search": {"time_budget": "90m"}}
    assert parse_spec(d, "s.yaml").search.budget_s == 5400
    assert parse_spec({**d, "search": {}}, "s.yaml").search.budget_s is None
    for bad, why in (("2 days", "not a duration"), ("0", "must be more than 0"), (True, "expected a string")):
        with pytest.raises(UserError, match=f"s.yaml: search.time_budget.*({why}|is not valid)"):
            parse_spec({**d, "search": {"time_budget": bad}}, "s.yaml")


def test_flags_refused_before_anything_runs(demo_cfg, tmp_path, capsys):
    base = ["--num-samples", "2", "--name", "x", "--storage", str(tmp_path), "--data", demo_cfg.data.data_dir]
    assert main(["search", *base, "--time-budget", "2x"]) == 2
    assert main(["search", *base, "--time-budget", "0"]) == 2
    assert main(["resume", str(tmp_path / "nothing"), "--time-budget=-5m"]) == 2
    assert main(["refine", str(tmp_path / "nothing"), "--num-samples", "2", "--time-budget", "soon"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(line.startswith("error: ") for line in err), err
    assert "search.time_budget" in err[0] and "search.time_budget" in err[1] and "must be more than 0" in err[1]
    assert err[2].startswith("error: --time-budget: ") and err[3].startswith("error: --time-budget: ")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("content", [b"", b"not json", b"[1, 2]", b'{"used_s": -1}', b'{"used_s": NaN}',
                                     b'{"used_s": 1e300}', b'{"used_s": true}', b'{"used_s": "10"}',
                                     b"[" * 100_000, b"\xff\xfe", b'{"used_s": {"__reduce__": 1}}'])
def test_damaged_time_file_reads_as_none(tmp_path, content):
    (tmp_path / time_used.FILE).write_bytes(content)
    assert time_used.read(tmp_path) is None
    assert time_used.FILE in time_used.damaged(tmp_path) and "Delete the file" in time_used.damaged(tmp_path)


def test_time_file_round_trip(tmp_path):
    assert time_used.read(tmp_path) == (0.0, False)  # none yet: nothing used
    time_used.write(tmp_path, 12.3456, True)
    assert time_used.read(tmp_path) == (12.346, True)
    (tmp_path / time_used.FILE).unlink()
    (tmp_path / time_used.FILE).symlink_to("/etc/hostname")  # a planted link is not followed
    assert time_used.read(tmp_path) in (None, (0.0, False))


# ---- end to end (real Ray, tiny models) -----------------------------------------------------------------------
EPOCHS = 60  # far more than a few seconds' budget allows: a trial that ends stopped stopped mid-way
BUDGET = "60s"  # more than a loaded 2-core machine takes to start its trials's workers


def _trials(exp):
    from search.selection.results import load_trials

    return load_trials(exp)


def _checkpoint_epochs(trial_dir):
    """Epochs whose checkpoint Ray recorded for the trial (checkpoint_NNNNNN: the result's index, from 0)."""
    return {int(p.name.split("_")[1]) + 1 for p in trial_dir.glob("checkpoint_*") if p.is_dir()}


@pytest.fixture(scope="module")
def spent(demo_cfg, tmp_path_factory):
    """A search of 4 trials, 2 at once, of 60 slowed epochs each (minutes), with a 60 s budget."""
    import os

    tmp = tmp_path_factory.mktemp("budget")
    fixed = demo_cfg.with_overrides({"patience": 0, "epochs": EPOCHS}).to_dict()
    space = write_space(tmp / "space.yaml", fixed, SPACE, {"grace_period": EPOCHS, "max_concurrent": 2,
                                                           "time_budget": BUDGET})
    os.environ["MMSA_TEST_FAULT"] = "slow:seed=0:1"  # every epoch takes seconds: the budget ends mid-trial
    try:
        import subprocess
        import sys

        r = subprocess.run([sys.executable, "-m", "search.cli", "search", "--space", str(space), "--num-samples", "4",
                            "--name", "b", "--storage", str(tmp), "--verbose", "0"], capture_output=True, text=True,
                           timeout=600)
    finally:
        os.environ.pop("MMSA_TEST_FAULT")
    return tmp / "b", r


@pytest.mark.slow
def test_budget_stops_trials_at_an_epoch_boundary_and_starts_none(spent):
    exp, r = spent
    assert r.returncode == 0, r.stderr[-3000:]
    assert "time budget 1m spent" in r.stdout and "no trial started after the budget" in r.stdout, r.stdout[-2000:]
    assert "Traceback" not in without_ray_sigterm_noise(r.stderr), r.stderr[-3000:]
    trials = _trials(exp)
    # the first wave (2 at once) ran until the budget stopped it; the trials after it were never proposed
    assert 1 <= len(trials) <= 2 and any(t.results for t in trials), [(t.trial_id, t.state, len(t.results)) for t in trials]
    for t in trials:  # stopped mid-way, as stopped (not errored), at an epoch boundary whose checkpoint is kept
        assert t.state == "TERMINATED" and len(t.results) < EPOCHS and not t.error, (t.state, len(t.results), t.error)
        assert not t.results or len(t.results) in _checkpoint_epochs(exp / f"trial_{t.trial_id}")
    used, stopped = time_used.read(exp)
    assert stopped and used >= 60


@pytest.mark.slow
def test_spent_budget_resume_status_export_and_raised_budget(spent, demo_cfg, tmp_path, capsys):
    src, r = spent
    assert r.returncode == 0
    exp = tmp_path / "b"
    shutil.copytree(src, exp, symlinks=True)
    rows = sum(len(t.results) for t in _trials(exp))

    assert main(["resume", str(exp), "--verbose", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "time budget of 1m is spent" in err and f"mmsa resume {exp} --time-budget" in err
    assert sum(len(t.results) for t in _trials(exp)) == rows  # nothing ran

    assert main(["status", str(exp)]) == 0
    out = capsys.readouterr().out
    assert "time budget 1m: " in out and "0s left; spent" in out

    assert main(["export", str(exp), "-o", str(tmp_path / "best.yaml")]) == 0
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert best["search"]["trial_id"] in {t.trial_id for t in _trials(exp)}

    used_before = time_used.read(exp)[0]
    import os

    os.environ["MMSA_TEST_FAULT"] = "slow:seed=0:1"
    try:
        rc = main(["resume", str(exp), "--verbose", "0", "--time-budget", f"{math.ceil(used_before) + 45}s"])
    finally:
        os.environ.pop("MMSA_TEST_FAULT")
    out = capsys.readouterr().out
    assert rc == 0 and "spent" in out, out[-2000:]
    trials = _trials(exp)
    assert len(trials) > 2 and all(t.state == "TERMINATED" for t in trials)  # new trials ran in the raised budget
    assert time_used.read(exp)[0] > used_before  # counted on from the time used before
    assert f"{math.ceil(used_before) + 45}s" in yaml.safe_load((exp / "mmsa_search.yaml").read_text())["spec"]["search"]["time_budget"]

    # the next search in this process has no budget: the budget spent above must not keep its searcher from proposing
    # (it did: the search waited forever for a trial, in a notebook or a test session after a spent budget)
    space = write_space(tmp_path / "after.yaml", demo_cfg.with_overrides({"epochs": 1}).to_dict(), SPACE, {})
    assert main(["search", "--space", str(space), "--num-samples", "2", "--name", "after", "--storage", str(tmp_path),
                 "--verbose", "0"]) == 0
    after = _trials(tmp_path / "after")
    assert len(after) == 2 and all(t.state == "TERMINATED" and len(t.results) == 1 for t in after)


def test_a_refused_resume_keeps_the_searchs_budget(tmp_path):
    """`mmsa resume --time-budget SHORTER` on a search that has used more: refused, and the search's budget in its
    metadata is still the one it had (a refused command changes nothing)."""
    from search.experiment import layout
    from search.settings.space import load_spec, spec_to_dict
    from search.tune.tuner import _budget_left

    spec = load_spec("recommended")
    spec.search.time_budget = "1h"
    meta = {"spec": spec_to_dict(spec)}
    layout.write_meta(str(tmp_path), meta)
    time_used.write(tmp_path, 600, False)
    with pytest.raises(UserError, match="time budget of 10s is spent"):
        _budget_left(str(tmp_path), meta, spec, "10s")
    assert yaml.safe_load((tmp_path / layout.META).read_text())["spec"]["search"]["time_budget"] == "1h"


@pytest.mark.parametrize("budget_s,used_s", [(60, 61), (3600, 3700), (3600, 3 * 3600), (45, 80), (5400, 5500),
                                             (300 * 86400, 300 * 86400 + 5)])
def test_the_suggested_budget_is_one_that_continues_and_is_accepted(budget_s, used_s):
    """The refusal's `--time-budget X`: more than the time used (a budget raised on a running search may be far
    below it) and never over the longest budget --time-budget accepts."""
    from search.settings.duration import longer, parse_duration

    assert used_s < parse_duration(longer(budget_s, used_s), "--time-budget")
