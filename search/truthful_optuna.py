"""OptunaSearch that tells Optuna what really happened to each trial.

Ray's OptunaSearch reports the last result of every trial as COMPLETE, so a trial ASHA stopped after one epoch
looks to TPE like a finished trial whose final loss is its epoch-1 loss. Here:
- a trial that ended by itself (all epochs, or its val loss rose `patience` epochs in a row) is COMPLETE with its
  best val loss;
- a trial ASHA stopped is PRUNED: TPE then uses its intermediate values (best val loss per epoch, reported every
  epoch, including the one that made ASHA stop it) and ranks it below completed trials, as ASHA decided;
- a trial that errored is FAIL. See docs/search.md.
"""
from __future__ import annotations

import logging

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from .ray_internals import completed_trials, intermediate_values, optuna_study, optuna_trials
from .schema import FINISHED, TRAINING_ITERATION, M

log = logging.getLogger(__name__)


def optuna_state(result: dict | None, error: bool) -> tuple[TrialState, float | None]:
    if error or not result or result.get(M.SEARCH_METRIC) is None:
        return TrialState.FAIL, None
    if result.get(FINISHED):
        return TrialState.COMPLETE, float(result[M.SEARCH_METRIC])
    return TrialState.PRUNED, None


class TruthfulOptunaSearch(OptunaSearch):
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        ot_trial = optuna_trials(self).get(trial_id)
        if ot_trial is not None and result.get(TRAINING_ITERATION) in intermediate_values(ot_trial):
            return  # a resumed trial repeats the epoch that was in flight at the crash: Optuna has it already
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        done, ot_trials = completed_trials(self), optuna_trials(self)
        if trial_id in done or trial_id not in ot_trials:
            return
        state, value = optuna_state(result, error)
        if state == TrialState.PRUNED and result.get(TRAINING_ITERATION):
            # Ray does not pass the result that made ASHA stop a trial to on_trial_result: report it here, so TPE
            # sees how far the trial got and how good it was then.
            ot_trial = ot_trials[trial_id]
            if result[TRAINING_ITERATION] not in intermediate_values(ot_trial):
                ot_trial.report(float(result[M.SEARCH_METRIC]), result[TRAINING_ITERATION])
        try:
            optuna_study(self).tell(ot_trials[trial_id], value, state=state)
        except Exception as e:  # e.g. a NaN loss: Optuna refuses it; the trial stays out of the model
            log.warning("optuna refused the result of trial %s: %s", trial_id, e)
        done.add(trial_id)
