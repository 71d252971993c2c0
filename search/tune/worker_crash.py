"""One line, naming the trial, when the Ray worker process of a trial dies (a segmentation fault in native code, the
out-of-memory killer, SIGKILL) or the node it ran on is lost, instead of Ray's Python traceback of the lost actor. Ray
Tune retries such a trial from its last checkpoint (search.max_failures); the user is told which trial it was, what
went, and that the search goes on."""
from __future__ import annotations

import logging
import sys

from ray.tune import Callback

# Ray Tune logs every failed trial task here, with the exception: the one place that sees what killed a trial.
TUNE_CONTROLLER_LOGGER = "ray.tune.execution.tune_controller"


def lost_node(trial, exc) -> str | None:
    """'IP (node ID8)' of the node the trial last reported from, when Ray counts that node dead and the error names
    it (Ray: "The actor died because its node has died. Node Id: ..."); None when the worker process alone died, or
    the trial died elsewhere (a retry that had not reported yet)."""
    import ray

    from search.settings.schema import NODE_ID

    node_id = (getattr(trial, "last_result", None) or {}).get(NODE_ID)
    if not node_id or node_id not in str(exc):
        return None
    try:
        dead = [n for n in ray.nodes() if n.get("NodeID") == node_id and not n.get("Alive")]
    except Exception:  # noqa: BLE001 - the head unreachable for a moment: the generic line, never a failed search
        return None
    return f"{dead[0].get('NodeManagerAddress', '?')} (node {node_id[:8]})" if dead else None


def dead_worker(exc) -> bool:
    """Whether a trial failed because its worker process died, not because its own code raised."""
    from ray.exceptions import LocalRayletDiedError, RayActorError, WorkerCrashedError

    return isinstance(exc, (RayActorError, WorkerCrashedError, LocalRayletDiedError))


class _Seen(logging.Filter):
    """Keeps Ray's traceback of a dead worker off the terminal, and hands the exception to the callback (Ray logs
    it, then calls on_trial_recover / on_trial_error, in the same thread)."""

    def __init__(self):
        super().__init__()
        self.exc = None

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and dead_worker(exc):
            self.exc = exc
            return False
        return True


class WorkerCrashNotice(Callback):
    def __init__(self, out=None):
        self._out = out
        self._seen: _Seen | None = None

    def __getstate__(self):  # tuner.pkl keeps the callback, not the filter or a live stream
        return {}

    def __setstate__(self, state):
        self._out, self._seen = None, None

    def setup(self, **info) -> None:
        log = logging.getLogger(TUNE_CONTROLLER_LOGGER)
        for old in [f for f in log.filters if isinstance(f, _Seen)]:  # an earlier fit in this process that raised:
            log.removeFilter(old)  # its filter would take the record first and this callback would never see it
        self._seen = _Seen()
        log.addFilter(self._seen)

    def on_step_begin(self, iteration, trials, **info) -> None:
        # Ray logs a dead worker and calls on_trial_recover / on_trial_error within one step; an exception logged on
        # a path that calls neither (a worker lost while its trial was being stopped) must not be blamed on the next
        # trial that fails for its own reasons.
        if self._seen is not None:
            self._seen.exc = None

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._say(trial, retried=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._say(trial, retried=False)

    def _say(self, trial, retried: bool) -> None:
        exc = self._seen.exc if self._seen is not None else None
        if exc is None:
            return  # the trial's own code raised: Ray's traceback and `mmsa status` say what
        self._seen.exc = None
        failures = getattr(trial.run_metadata, "num_failures", "?")
        then = (f"the search continues: the trial is retried from its last checkpoint (failure {failures} of "
                f"{trial.max_failures} allowed, search.max_failures)" if retried else
                "it is not retried (search.max_failures reached) and ends with an error; the search continues with "
                "the other trials")
        node = lost_node(trial, exc)
        what = (f"the node it ran on, {node}, was lost ({type(exc).__name__})" if node else
                f"its Ray worker process died ({type(exc).__name__}; a crash in native code, the out-of-memory killer "
                "or a kill; any native stack dump printed just before is that process's own)")
        print(f"trial {trial.trial_id}: {what}; {then}", file=self._out or sys.stderr, flush=True)

    def on_experiment_end(self, trials, **info) -> None:
        if self._seen is not None:
            logging.getLogger(TUNE_CONTROLLER_LOGGER).removeFilter(self._seen)
