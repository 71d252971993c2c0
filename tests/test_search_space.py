from pathlib import Path

import optuna
import pytest
import yaml

from data_pipeline.errors import UserError
from model import metrics as M
from search.settings.space import load_spec, parse_spec
from search.trial.trainable import FINISHED
from search.experiment.ray_internals import completed_trials
from search.tune.truthful_optuna import optuna_state


def test_default_space_is_the_labs():
    s = load_spec(None)
    assert s.space["train.lr"].kind == "loguniform" and s.space["train.lr"].args == [1e-6, 1e-4]
    assert s.space["train.batch_size"].args == [16, 32, 64, 128]
    assert s.space["model.complexity"].args == ["high", "low"]
    assert s.fixed.train.epochs == 6


@pytest.mark.parametrize(
    "text, message",
    [
        ("space:\n  train.lr: {loguniform: [1e-6, 1e-4]}\nsearchh: {}\n", "unknown key(s) ['searchh']"),
        ("space:\n  train.lrr: {loguniform: [1.0e-6, 1.0e-4]}\n", "space.train.lrr: unknown key"),
        ("space:\n  train.batch_size: {choice: []}\n", "space.train.batch_size: choice needs a non-empty list"),
        ("space:\n  train.lr: {loguniform: [1.0e-4, 1.0e-6]}\n", "space.train.lr: low 0.0001 must be below high 1e-06"),
        ("space:\n  train.lr: {loguniform: [0, 1.0e-6]}\n", "loguniform needs low > 0"),
        ("space:\n  train.lr: {normal: [0, 1]}\n", "space.train.lr: expected one of"),
        ("space:\n  train.batch_size: {choice: [16, 32.5]}\n", "value 32.5 is not valid for train.batch_size"),
        ("space:\n  train.lr: {loguniform: [1.0e-6, 1.0e-4]}\nfixed:\n  train: {epochs: 0}\n", "fixed: train.epochs: 0 must be >= 1"),
        ("space:\n  model.complexity: {choice: [high, medium]}\n", "'medium' is not one of high, low"),
        ("space:\n  train.lr: {loguniform: [1.0e-6, 1.0e-4]}\nsearch:\n  reduction_factor: 1\n", "search.reduction_factor: 1 must be >= 2"),
        ("fixed: {}\n", "'space' must map run-config keys"),
    ],
)
def test_bad_space_is_a_clear_error(tmp_path, text, message):
    (tmp_path / "space.yaml").write_text(text)
    with pytest.raises(UserError) as e:
        load_spec(tmp_path / "space.yaml")
    assert message in str(e.value)
    assert "space.yaml" in str(e.value)


def test_param_space_keeps_fixed_values():
    s = parse_spec(yaml.safe_load("space:\n  train.lr: {loguniform: [1.0e-6, 1.0e-4]}\nfixed:\n  model: {modality: text}\n"), "x")
    ps = s.param_space()
    assert ps["model"]["modality"] == "text" and ps["train"]["epochs"] == 6
    assert type(ps["train"]["lr"]).__name__ == "Float"


def test_optuna_is_told_the_truth():
    assert optuna_state({M.SEARCH_METRIC: 0.3, FINISHED: 1}, False) == (optuna.trial.TrialState.COMPLETE, 0.3)
    assert optuna_state({M.SEARCH_METRIC: 0.9, FINISHED: 0}, False)[0] == optuna.trial.TrialState.PRUNED
    assert optuna_state({M.SEARCH_METRIC: 0.9}, True)[0] == optuna.trial.TrialState.FAIL
    assert optuna_state(None, False)[0] == optuna.trial.TrialState.FAIL


def test_search_refuses_missing_weights_before_ray(demo_cfg, tmp_path, capsys):
    import ray

    from search.cli import main

    fixed = demo_cfg.with_overrides({"model.image_weights": str(tmp_path / "resnet50.safetensors")}).to_dict()
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}, "fixed": fixed}))
    was_running = ray.is_initialized()
    assert main(["search", "--data", demo_cfg.data.data_dir, "--space", str(tmp_path / "space.yaml"), "--num-samples", "2",
                 "--name", "w", "--storage", str(tmp_path / "rr")]) == 2
    err = capsys.readouterr().err
    assert "resnet50.safetensors: weights file not found (model.image_weights)" in err and "mmsa fetch-pretrained" in err
    assert ray.is_initialized() == was_running and not (tmp_path / "rr").exists()


