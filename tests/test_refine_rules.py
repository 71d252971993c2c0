"""The coarse-to-fine rules on hand-made trials, without Ray: the refined space (lr range, choices, grace period from
the learning curves), which earlier trials lie inside a new space and how they look to Optuna, and enqueue checks."""
from pathlib import Path

import pytest
import yaml

from data_pipeline.errors import UserError
from model import metrics as M
from model.config import Config
from search.commands.refine import refine_dict, stable_from
from search.selection.results import TrialSummary
from search.settings.schema import FINISHED, TRAINING_ITERATION
from search.settings.space import parse_spec, spec_to_dict
from search.selection.warm_start import check_point, outside, points_from_file, warm_trial

SPACE = {"train.lr": {"loguniform": [1e-6, 1e-4]}, "train.batch_size": {"choice": [16, 32, 64, 128]},
         "model.complexity": {"choice": ["high", "low"]}, "model.dropout": {"uniform": [0.0, 0.5]}}


def _spec(space=SPACE, epochs=4, grace=1):
    return parse_spec({"space": space, "fixed": {"train": {"epochs": epochs}}, "search": {"grace_period": grace}}, "t")


def _trial(tid, lr, batch, cx, losses, finished=True, state="TERMINATED", dropout=0.1, epochs=4):
    cfg = Config().with_overrides({"train.lr": lr, "train.batch_size": batch, "model.complexity": cx,
                                   "model.dropout": dropout, "train.epochs": epochs}).to_dict()
    best, rows = float("inf"), []
    for e, v in enumerate(losses, 1):
        best = min(best, v)
        rows.append({M.EPOCH: e, TRAINING_ITERATION: e, M.VAL_LOSS: v, M.BEST_VAL_LOSS: best,
                     FINISHED: int(finished and e == len(losses))})
    return TrialSummary(tid, Path(tid), cfg, state, rows)


def _meta(spec):
    return {"name": "coarse", "spec": spec_to_dict(spec)}


def test_lr_range_spans_the_top_trials_with_a_margin_and_choices_keep_what_they_used():
    trials = [_trial("a", 2e-5, 32, "low", [0.9, 0.6, 0.5, 0.45]),
              _trial("b", 8e-6, 64, "low", [0.9, 0.7, 0.55, 0.5]),
              _trial("c", 4e-5, 32, "low", [1.0, 0.8, 0.6, 0.55]),
              _trial("d", 9e-5, 128, "high", [1.1, 1.0, 0.9, 0.9]),  # fourth: outside the top 3
              _trial("e", 1e-6, 16, "high", [0.2], state="ERROR")]  # errored: never counted
    d, notes = refine_dict(_meta(_spec()), trials, top=3)
    assert d["space"]["train.lr"] == {"loguniform": [4e-6, 8e-5]}
    assert d["space"]["train.batch_size"] == {"choice": [32, 64]}
    assert d["space"]["model.complexity"] == {"choice": ["low"]}
    lo, hi = d["space"]["model.dropout"]["uniform"]
    assert (lo, hi) == pytest.approx((0.05, 0.15))  # all 0.1: 10% of the old range [0, 0.5] on each side
    assert d["fixed"]["train"]["epochs"] == 4 and "a, b, c" in notes[0]
    parse_spec(d, "refined")  # a valid space file
    for t in trials[:3]:  # every top trial lies inside the refined space
        assert outside(t.config, parse_spec(d, "refined")) is None


def test_ranges_never_widen_and_an_edge_is_noted():
    trials = [_trial("a", 1e-4, 32, "low", [0.5]), _trial("b", 6e-5, 32, "low", [0.6])]
    d, notes = refine_dict(_meta(_spec()), trials, top=2)
    assert d["space"]["train.lr"] == {"loguniform": [3e-5, 1e-4]}
    assert any("edge" in n for n in notes)


def test_grace_period_from_the_epoch_where_the_top_curves_stop_crossing():
    # b leads until epoch 2, a from epoch 3 on; c is last throughout: the order is final from epoch 3
    trials = [_trial("a", 2e-5, 32, "low", [0.9, 0.7, 0.4, 0.3, 0.25, 0.2], epochs=6),
              _trial("b", 1e-5, 32, "low", [0.8, 0.6, 0.5, 0.45, 0.4, 0.35], epochs=6),
              _trial("c", 3e-5, 32, "low", [1.0, 0.9, 0.8, 0.7, 0.6, 0.5], epochs=6)]
    d, notes = refine_dict(_meta(_spec(epochs=6)), trials, top=3)
    assert d["search"]["grace_period"] == 3 and "from epoch 3" in notes[-1]
    assert stable_from([[1, 2, 3], [2, 3, 4]]) == 1  # never cross: ASHA may decide after one epoch
    assert stable_from([[1, 2, 0.5], [2, 1, 1]]) == 3  # cross at the very end
    assert stable_from([[1, 2]]) is None


