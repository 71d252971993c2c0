"""Canaries: each Ray/Optuna private touchpoint (search/experiment/ray_internals.py) exercised against the installed versions,
on a real tiny Tune run with the project's own searcher and scheduler. A new Ray or Optuna that moves one fails here
with the touchpoint's name, not as a search that silently stops resuming correctly."""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest

from search.experiment import ray_internals as RI
from search.settings import schema as S

ROOT = Path(__file__).resolve().parents[1]


def _make_trainable():
    """Defined in a function, so Ray ships it by value (worker processes cannot import test modules)."""

    def trainable(config):
        from ray import tune

        for epoch in (1, 2):
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "w").write_text("x")
                tune.report({S.M.EPOCH: epoch, S.M.SEARCH_METRIC: config["x"] / epoch, S.FINISHED: int(epoch == 2)},
                            checkpoint=tune.Checkpoint.from_directory(d))

    return trainable


@pytest.fixture(scope="module")
def tiny_run(ray_local, tmp_path_factory):
    """Two trials through TruthfulOptunaSearch + ASHA, with a callback that reads the driver's staged state."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from search.tune.truthful_optuna import TruthfulOptunaSearch

    seen = {}

    class Recorder(tune.Callback):
        def on_step_end(self, iteration, trials, **info):
            if trials:
                seen["staged"] = RI.driver_state_files(trials[0])

    storage = tmp_path_factory.mktemp("canary")
    searcher = TruthfulOptunaSearch(space={"x": tune.uniform(0.1, 1.0)}, metric=S.M.SEARCH_METRIC, mode=S.M.OPT_MODE)
    scheduler = ASHAScheduler(time_attr=S.M.EPOCH, max_t=2, grace_period=1, reduction_factor=2,
                              metric=S.M.SEARCH_METRIC, mode=S.M.OPT_MODE)
    RI.upload_state_after_each_checkpoint()
    tuner = tune.Tuner(_make_trainable(), tune_config=tune.TuneConfig(num_samples=2, search_alg=searcher, scheduler=scheduler),
                       run_config=tune.RunConfig(name="canary", storage_path=str(storage), verbose=0,
                                                 callbacks=[Recorder()]))
    results = tuner.fit()
    return {"exp": storage / "canary", "searcher": searcher, "scheduler": scheduler, "seen": seen,
            "results": results, "tuner": tuner}


def test_versions_are_the_tested_ones_and_pyproject_caps_them():
    import optuna
    import ray

    assert ray.__version__.startswith(RI.TESTED["ray"] + "."), "update TESTED and the caps only after these canaries pass"
    assert optuna.__version__.startswith(RI.TESTED["optuna"] + ".")
    deps = (ROOT / "pyproject.toml").read_text()
    for pkg, v in RI.TESTED.items():
        major, minor = v.split(".")
        assert re.search(rf'"{pkg}(\[tune\])?>={v},<{major}\.{int(minor) + 1}"', deps), f"pyproject.toml must cap {pkg} to {v}.x"


def test_report_keys_ray_adds_are_rays_names(tiny_run):
    from ray.tune import result as R

    assert (S.TRAINING_ITERATION, S.TRIAL_ID, S.TIMESTAMP) == (R.TRAINING_ITERATION, R.TRIAL_ID, R.TIMESTAMP)
    row = json.loads((next(tiny_run["exp"].glob("*/result.json"))).read_text().splitlines()[0])
    assert {S.TRAINING_ITERATION, S.TRIAL_ID, S.TIMESTAMP, S.CHECKPOINT_DIR_NAME} <= set(row)


def test_canary_ray_result_keys_are_exactly_what_ray_adds(tiny_run):
    """search/trial/ended_trial.py reports a logged row again without Ray's own keys: every key of a row is either the
    trainable's or one of these."""
    row = json.loads((next(tiny_run["exp"].glob("*/result.json"))).read_text().splitlines()[0])
    ours = {S.M.EPOCH, S.M.SEARCH_METRIC, S.FINISHED}
    assert set(row) - RI.ray_result_keys() == ours