@pytest.mark.parametrize("flags, message", [
    (["--num-samples", "0"], "--num-samples 0: must be a whole number of trials from 1"),
    (["--num-samples", "-1"], "--num-samples -1"),
    (["--name", "../x"], "--name '../x': use letters"),
    (["--name", "a/b"], "--name 'a/b'"),
    (["--name", ".hidden"], "--name '.hidden'"),
    (["--cpus-per-trial", "0"], "search.cpus_per_trial: 0.0 must be > 0"),
    (["--seed", "-1"], "search.seed: -1 must be >= 0"),
    (["--max-concurrent", "-1"], "search.max_concurrent: -1 must be >= 0"),
    (["--optuna-storage", "nosuchdb://x"], "--optuna-storage nosuchdb://x: cannot open it as an Optuna database"),
    (["--grace-period", "7"], "search.grace_period 7 is more than train.epochs 6: ASHA could never stop a trial"),
])
def test_bad_search_flags_refused_before_anything_is_written(tmp_path, demo_dir, flags, message, capsys):
    from search.cli import main

    args = {"--num-samples": "2", "--name": "ok"}
    for k, v in zip(flags[::2], flags[1::2]):
        args[k] = v
    argv = ["search", "--data", str(demo_dir), "--storage", str(tmp_path / "rr")]
    for k, v in args.items():
        argv += [k, v]
    argv += [f for f in flags if f not in args and f not in args.values()]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "rr").exists()  # nothing written, no Ray started


def test_two_searches_cannot_share_one_optuna_study(tmp_path, demo_dir, capsys):
    import optuna

    from search.cli import main

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="dup", storage=url)
    assert main(["search", "--data", str(demo_dir), "--num-samples", "2", "--name", "dup", "--storage",
                 str(tmp_path / "rr"), "--optuna-storage", url]) == 2
    assert "already holds a study named 'dup'" in capsys.readouterr().err
    assert not (tmp_path / "rr").exists()


def test_export_never_overwrites_without_the_flag(tmp_path, capsys):
    from search.cli import main

    out = tmp_path / "best.yaml"
    out.write_text("mine")
    assert main(["export", str(tmp_path / "nowhere"), "-o", str(out)]) == 2
    assert "--output" in capsys.readouterr().err and out.read_text() == "mine"


def test_a_trial_an_rdb_study_already_holds_is_not_told_again(tmp_path, caplog):
    """`--optuna-storage`: the study in the database outlives a crash that the pickled searcher does not. A finished
    trial restored by `mmsa resume` (search/trial/ended_trial.py) completes again; Optuna already has it: no second tell,
    no "refused" warning, its state unchanged."""
    from search.tune.truthful_optuna import TruthfulOptunaSearch

    db = f"sqlite:///{tmp_path / 'o.db'}"
    searcher = TruthfulOptunaSearch(space={"x": optuna.distributions.FloatDistribution(0.0, 1.0)}, metric=M.SEARCH_METRIC,
                                    mode=M.OPT_MODE, study_name="s", storage=optuna.storages.RDBStorage(db))
    assert searcher.suggest("t1") is not None
    searcher.on_trial_complete("t1", {M.SEARCH_METRIC: 0.4, FINISHED: 1, "training_iteration": 2})
    completed_trials(searcher).clear()  # the searcher as restored from its pickle saved before t1 ended
    with caplog.at_level("WARNING"):
        searcher.on_trial_complete("t1", {M.SEARCH_METRIC: 0.4, FINISHED: 1, "training_iteration": 2})
    assert "refused" not in caplog.text
    (t,) = optuna.load_study(study_name="s", storage=db).get_trials()
    assert t.state == optuna.trial.TrialState.COMPLETE and t.value == 0.4


def test_builtin_spaces_by_name_and_a_file_of_that_name_wins(tmp_path, monkeypatch):
    """--space recommended / default are the shipped spaces; the recommended one parses, searches the keys its file
    explains, and starts lr at 1e-5 (the real task's evidence); a file called `recommended` in the working folder is
    that file, not the built-in."""
    from search.settings.space import BUILTIN_SPACES, load_spec

    rec = load_spec("recommended")
    assert rec.space["train.lr"].args == [1e-5, 3e-4] and rec.space["train.lr"].kind == "loguniform"
    text = BUILTIN_SPACES["recommended"].read_text()
    for key in rec.space:  # each searched key has its reason in the file, above it
        assert text.split(f"  {key}:")[0].rstrip().splitlines()[-1].lstrip().startswith("#"), key
    assert sorted(load_spec("default").space) == sorted(load_spec(None).space)
    monkeypatch.chdir(tmp_path)
    Path("recommended").write_text("space:\n  train.lr: {loguniform: [1.0e-4, 1.0e-3]}\n")
    assert load_spec("recommended").space["train.lr"].args == [1e-4, 1e-3]
