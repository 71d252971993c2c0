"""OptunaSearch that tells Optuna what really happened to each trial.

Ray's OptunaSearch reports the last result of every trial as COMPLETE, so a trial ASHA stopped after one epoch
looks to TPE like a finished trial whose final loss is its epoch-1 loss. Here:
- a trial that ended by itself (all epochs, or its val loss rose `patience` epochs in a row) is COMPLETE with its
  best val loss;
- a trial ASHA stopped is PRUNED: TPE then uses its intermediate values (best val loss per epoch, reported every
  epoch, including the one that made ASHA stop it) and ranks it below completed trials, as ASHA decided;
- a trial that errored is FAIL. See docs/search.md.
Before the first proposal it also adds the warm-start trials of earlier searches and enqueues the configurations to
try first (search/selection/warm_start.py), each once: a study in an RDB that already holds them (a resume) is not given
them again, and a restored searcher (a resume, whose pickled study holds them) gets back any that are missing.
"""
from __future__ import annotations

import logging

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from search.experiment.ray_internals import completed_trials, intermediate_values, optuna_study, optuna_trials
from search.settings.schema import FINISHED, TRAINING_ITERATION, M

log = logging.getLogger(__name__)


def told_before(study, ot_trial) -> bool:
    """Whether the study already holds this trial as finished (COMPLETE, PRUNED or FAIL)."""
    if study is None:
        return False
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return any(t.number == ot_trial.number for t in finished)


def optuna_state(result: dict | None, error: bool, metric: str = M.SEARCH_METRIC) -> tuple[TrialState, float | None]:
    """metric: the objective's running best (the Tuner's metric)."""
    if error or not result or result.get(metric) is None:
        return TrialState.FAIL, None
    if result.get(FINISHED):
        return TrialState.COMPLETE, float(result[metric])
    return TrialState.PRUNED, None


def add_known(study, distributions: dict, warm: list, enqueue: list[dict], log=log.info) -> tuple[int, int]:
    """Add the warm-start trials and enqueue the first configurations that `study` does not hold yet (markers in
    the trials' user attributes); returns how many of each were added."""
    import optuna

    from search.selection.warm_start import ENQUEUE_ATTR, WARM_ATTR, optuna_name

    have = study.get_trials(deepcopy=False)
    warm_have = {t.user_attrs.get(WARM_ATTR) for t in have}
    queued_have = {t.user_attrs.get(ENQUEUE_ATTR) for t in have}
    added = queued = 0
    for w in warm:
        if w.marker in warm_have:
            continue
        params = {optuna_name(k): v for k, v in w.params.items()}
        study.add_trial(optuna.trial.create_trial(
            state=TrialState[w.state], value=w.value, params=params,
            distributions={k: distributions[k] for k in params}, intermediate_values=w.intermediate,
            user_attrs={WARM_ATTR: w.marker}))
        added += 1
    for i, point in enumerate(enqueue):
        if i not in queued_have:
            study.enqueue_trial({optuna_name(k): v for k, v in point.items()}, user_attrs={ENQUEUE_ATTR: i},
                                skip_if_exists=False)
            queued += 1
    if added or queued:
        log("optuna study: %d warm-start trial(s) added, %d configuration(s) enqueued", added, queued)
    return added, queued


class TruthfulOptunaSearch(OptunaSearch):
    def __init__(self, *args, warm: list | None = None, enqueue: list[dict] | None = None, **kwargs):
        self._mmsa_warm = list(warm or [])  # search/warm_start.WarmTrial
        self._mmsa_enqueue = list(enqueue or [])
        self._mmsa_dists: dict = {}
        super().__init__(*args, **kwargs)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        """Ray calls this with the Tuner's param_space before the first trial (of a search and of a resume); the
        study exists after it: give it what earlier searches know before anything is proposed."""
        ok = super().set_search_properties(metric, mode, config, **spec)
        if ok:
            self._mmsa_dists = self.convert_search_space(config)
            add_known(optuna_study(self), self._mmsa_dists, self._mmsa_warm, self._mmsa_enqueue)
        return ok

    def restore(self, checkpoint_path: str) -> None:
        """A resume: the pickled study replaces the one set up above; it holds the warm trials already (they were
        added before the first save), so this adds only what an older state might lack (nothing, normally)."""
        super().restore(checkpoint_path)
        study = optuna_study(self)
        if study is not None and getattr(self, "_mmsa_dists", None):
            add_known(study, self._mmsa_dists, getattr(self, "_mmsa_warm", []), [])

    def suggest(self, trial_id: str):
        from search.tune.time_budget import new_trials_allowed

        if not new_trials_allowed():  # None: nothing now (FINISHED would be saved and outlast a raised budget)
            return None
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        ot_trial = optuna_trials(self).get(trial_id)
        if ot_trial is not None and result.get(TRAINING_ITERATION) in intermediate_values(ot_trial):
            return  # a resumed trial repeats the epoch that was in flight at the crash: Optuna has it already
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        done, ot_trials = completed_trials(self), optuna_trials(self)
        if trial_id in done or trial_id not in ot_trials:
            return
        if told_before(optuna_study(self), ot_trials[trial_id]):
            # an RDB study (--optuna-storage) outlives a crash that the pickled searcher did not: the trial was told
            # before it (a finished trial restored by `mmsa resume`, search/trial/ended_trial.py)
            done.add(trial_id)
            return
        metric = self._metric or M.SEARCH_METRIC  # set by Ray from the Tuner's metric (search.metric)
        state, value = optuna_state(result, error, metric)
        if state == TrialState.PRUNED and result.get(TRAINING_ITERATION):
            # Ray does not pass the result that made ASHA stop a trial to on_trial_result: report it here, so TPE
            # sees how far the trial got and how good it was then.
            ot_trial = ot_trials[trial_id]
            if result[TRAINING_ITERATION] not in intermediate_values(ot_trial):
                ot_trial.report(float(result[metric]), result[TRAINING_ITERATION])
        try:
            optuna_study(self).tell(ot_trials[trial_id], value, state=state)
        except Exception as e:  # e.g. a NaN loss: Optuna refuses it; the trial stays out of the model
            log.warning("optuna refused the result of trial %s: %s", trial_id, e)
        done.add(trial_id)
