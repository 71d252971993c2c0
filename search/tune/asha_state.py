"""Give a resumed search back the ASHA rungs it had before the crash.

Ray restores the scheduler from the state saved at launch, so the rung results recorded before a crash are lost
(ray-project/ray issue 30838) and a resumed ASHA would compare new results against empty rungs: it would stop
nothing until the rungs fill again. Replaying every result the trials reported, in the order they reported them,
into the restored scheduler rebuilds exactly the rungs it had, so it makes the same promotion and stopping decisions
it would have made without the crash.
"""
from __future__ import annotations

from types import SimpleNamespace

from search.experiment import ray_internals
from search.settings.schema import REPORTED_AT, TIMESTAMP, M


def replay(scheduler, trials, objective: M.Objective = M.DEFAULT_OBJECTIVE) -> dict[str, list[tuple[int, str]]]:
    """Feed every trial's reported results to an ASHA scheduler in report order; returns the decision it took
    for each (trial, epoch). The scheduler must have one bracket (the default), or trial placement is unknowable."""
    bracket = ray_internals.asha_bracket(scheduler)
    sign = -1.0 if objective.mode == "min" else 1.0  # ASHA keeps rewards as 'higher is better'
    events = sorted((r.get(REPORTED_AT, r.get(TIMESTAMP, 0)), r[M.EPOCH], t.trial_id, r[objective.running])
                    for t in trials for r in t.results if isinstance(r.get(objective.running), (int, float)))
    decisions: dict[str, list[tuple[int, str]]] = {}
    for _, epoch, trial_id, value in events:
        action = bracket.on_result(SimpleNamespace(trial_id=trial_id), epoch, sign * value)
        decisions.setdefault(trial_id, []).append((epoch, action))
    return decisions


def rungs(scheduler) -> list[tuple[float, dict]]:
    return ray_internals.asha_rungs(scheduler)