def test_upload_state_after_each_checkpoint_patch():
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    RI.upload_state_after_each_checkpoint()
    RI.upload_state_after_each_checkpoint()  # idempotent
    assert RI.sync_every_n_trial_checkpoints(_ExperimentCheckpointManager(storage=None, checkpoint_period=0)) == 1
    assert RI.sync_every_n_trial_checkpoints(_ExperimentCheckpointManager(
        storage=None, checkpoint_period=0, sync_every_n_trial_checkpoints=3)) == 3


def test_asha_bracket_and_rungs(tiny_run):
    rungs = RI.asha_rungs(tiny_run["scheduler"])
    assert [m for m, _ in rungs] == [2, 1] and len(rungs[1][1]) == 2  # both trials reached the epoch-1 rung
    assert RI.asha_bracket(tiny_run["scheduler"]).on_result  # what search/tune/asha_state.py replays into


def test_restored_scheduler(tiny_run):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    restored = tune.Tuner.restore(str(tiny_run["exp"]), trainable=_make_trainable())
    assert isinstance(RI.restored_scheduler(restored), ASHAScheduler)
    assert [type(c).__name__ for c in RI.restored_callbacks(restored)] == ["Recorder"]


def test_driver_state_files_and_their_names(tiny_run):
    files, fs, exp = tiny_run["seen"]["staged"]
    assert any(n.startswith("experiment_state-") for n in files) and all(RI.is_state_file(n) for n in files)
    assert Path(exp) == tiny_run["exp"] and fs.get_file_info(f"{exp}/tuner.pkl").size > 0
    top = [p.name for p in tiny_run["exp"].iterdir() if p.is_file()]
    ray_files = [n for n in top if n.endswith((".pkl", ".json")) and not n.startswith("basic-variant")]
    assert ray_files and all(RI.is_state_file(n) for n in ray_files), ray_files


def test_trial_states_layout(tiny_run):
    state_file = max(tiny_run["exp"].glob("experiment_state-*.json"))
    states = RI.trial_states(state_file.read_bytes())
    assert len(states) == 2 and {s["state"] for s in states.values()} == {"TERMINATED"}
    assert all(s["failures"] == 0 for s in states.values())
    assert RI.trial_states(state_file.read_bytes()[:50]) is None  # cut off: not whole


def test_optuna_touchpoints(tiny_run):
    from optuna.trial import TrialState

    s = tiny_run["searcher"]
    ot_trials = RI.optuna_trials(s)
    assert len(ot_trials) == 2 and RI.completed_trials(s) == set(ot_trials)
    study = RI.optuna_study(s)
    states = {t.number: t.state for t in study.trials}
    assert TrialState.COMPLETE in states.values() and set(states.values()) <= {TrialState.COMPLETE, TrialState.PRUNED}
    for ot_trial in ot_trials.values():
        assert 1 in RI.intermediate_values(ot_trial)


def test_quiet_loggers_exist():
    import importlib.util

    assert all(importlib.util.find_spec(name) for name in RI.QUIET_LOGGERS + RI.FIXED_POINTS_LOGGERS
               + (RI.ANALYSIS_LOGGER,))


