"""`--mlflow [URI]`: the search as MLflow runs, logged by the driver (Ray's MLflowLoggerCallback logs from the driver too,
but makes one top-level run per trial and keeps nothing across a resume). A parent run per search (its fixed config,
search settings and number of trials as params), a child run per trial nested under it (the sampled values as params,
each epoch's metrics with step = epoch, how it ended as a tag), and `mmsa resume` continues the same runs without
logging an epoch twice. Only the driver talks to the store, so on a cluster only the driver needs to reach it.
The store and the record of run ids: search/experiment/mlflow_runs.py."""
from __future__ import annotations

from ray.tune import Callback

from search.experiment import layout as experiment
from search.experiment import mlflow_runs as R
from search.settings.schema import FINISHED, REPORTED_AT, M

METRICS = tuple(k for k in M.EPOCH_METRICS if k != M.EPOCH)  # the epoch is each value's step


class MlflowLogger(Callback):
    def __init__(self, exp: str, uri: str):
        self.exp, self.uri = str(exp), uri
        self._store: R.Store | None = None
        self._rec: dict | None = None
        self._steps: dict[str, int] = {}  # trial id -> last epoch its run holds
        self._open: set[str] = set()  # trials running in this driver (their runs are ended as KILLED if it stops)
        self._meta: dict | None = None

    def __getstate__(self):  # Ray pickles callbacks into tuner.pkl; the client and the runs stay in this driver
        return {"exp": self.exp, "uri": self.uri}

    def __setstate__(self, state):
        self.__init__(state["exp"], state["uri"])

    # ---- the parent run ----------------------------------------------------------------------------------------
    def _parent(self) -> dict | None:
        if self._store is None:
            self._store = R.Store(self.uri)
            self._rec = self._open_parent()
        return None if self._store.off else self._rec

    def _open_parent(self) -> dict | None:
        store, meta = self._store, self._search_meta()
        rec, why = R.read(self.exp)
        if why:
            R.warn(f"warning: {why}; a new MLflow parent run is started")
        if rec is not None and rec["tracking_uri"] == self.uri and store.reopen(rec["parent_run_id"], rec["experiment_id"]):
            return rec
        exp_id = store.experiment_id(meta["name"])
        spec = meta.get("spec") or {}
        params = {**R.flat_params(spec.get("fixed") or {}), **R.flat_params({"search": spec.get("search") or {}}),
                  "search.num_samples": str(meta["num_samples"]),
                  "search.space": str(spec.get("space"))}
        run = store.start_run(exp_id, meta["name"], {R.TAG_EXPERIMENT: self.exp}, params) if exp_id else None
        if run is None:
            return None
        rec = {"tracking_uri": self.uri, "experiment_id": exp_id, "parent_run_id": run, "trials": {}}
        self._save(rec)
        return rec

    def _search_meta(self) -> dict:
        if self._meta is None:
            self._meta = experiment.read_meta(self.exp)
        return self._meta

    def _save(self, rec: dict) -> None:
        try:
            R.write(self.exp, rec)
        except Exception as e:  # noqa: BLE001 - a full disk: a resume then starts new runs; never fail the search
            R.warn(f"warning: could not write {self.exp}/{R.FILE} ({e}); a resume will log into new MLflow runs")

    # ---- a trial's run -----------------------------------------------------------------------------------------
    def _run(self, trial) -> str | None:
        rec = self._parent()
        if rec is None:
            return None
        tid = trial.trial_id
        run = rec["trials"].get(tid)
        if tid not in self._steps:  # first seen by this driver: a run from before a resume, or a new one
            if run is not None and self._store.reopen(run, rec["experiment_id"], rec["parent_run_id"]):
                self._steps[tid] = self._store.last_step(run, METRICS)
            else:
                space = (self._search_meta().get("spec") or {}).get("space") or {}
                config = R.flat_params(trial.config or {})
                run = self._store.start_run(rec["experiment_id"], f"trial_{tid}",
                                            {R.PARENT_TAG: rec["parent_run_id"], R.TAG_TRIAL: tid,
                                             R.TAG_EXPERIMENT: self.exp},
                                            {k: config[k] for k in space if k in config})
                if run is None:
                    return None
                rec["trials"][tid] = run
                self._save(rec)
                self._steps[tid] = 0
        self._open.add(tid)
        return rec["trials"].get(tid)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run = self._run(trial)
        epoch = result.get(M.EPOCH)
        if run is None or not isinstance(epoch, int) or epoch <= self._steps.get(trial.trial_id, 0):
            return  # an epoch re-run after a retry or resume from an earlier checkpoint is logged once
        metrics = {k: float(result[k]) for k in METRICS if M.finite(result.get(k)) is not None}
        self._store.log(run, metrics, step=epoch, timestamp_s=M.finite(result.get(REPORTED_AT)))
        self._steps[trial.trial_id] = epoch

    def _end(self, trial, how: str) -> None:
        run = self._run(trial)
        self._open.discard(trial.trial_id)
        if run is not None:
            self._store.log(run, tags={R.TAG_END: how})
            self._store.end(run, "FAILED" if how == "error" else "FINISHED")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "finished" if (trial.last_result or {}).get(FINISHED) else "stopped")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "error")

    # ---- the end of this driver's run --------------------------------------------------------------------------
    def on_experiment_end(self, trials, **info):
        self.flush()

    def flush(self) -> None:
        """Once Tune's loop ends (also after Ctrl-C): the runs of trials still open are KILLED (a resume reopens
        them), and the parent run FINISHED when every trial it saw ended, else KILLED. Once: Ray's experiment end
        and the tuner's own flush after fit both call it, and the second must not call a stopped search FINISHED."""
        if self._store is None or self._rec is None or self._store.off or getattr(self, "_flushed", False):
            return
        self._flushed = True
        for tid in sorted(self._open):
            self._store.end(self._rec["trials"][tid], "KILLED")
        self._store.end(self._rec["parent_run_id"], "KILLED" if self._open else "FINISHED")
        self._open.clear()


def logger_for(exp: str, given: str | None) -> MlflowLogger | None:
    """The MLflow callback of a search or resume: `given` is --mlflow's value (None: not given; "": the default
    store). A resume without --mlflow continues logging where the search's signed record says it logged."""
    if given is not None:
        return MlflowLogger(exp, R.tracking_uri(given))
    rec, why = R.read(exp)
    if why:
        R.warn(f"warning: not logged to MLflow: {why} (pass --mlflow URI to log to a store)")
    if rec is None:
        return None
    try:
        R.require_mlflow("this search logs to MLflow")
    except Exception as e:  # noqa: BLE001 - tracking is never a reason to stop a search
        R.warn(f"warning: {e}; the search goes on without MLflow logging")
        return None
    return MlflowLogger(exp, rec["tracking_uri"])

