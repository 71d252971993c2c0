"""Refusals written once and called by every command that needs them: the experiment in use (search/experiment/lock.py
refuse_held), a `mmsa confirm` run where a search is needed (search/experiment/layout.py refuse_confirm_run) and results
made on other data (data_pipeline/preprocess.py check_same_data). Each test makes every caller refuse and checks that
they all say it the one way, so a copy that drifted from the rule would fail here. Experiments written by hand."""
import re

import pytest
import yaml

from data_pipeline.errors import UserError
from data_pipeline.preprocess import data_fingerprint
from model.config import Config
from search.experiment import layout as experiment
from search.commands import confirm
from search.cli import main
from search.commands.export import load_run_config
from search.experiment.lock import ExperimentLock
from search.commands.refine import write_refine_space
from search.settings.space import parse_spec
from search.selection.warm_start import collect
from tests.test_confirm import fake_confirmation
from tests.test_intervals import fake_experiment


def _refusal(call) -> str:
    with pytest.raises(UserError) as e:
        call()
    return str(e.value)


def _spec(meta, data_dir=None):
    d = {"space": meta["spec"]["space"]}
    if data_dir is not None:
        d["fixed"] = Config().with_overrides({"data.data_dir": str(data_dir)}).to_dict()
    return parse_spec(d, "test")


def test_every_command_refuses_an_experiment_in_use_the_same_way(tmp_path):
    exp = str(fake_experiment(tmp_path))
    held = ExperimentLock(exp, "mmsa search --name held").acquire()
    try:
        said = [_refusal(lambda: ExperimentLock(exp, "mmsa resume").acquire()),
                _refusal(lambda: write_refine_space(exp)),
                _refusal(lambda: confirm.run_confirm(exp)),
                _refusal(lambda: collect([exp], _spec(experiment.read_meta(exp)), "f" * 64))]
    finally:
        held.release()
    for msg, subject in zip(said, [exp, exp, exp, f"--warm-start {exp}"]):
        assert re.match(re.escape(subject) + r" is in use by `mmsa search --name held` \(pid \d+ on ", msg), msg
    assert [m.split("); ", 1)[1][:20] for m in said] == ["one search or resume", "refine the search wh",
                                                         "confirm the search w", "its trials are not f"]


def test_every_command_refuses_a_confirm_run_where_a_search_is_needed_the_same_way(tmp_path):
    exp = fake_experiment(tmp_path)
    cexp = str(fake_confirmation(exp))
    assert experiment.is_confirm_run(experiment.read_meta(cexp)) and not experiment.is_confirm_run(
        experiment.read_meta(exp))  # `mmsa resume` continues a confirmation as one
    said = [_refusal(lambda: write_refine_space(cexp)), _refusal(lambda: confirm.run_confirm(cexp)),
            _refusal(lambda: collect([cexp], _spec(experiment.read_meta(exp)), "f" * 64))]
    for msg, subject in zip(said, [cexp, cexp, f"--warm-start {cexp}"]):
        assert msg.startswith(f"{subject}: a `mmsa confirm` run (fixed configurations with fresh seeds), not a search; ")
    assert str(exp) in said[1]  # confirm names the search the confirmation belongs to


def test_every_command_refuses_results_made_on_other_data_the_same_way(tmp_path, demo_dir, capsys):
    exp = fake_experiment(tmp_path)
    meta = experiment.read_meta(exp)
    experiment.write_meta(exp, {**meta, "data_dir": str(demo_dir), "data_fingerprint": "0" * 64})
    now = data_fingerprint(demo_dir, "train")
    export = tmp_path / "best.yaml"
    export.write_text(yaml.safe_dump({**Config().with_overrides({"data.data_dir": str(demo_dir)}).to_dict(),
                                      "search": {"data_dir": "/elsewhere", "data_fingerprint": "0" * 64}}))
    said = [_refusal(lambda: confirm.run_confirm(str(exp))),
            _refusal(lambda: collect([str(exp)], _spec(meta, demo_dir), now)),
            _refusal(lambda: load_run_config(export))]
    assert main(["refine", str(exp), "--num-samples", "2"]) == 2
    said.append(capsys.readouterr().err.removeprefix("error: ").strip())
    subjects = [str(exp), f"--warm-start {exp}", f"the search {export} was exported from", str(exp)]
    recorded = [demo_dir, demo_dir, "/elsewhere", demo_dir]
    for msg, subject, was in zip(said, subjects, recorded):
        assert msg.startswith(f"{subject} ran on other data than {demo_dir} holds now (it ran on {was}, fingerprint "
                              f"{'0' * 12}; now {now[:12]}): "), msg
    assert not (tmp_path / "exp-refine-space.yaml").exists()  # refused before the space file is written