def test_canary_a_trial_that_never_started_warns_at_the_end_of_fit_and_a_search_shows_nothing(tiny_run, tmp_path):
    """Ray's own reading at the end of Tuner.fit (an ExperimentAnalysis of the experiment) over a trial that never
    started (queued when Ctrl-C or a time budget stopped the search: no folder, no files) logs the warning
    NoResultsYet drops; run inside our _fit, it does not come out. A started trial whose result files are gone keeps
    it."""
    import logging
    import shutil

    from ray.tune import ExperimentAnalysis

    from search.tune.tuner import _fit

    exp = tmp_path / "canary"
    shutil.copytree(tiny_run["exp"], exp)
    lost, queued = [d.parent for d in sorted(exp.glob("*/result.json"))]
    for name in ("result.json", "progress.csv"):
        (lost / name).unlink(missing_ok=True)
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    log, keep = logging.getLogger(RI.ANALYSIS_LOGGER), Keep()
    log.addHandler(keep)
    try:
        ExperimentAnalysis(str(exp))  # the started trial whose files are gone: worth seeing
        warned = [r for r in records if r.getMessage().startswith(RI.NO_RESULTS_WARNING)]
        assert len(warned) == 1 and "FileNotFoundError(" in warned[0].getMessage()  # the canary: Ray still says it so
        assert RI.NoResultsYet().filter(warned[0])
        shutil.rmtree(queued)
        records.clear()
        ExperimentAnalysis(str(exp))  # one lost and one never started: the lost one keeps the whole warning
        assert len(records) == 1 and RI.NoResultsYet().filter(records[0])
        shutil.rmtree(lost)
        records.clear()
        ExperimentAnalysis(str(exp))
        assert len(records) == 1 and str(queued) in records[0].getMessage() and not RI.NoResultsYet().filter(records[0])
        records.clear()

        class Tuner:  # Tuner.fit's last step, on this folder
            def fit(self):
                return ExperimentAnalysis(str(exp))

        _fit(Tuner(), [], str(exp))
        assert not records and not log.filters  # nothing came out, and the filter is gone after the fit
    finally:
        log.removeHandler(keep)


def test_no_results_yet_drops_only_trials_that_never_started(tmp_path):
    import logging

    f, log = RI.NoResultsYet(), logging.getLogger(RI.ANALYSIS_LOGGER)
    started = tmp_path / "trial_b"
    started.mkdir()
    (started / "params.json").write_text("{}")
    missing = ("- train_trial_{0}: FileNotFoundError('Could not fetch metrics for train_trial_{0}: both result.json "
               "and progress.csv were not found at " + str(tmp_path) + "/trial_{0}')")
    rec = lambda msg: log.makeRecord(log.name, logging.WARNING, __file__, 1, msg, (), None)  # noqa: E731
    assert not f.filter(rec(f"{RI.NO_RESULTS_WARNING} 2 trial(s):\n{missing.format('a')}\n{missing.format('c')}"))
    # a started trial whose files are gone, or an unreadable result file: the whole warning stays; and any other
    assert f.filter(rec(f"{RI.NO_RESULTS_WARNING} 2 trial(s):\n{missing.format('a')}\n{missing.format('b')}"))
    assert f.filter(rec(f"{RI.NO_RESULTS_WARNING} 2 trial(s):\n{missing.format('a')}\n"
                        "- train_trial_d: JSONDecodeError('Expecting value: line 1 column 1 (char 0)')"))
    assert f.filter(rec(f"{RI.NO_RESULTS_WARNING} 1 trial(s):"))
    assert f.filter(rec("Could not find best trial"))


def test_a_moved_internal_names_itself_and_the_tested_versions():
    with pytest.raises(RI.InternalsChanged) as e:
        RI.asha_bracket(object())
    msg = str(e.value)
    assert "ASHAScheduler._brackets[0]" in msg and "rebuild ASHA's rungs" in msg and RI.TESTED["ray"] in msg
    with pytest.raises(RI.InternalsChanged, match="OptunaSearch._ot_trials"):
        RI.optuna_trials(object())
    with pytest.raises(RI.InternalsChanged, match="Tuner._local_tuner"):
        RI.restored_scheduler(object())
    with pytest.raises(RI.InternalsChanged, match="Tuner._local_tuner._run_config.callbacks"):
        RI.restored_callbacks(object())


def test_relocation_patch_touchpoints():
    """What relocate_new_trials_on_restore patches and reads: TuneController.resume, its _storage and _search_alg,
    and the experiment spec inside Ray's SearchGenerator (tests/test_reliability.py resumes a copy and a move)."""
    import inspect

    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search.search_generator import SearchGenerator

    RI.relocate_new_trials_on_restore()
    RI.relocate_new_trials_on_restore()  # idempotent
    assert getattr(TuneController.resume, "_mmsa", False)
    src = inspect.getsource(TuneController.__init__)
    assert "self._storage = storage" in src and "self._search_alg" in src
    gen = SearchGenerator.__new__(SearchGenerator)
    gen.set_state({"counter": 0, "total_samples": 1, "finished": False, "experiment": "spec-holder"})
    assert gen._experiment == "spec-holder"
    from ray.tune.experiment import Experiment
    from ray.tune.search.basic_variant import BasicVariantGenerator, _TrialIterator

    assert '"storage": self.storage' in inspect.getsource(Experiment.__init__)
    assert "self._iterators" in inspect.getsource(BasicVariantGenerator.__init__)
    assert "self.unresolved_spec = unresolved_spec" in inspect.getsource(_TrialIterator.__init__)


