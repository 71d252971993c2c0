"""The search's time budget (search.time_budget, --time-budget): no trial starts once it is spent, running trials stop
at their next epoch boundary (the result they report carries that epoch's checkpoint, which Ray keeps) and end as
stopped, then the search ends. The time used is the driver's wall time while Tune runs, kept in the experiment
(search/experiment/time_used.py), so it counts across resumes but not the time between a kill and a resume.

Why not Ray's TuneConfig(time_budget_s=...): its TimeoutStopper only answers stop_all, so at the deadline Ray stops
every running trial at once, in the middle of an epoch (the epoch's work is lost), its clock restarts from the full
budget at every resume (it is pickled with the tuner and its last check is reset), and a restored tuner cannot be given
another budget (Ray pickles the stopper into its experiment state and puts it back on resume). Here a Stopper stops each trial on its next result, and stop_all ends the search only when the trials
that were running at the deadline have stopped; meanwhile the searcher proposes nothing (new_trials_allowed)."""
from __future__ import annotations

import contextlib
import logging
import time

from ray.tune import Callback
from ray.tune.stopper import Stopper

from search.experiment import time_used
from search.settings.duration import describe
from search.settings.schema import RUNNING

log = logging.getLogger("mmsa.time_budget")
SAVE_EVERY_S = 5.0  # a killed driver loses at most this much of the time it used
_in_force: "TimeBudget | None" = None  # the budget of the search this driver runs now (set and cleared by in_force)


def new_trials_allowed() -> bool:
    """The searcher's question before each proposal. Only the search running now counts: a budget spent by an earlier
    search in this process (a notebook, a test session, `mmsa resume` after `mmsa search`) must not starve the next."""
    return _in_force is None or not _in_force.spent


@contextlib.contextmanager
def in_force(budget: "TimeBudget | None"):
    """The one place a budget is put in force for the driver's Tuner.fit, and taken out however fit ends."""
    global _in_force
    _in_force = budget
    try:
        yield
    finally:
        _in_force = None


class TimeBudget(Stopper, Callback):
    """Ray's stopper (RunConfig.stop) and a callback (for the trials' states and the clock), one object in the driver."""

    def __init__(self, exp: str, budget_s: float, used_s: float = 0.0):
        self.exp, self.budget_s, self.used_before = str(exp), budget_s, used_s
        self._start = self._saved = None
        self._waiting: set | None = None  # trials running when the budget ran out, not yet stopped
        self._trials: list = []

    def __deepcopy__(self, memo):  # Ray deep-copies the experiment spec (which holds the stopper) for every new
        return self  # trial; a copy would restart the clock: there is one budget per driver

    def __getstate__(self):  # Ray pickles the stopper with the tuner; the clock and trials stay in this driver
        return {"exp": self.exp, "budget_s": self.budget_s, "used_before": self.used_before}

    def __setstate__(self, state):
        self.__init__(state["exp"], state["budget_s"], state["used_before"])

    def used(self) -> float:
        return self.used_before + (time.monotonic() - self._start if self._start is not None else 0.0)

    @property
    def spent(self) -> bool:
        return self._waiting is not None

    def _check(self) -> bool:
        if self._waiting is None and time_used.is_spent(self.used(), self.budget_s):
            self._waiting = {t.trial_id for t in self._trials if t.status == RUNNING}
            log.warning("time budget %s spent: no new trial starts; %d running trial(s) stop at their next epoch",
                        describe(self.budget_s), len(self._waiting))
            self.flush()
        return self._waiting is not None

    # Stopper: each trial stops on its first result after the deadline (an epoch boundary)
    def __call__(self, trial_id, result) -> bool:
        if not self._check():
            return False
        self._waiting.discard(trial_id)
        return True

    def stop_all(self) -> bool:
        if not self._check():
            return False
        self._waiting &= {t.trial_id for t in self._trials if t.status == RUNNING}  # errored or ended meanwhile
        return not self._waiting

    # Callback: the clock runs while Tune's loop does
    def on_step_begin(self, iteration, trials, **info):
        self._trials = trials
        if self._start is None:
            self._start = time.monotonic()

    def on_step_end(self, iteration, trials, **info):
        if self._saved is None or time.monotonic() - self._saved >= SAVE_EVERY_S:
            self.flush()

    def on_experiment_end(self, trials, **info):
        self.flush()

    def flush(self) -> None:
        if self._start is None:
            return
        self._saved = time.monotonic()
        time_used.write(self.exp, self.used(), self.spent)