def test_grace_period_is_read_from_the_longest_curves_not_cut_short_by_a_stopped_trial():
    # b is among the top 3 but ASHA stopped it after 2 epochs; a, c and d ran all 6: their order is final from 3
    trials = [_trial("a", 2e-5, 32, "low", [0.9, 0.7, 0.4, 0.3, 0.25, 0.2], epochs=6),
              _trial("b", 1e-5, 32, "low", [0.5, 0.3], finished=False, epochs=6),
              _trial("c", 3e-5, 32, "low", [0.8, 0.6, 0.5, 0.45, 0.4, 0.35], epochs=6),
              _trial("d", 4e-5, 32, "low", [1.0, 0.9, 0.8, 0.7, 0.6, 0.5], epochs=6)]
    d, notes = refine_dict(_meta(_spec(epochs=6)), trials, top=3)
    assert d["search"]["grace_period"] == 3 and "a, c, d" in notes[-1], notes[-1]
    assert "b" in notes[0]  # b still counts among the top trials for the ranges


def test_grace_period_is_kept_with_a_single_top_trial_and_clamped_to_the_epochs():
    d, _ = refine_dict(_meta(_spec(epochs=4, grace=2)), [_trial("a", 2e-5, 32, "low", [0.5, 0.4, 0.3, 0.2])], top=3)
    assert d["search"]["grace_period"] == 2
    with pytest.raises(UserError, match="no finished trial"):
        refine_dict(_meta(_spec()), [_trial("a", 2e-5, 32, "low", [0.5], state="RUNNING")])


def test_warm_trials_inside_and_outside_a_new_space():
    spec = _spec({**SPACE, "train.lr": {"loguniform": [1e-5, 1e-4]}})
    done = _trial("a", 2e-5, 32, "low", [0.9, 0.6, 0.7, 0.5])
    w, why = warm_trial("/x/coarse", done, spec)
    assert why == "" and w.state == "COMPLETE" and w.value == 0.5
    assert w.intermediate == {1: 0.9, 2: 0.6, 3: 0.6, 4: 0.5} and w.params["train.lr"] == 2e-5
    pruned = _trial("b", 2e-5, 64, "high", [0.9, 0.8], finished=False)
    w, _ = warm_trial("/x/coarse", pruned, spec)
    assert w.state == "PRUNED" and w.value is None and w.intermediate == {1: 0.9, 2: 0.8}
    cases = [(_trial("c", 5e-6, 32, "low", [0.5]), "train.lr 5e-06 not in [1e-05, 0.0001]"),
             (_trial("d", 2e-5, 256, "low", [0.5]), "train.batch_size 256 not one of"),
             (_trial("e", 2e-5, 32, "low", [0.5], epochs=6), "train.epochs 6 where this search fixes 4"),
             (_trial("f", 2e-5, 32, "low", [0.5], state="ERROR"), "errored"),
             (_trial("g", 2e-5, 32, "low", [0.5], state="RUNNING"), "not finished")]
    for t, reason in cases:
        w, why = warm_trial("/x/coarse", t, spec)
        assert w is None and reason in why, (t.trial_id, why)
    # a key the new space no longer searches: inside only with the value it now fixes
    fixed_dropout = parse_spec({"space": {"train.lr": SPACE["train.lr"]}, "fixed": {"train": {"epochs": 4},
                                "model": {"dropout": 0.1, "complexity": "low"}, "data": {}}}, "t")
    assert outside(_trial("h", 2e-5, 128, "low", [0.5], dropout=0.1).config, fixed_dropout) is None
    assert "model.dropout 0.3" in outside(_trial("i", 2e-5, 128, "low", [0.5], dropout=0.3).config, fixed_dropout)


def test_enqueue_points_are_checked_against_the_space(tmp_path):
    spec = _spec()
    assert check_point({"train.lr": 8e-6, "train.batch_size": 128}, spec, "w") == {"train.lr": 8e-6, "train.batch_size": 128}
    with pytest.raises(UserError, match="train.lr 0.001 is outside the space"):
        check_point({"train.lr": 1e-3}, spec, "w")
    # YAML reads 1e-5 (no dot) as a string; the run config accepts it, so does enqueue
    assert check_point({"train.lr": "1e-5", "train.batch_size": 32}, spec, "w") == {"train.lr": 1e-5,
                                                                                   "train.batch_size": 32}
    with pytest.raises(UserError, match="train.epochs is not searched"):
        check_point({"train.epochs": 3}, spec, "w")
    f = tmp_path / "best.yaml"
    f.write_text(yaml.safe_dump({"train": {"lr": 8e-6, "batch_size": 128, "epochs": 6}, "model": {"complexity": "low"},
                                 "search": {"trial_id": "x", "best_epoch": 3}}))
    assert points_from_file(f, spec) == {"train.lr": 8e-6, "train.batch_size": 128, "model.complexity": "low"}
    s = parse_spec({"space": SPACE, "enqueue": [{"train.lr": 8e-6, "train.batch_size": 128, "model.complexity": "low"}]},
                   "s.yaml")
    assert s.enqueue == [{"train.lr": 8e-6, "train.batch_size": 128, "model.complexity": "low"}]
    assert parse_spec(spec_to_dict(s), "meta").enqueue == s.enqueue  # kept in the metadata for a resume
    with pytest.raises(UserError, match=r"s.yaml: enqueue\[0\]: model.complexity 'mid' is outside"):
        parse_spec({"space": SPACE, "enqueue": [{"model.complexity": "mid"}]}, "s.yaml")