def test_confirm_search_state_file_is_a_backed_up_state_file():
    """`mmsa confirm` runs Ray's BasicVariantGenerator, whose state is a pickle: it must be signed like the others."""
    from ray.tune.search import BasicVariantGenerator

    from search.experiment.ray_internals import is_state_file

    assert is_state_file(BasicVariantGenerator.CKPT_FILE_TMPL.format("2024-01-01_00-00-00"))


def test_canary_trial_storage_paths():
    """ray_internals.trial_storage / driver_trial_path read these attributes of Ray's StorageContext."""
    from ray.train._internal.storage import StorageContext
    import ray.train._internal.session as session

    assert hasattr(session, "get_session")
    assert isinstance(getattr(StorageContext, "trial_fs_path", None), property)


def test_canary_reuse_thread_timeout_env(monkeypatch):
    # Ray still reads the variable at reset time, in the worker (the trainable sets it there, search.reuse_workers)
    assert RI.reuse_waits_for_thread_env() == "TUNE_FUNCTION_THREAD_TIMEOUT_S"
    import os

    monkeypatch.setenv("TUNE_FUNCTION_THREAD_TIMEOUT_S", "2")  # restored after the test
    RI.let_previous_trial_finish_on_reuse()
    assert int(os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"]) >= 60


def test_warm_trials_reach_the_study_before_any_proposal_once_and_survive_save_restore(tmp_path):
    """Warm start relies on Ray calling Searcher.set_search_properties with the param space (the study exists
    after it), and on OptunaSearch.save/restore carrying the study: a resume restores the pickled study over the
    fresh one, which must then hold the warm trials exactly once."""
    import optuna
    from ray import tune

    from search.tune.truthful_optuna import TruthfulOptunaSearch
    from search.selection.warm_start import ENQUEUE_ATTR, WARM_ATTR, WarmTrial

    warm = [WarmTrial("/exp", "a", "COMPLETE", {"x": 0.3}, 0.5, {1: 0.7, 2: 0.5}),
            WarmTrial("/exp", "b", "PRUNED", {"x": 0.9}, None, {1: 0.8})]

    def searcher():
        s = TruthfulOptunaSearch(metric=S.M.SEARCH_METRIC, mode=S.M.OPT_MODE, warm=warm, enqueue=[{"x": 0.2}])
        assert s.set_search_properties(S.M.SEARCH_METRIC, S.M.OPT_MODE, {"x": tune.uniform(0.1, 1.0)})
        return s

    first = searcher()
    study = RI.optuna_study(first)
    got = {t.user_attrs[WARM_ATTR]: t for t in study.trials if WARM_ATTR in t.user_attrs}
    assert got["/exp#a"].state == optuna.trial.TrialState.COMPLETE and got["/exp#a"].value == 0.5
    assert got["/exp#a"].intermediate_values == {1: 0.7, 2: 0.5}
    assert got["/exp#b"].state == optuna.trial.TrialState.PRUNED and got["/exp#b"].value is None
    assert first.suggest("t1") == {"x": 0.2}  # the enqueued configuration comes first
    first.save(str(tmp_path / "searcher.pkl"))
    resumed = searcher()
    resumed.restore(str(tmp_path / "searcher.pkl"))
    trials = RI.optuna_study(resumed).trials
    assert sorted(t.user_attrs[WARM_ATTR] for t in trials if WARM_ATTR in t.user_attrs) == ["/exp#a", "/exp#b"]
    assert [t.user_attrs.get(ENQUEUE_ATTR) for t in trials if ENQUEUE_ATTR in t.user_attrs] == [0]
    assert "t1" in RI.optuna_trials(resumed)


def test_canary_ray_stages_our_files_on_restore_and_uploads_them_back_and_the_patch_stops_it(ray_local, tmp_path):
    """The fact keep_our_files_out_of_ray_staging answers: Ray's restore copies every top-level *.json/*.pkl of the
    experiment into its staging folder, and a state save uploads that folder over the experiment, so a file of ours
    written since (the lease's heartbeat) goes back to its copy of the restore. With the patch only Ray's state
    files are staged and a save leaves our files as their writer left them."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager as Manager

    from search.selection.confirm_files import EVIDENCE
    from search.experiment.lock import LOCK_FILE

    def experiment(name: str) -> tuple[Manager, Path, Path]:
        exp = tmp_path / name
        exp.mkdir()
        for f, text in ((LOCK_FILE, "restored"), (EVIDENCE, "restored"), ("experiment_state-2026.json", "{}"),
                        ("searcher-state-2026.pkl", "x"), ("mmsa_search.yaml", "restored")):
            (exp / f).write_text(text)
        manager = Manager(storage=StorageContext(storage_path=str(tmp_path), experiment_dir_name=name),
                          checkpoint_period=0)
        return manager, exp, Path(manager._storage.experiment_driver_staging_path)

    RI.keep_our_files_out_of_ray_staging()
    RI.keep_our_files_out_of_ray_staging()  # idempotent
    ray_own = Manager.sync_down_experiment_state.__wrapped__
    manager, exp, staging = experiment("unpatched")
    ray_own(manager)
    assert {LOCK_FILE, EVIDENCE, "experiment_state-2026.json", "searcher-state-2026.pkl"} <= \
        {p.name for p in staging.iterdir()}, "Ray no longer stages our files: the patch may be dropped"
    (exp / LOCK_FILE).write_text("live")
    manager.sync_up_experiment_state(save_fn=lambda: None, force=True, wait=True)
    assert (exp / LOCK_FILE).read_text() == "restored", "Ray no longer uploads its staging folder back"

    manager, exp, staging = experiment("patched")
    manager.sync_down_experiment_state()
    assert sorted(p.name for p in staging.iterdir()) == ["experiment_state-2026.json", "searcher-state-2026.pkl"]
    (exp / LOCK_FILE).write_text("live")
    (exp / EVIDENCE).write_text("live")
    manager.sync_up_experiment_state(save_fn=lambda: None, force=True, wait=True)
    assert (exp / LOCK_FILE).read_text() == (exp / EVIDENCE).read_text() == "live"


def test_trial_state_names_are_rays():
    """search/settings/schema.py names Ray's trial states once; every reader compares with these names."""
    from ray.tune.experiment import Trial

    assert (S.PENDING, S.RUNNING, S.PAUSED, S.TERMINATED, S.ERROR) == (
        Trial.PENDING, Trial.RUNNING, Trial.PAUSED, Trial.TERMINATED, Trial.ERROR)


def test_canary_state_file_names_are_rays(tiny_run):
    """search/experiment/layout.py, results.py and state_backup.py find Ray's state files by these names."""
    from ray.tune.callback import CallbackList
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.impl.tuner_internal import _TUNER_PKL
    from ray.tune.search import BasicVariantGenerator, SearchGenerator, Searcher

    assert TuneController.CKPT_FILE_TMPL.format("*") == RI.TRIAL_TABLE_PATTERN
    assert _TUNER_PKL == RI.TUNER_FILE
    assert set(RI.SEARCH_START_PATTERNS) == {_TUNER_PKL, *(c.CKPT_FILE_TMPL.format("*") for c in (
        Searcher, SearchGenerator, BasicVariantGenerator))}
    assert set(RI.STATE_FILE_PATTERNS) == {*RI.SEARCH_START_PATTERNS, RI.TRIAL_TABLE_PATTERN,
                                           CallbackList.CKPT_FILE_TMPL.format("*")}
    top = {p.name for p in tiny_run["exp"].iterdir() if p.is_file()}
    assert RI.TUNER_FILE in top and any(RI.is_trial_table(n) for n in top)
    assert {n for n in top if RI.is_search_start_file(n)} >= {RI.TUNER_FILE} and \
        any(n.startswith("searcher-state-") for n in top if RI.is_search_start_file(n))


def test_canary_newest_state_file_is_the_one_ray_restores(tmp_path):
    """Ray restores the state file of each kind with the greatest name (the latest session start), whatever the
    modification times: the one ray_internals.newest picks."""
    import os

    import ray.cloudpickle as cloudpickle
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
    from ray.tune.search import Searcher
    from ray.tune.utils.util import _load_newest_checkpoint

    sessions = ["2026-01-02_00-00-00", "2026-01-01_23-59-59", "2025-12-31_10-00-00"]  # the newest written first
    for i, session in enumerate(sessions):
        table = tmp_path / RI.TRIAL_TABLE_PATTERN.replace("*", session)
        table.write_text("{}")
        searcher = tmp_path / Searcher.CKPT_FILE_TMPL.format(session)
        searcher.write_bytes(cloudpickle.dumps({"session": session}))
        for f in (table, searcher):
            os.utime(f, (1_000_000 + i, 1_000_000 + i))  # the older the name, the newer the mtime
    tables = [p.name for p in tmp_path.glob(RI.TRIAL_TABLE_PATTERN)]
    assert Path(_find_newest_experiment_checkpoint(str(tmp_path))).name == RI.newest(tables)
    assert RI.newest_first(tables)[0] == RI.newest(tables)
    searchers = [p.name for p in tmp_path.glob(Searcher.CKPT_FILE_TMPL.format("*"))]
    newest = _load_newest_checkpoint(str(tmp_path), Searcher.CKPT_FILE_TMPL.format("*"))
    assert Searcher.CKPT_FILE_TMPL.format(newest["session"]) == RI.newest(searchers)


def _make_stopped_trainable(marks: str):
    """Reports until Ray stops it; records what ended its thread, and (from an exit handler) that the process ran
    its exit handlers."""

    def trainable(config):
        import time

        from ray import tune

        from search.experiment import ray_internals as RI

        marks_dir = Path(marks)

        def at_exit():  # the process may end right after the thread is told to stop: let the thread record it
            deadline = time.monotonic() + 10
            while not (marks_dir / "stopped_by").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            (marks_dir / "exit_handlers_ran").write_text("yes")

        RI.run_at_worker_exit(at_exit)
        try:
            for epoch in range(1, 1000):
                tune.report({S.M.EPOCH: epoch})
        except BaseException as e:  # noqa: BLE001 - what Ray raises is the fact under test
            (marks_dir / "stopped_by").write_text(f"{type(e).__module__}:{type(e).__qualname__}")
            raise

    return trainable


def test_canary_ray_stops_the_trial_thread_with_system_exit_and_runs_exit_handlers(ray_local, tmp_path):
    """search/trial/trainable.py tells a stopped trial (ASHA's verdict, a pausing search) by RI.TRIAL_THREAD_STOPPED, and
    search/trial/async_checkpoint.py finishes a stopped trial's background writes in a handler of RI.run_at_worker_exit.
    Ray stops this trial after its first report and ends its process (no warm worker)."""
    import importlib
    import time

    from ray import tune

    marks = tmp_path / "marks"
    marks.mkdir()
    tuner = tune.Tuner(_make_stopped_trainable(str(marks)), tune_config=tune.TuneConfig(num_samples=1, reuse_actors=False),
                       run_config=tune.RunConfig(name="stopped", storage_path=str(tmp_path / "runs"), verbose=0,
                                                 stop={S.TRAINING_ITERATION: 1}))
    results = tuner.fit()
    assert not results.errors and results[0].metrics[S.M.EPOCH] == 1
    deadline = time.monotonic() + 30  # the worker process ends after fit returns
    while not (marks / "exit_handlers_ran").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    module, name = (marks / "stopped_by").read_text().split(":")
    assert issubclass(getattr(importlib.import_module(module), name), RI.TRIAL_THREAD_STOPPED), (module, name)
    assert (marks / "exit_handlers_ran").exists(), "Ray no longer runs a trial process's exit handlers when it ends it"
