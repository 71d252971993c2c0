"""MLflow tracking of a search (`--mlflow [URI]`, the optional extra `mmsa-tune[mlflow]`): the store, reached only from
the driver, and the experiment's record of its runs, so that `mmsa resume` and `mmsa export` log into the same parent
run and trial runs.

EXP/mlflow_runs.json = {"tracking_uri", "experiment_id", "parent_run_id", "trials": {trial_id: run_id}, "signature"}.
Like every file of an experiment it is untrusted input (shared NFS, a bucket, a tarball): it is shape-checked, and it
is signed with the key that signs search state (search/experiment/state_trust.py), because its tracking URI says where
`mmsa resume` and `mmsa export` send the search's parameters and paths: an unsigned or edited file is ignored (a
warning), never followed to a store the user did not choose.

Tracking must never stop a search: the first failure of the store (a server down, a bad URI, a locked database) is one
warning line, and the driver logs nothing more to MLflow until it ends (a server that stopped answering would
otherwise hold up Tune's loop for every call)."""
from __future__ import annotations

import hmac
import json
import os
import re
import sys
import time
from pathlib import Path

from data_pipeline.atomic import write_file
from data_pipeline.errors import UserError
from data_pipeline.printable import term

from search.experiment import state_trust, storage

FILE = "mlflow_runs.json"
DB_FILE = "mlflow.db"  # the default store: MLflow's own default (`mlflow ui` in that folder opens it)
INSTALL = "pip install 'mmsa-tune[mlflow]'"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's tag for a nested run (what its UI and `mlflow.start_run(nested=True)` use)
TAG_EXPERIMENT = "mmsa.experiment"  # the experiment folder of a run
TAG_TRIAL = "mmsa.trial_id"
TAG_END = "mmsa.end"  # how a trial ended: finished, stopped (ASHA or the time budget), error
TAG_SELECTION = "mmsa.export.selection"
_ID = re.compile(r"[A-Za-z0-9_.-]{1,100}")  # Ray trial ids, MLflow experiment and run ids
MAX_PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call
# A tracking server that does not answer: seconds per request and retries before the one warning (MLflow's defaults,
# 120 s and 7 retries with backoff, would hold up Tune's loop for minutes per call). The user's own settings win.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}



def warn(line: str) -> None:
    """One line on stderr (not through logging, which Ray reconfigures): tracking problems are never tracebacks."""
    print(term(line), file=sys.stderr, flush=True)


def require_mlflow(flag: str = "--mlflow") -> None:
    """The one check that the optional extra is installed, before anything expensive runs."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UserError(f"{flag}: MLflow is not installed; {INSTALL}") from None


def tracking_uri(given: str | None) -> str:
    """The store a search logs to, made independent of the working directory (a resume from elsewhere logs to the same
    one). given "": $MLFLOW_TRACKING_URI, else MLflow's default, ./mlflow.db (SQLite). A plain path or file: URI is an
    MLflow file store, kept where the user points (MLflow 3 keeps that backend in maintenance mode and refuses it unless
    MLFLOW_ALLOW_FILE_STORE=true, which naming it on our command line sets)."""
    uri = given or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(DB_FILE).resolve()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):  # relative to the working directory
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    elif uri.startswith("file:") and not uri.startswith("file:///"):
        uri = Path(uri[len("file:"):]).resolve().as_uri()
    elif "://" not in uri and not uri.startswith(("databricks", "file:")):
        uri = Path(uri).expanduser().resolve().as_uri()
    return uri


def _signed_body(d: dict) -> bytes:
    return json.dumps({k: d[k] for k in ("tracking_uri", "experiment_id", "parent_run_id", "trials")},
                      sort_keys=True).encode()


def read(exp: str) -> tuple[dict | None, str | None]:
    """(the record, None), (None, None) when the search was never logged, or (None, why it is not used)."""
    fs, p = storage.filesystem(str(exp))
    data = storage.read_bytes(fs, f"{p}/{FILE}", p)
    if data is None:
        return None, None
    d = storage.parse_json(data)
    ok = (isinstance(d, dict) and isinstance(d.get("tracking_uri"), str) and 0 < len(d["tracking_uri"]) <= 2000
          and d["tracking_uri"].isprintable() and all(isinstance(d.get(k), str) and _ID.fullmatch(d[k])
                                                      for k in ("experiment_id", "parent_run_id"))
          and isinstance(d.get("trials"), dict) and len(d["trials"]) <= 1_000_000
          and all(isinstance(k, str) and _ID.fullmatch(k) and isinstance(v, str) and _ID.fullmatch(v)
                  for k, v in d["trials"].items()) and isinstance(d.get("signature"), str))
    if not ok:
        return None, f"{exp}/{FILE} is damaged or edited (not the record `mmsa search --mlflow` writes)"
    if not hmac.compare_digest(d["signature"], state_trust.sign(FILE, _signed_body(d))):
        return None, (f"{exp}/{FILE} is not signed by your key (copied from elsewhere, or edited): its tracking URI "
                      "is not used")
    return d, None


def write(exp: str, d: dict) -> None:
    fs, p = storage.filesystem(str(exp))
    body = {**{k: d[k] for k in ("tracking_uri", "experiment_id", "parent_run_id")}, "trials": dict(d["trials"])}
    body["signature"] = state_trust.sign(FILE, _signed_body(body))
    write_file(f"{p}/{FILE}", json.dumps(body, indent=1).encode(), fs, root=p)


def flat_params(d: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: {"train": {"lr": 1e-5}} -> {"train.lr": "1e-05"}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:6000]  # MLflow's longest param value
    return out


class Store:
    """An MlflowClient whose first failure is one warning and turns logging off for this process."""

    def __init__(self, uri: str, say=warn):
        self.uri, self.off, self._client = uri, False, None
        self._warn = say

    def call(self, what: str, fn, *args, default=None, **kwargs):
        if self.off:
            return default
        try:
            if self._client is None:
                for k, v in HTTP_DEFAULTS.items():
                    os.environ.setdefault(k, v)
                if self.uri.startswith("file:"):
                    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # the user named a file store
                from mlflow import MlflowClient

                self._client = MlflowClient(tracking_uri=self.uri)
            return fn(self._client, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking is never a reason to stop a search
            self.off = True
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            self._warn(f"warning: MLflow ({self.uri}): could not {what} ({first}); nothing more is logged to MLflow "
                       "by this command (the search goes on)")
            return default

    # ---- what a search logs ------------------------------------------------------------------------------------
    def experiment_id(self, name: str) -> str | None:
        def get(c):
            e = c.get_experiment_by_name(name)
            if e is not None:
                return e.experiment_id
            art = None
            if self.uri.startswith("sqlite:"):  # artifacts beside the database, not in the working directory
                art = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
            return c.create_experiment(name, artifact_location=art)

        return self.call("open the MLflow experiment", get)

    def start_run(self, experiment_id: str, name: str, tags: dict, params: dict | None = None) -> str | None:
        def start(c):
            run = c.create_run(experiment_id, run_name=name, tags=tags)
            self._params(c, run.info.run_id, params or {})
            return run.info.run_id

        return self.call("create a run", start)

    def reopen(self, run_id: str, experiment_id: str, parent: str | None = None) -> bool:
        """Whether run_id is a run of that experiment (and a child of `parent`); it is marked running again."""
        def check(c):
            from mlflow.exceptions import MlflowException

            try:
                run = c.get_run(run_id)
            except MlflowException:  # deleted since: a new run is made
                return False
            if run.info.experiment_id != experiment_id or (parent and run.data.tags.get(PARENT_TAG) != parent):
                return False
            if run.info.status != "RUNNING":
                c.update_run(run_id, status="RUNNING")
            return True

        return self.call("reopen a run", check, default=False)

    def last_step(self, run_id: str, keys) -> int:
        """The last step any of KEYS has in the run (a non-finite value is not logged: no one key has every step)."""
        return self.call("read a run's metrics", lambda c: max((m.step for k in keys for m in c.get_metric_history(run_id, k)),
                                                                default=0), default=0)

    def _params(self, c, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], v) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            c.log_batch(run_id, params=items[i:i + MAX_PARAMS_PER_BATCH])

    def log(self, run_id: str, metrics: dict[str, float] | None = None, step: int = 0, timestamp_s: float | None = None,
            tags: dict | None = None, params: dict | None = None) -> None:
        def log_batch(c):
            from mlflow.entities import Metric, RunTag

            ms = int((timestamp_s or time.time()) * 1000)
            c.log_batch(run_id, metrics=[Metric(k, v, ms, step) for k, v in (metrics or {}).items()],
                        tags=[RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()])
            self._params(c, run_id, params or {})

        self.call("log to a run", log_batch)

    def end(self, run_id: str, status: str) -> None:
        self.call("end a run", lambda c: c.set_terminated(run_id, status))

    def artifact(self, run_id: str, path: str | Path) -> None:
        self.call("store an artifact", lambda c: c.log_artifact(run_id, str(path)))


def log_export(exp: str, info: dict, out: str | Path, say=warn) -> str | None:
    """`mmsa export` of a search logged to MLflow: the choice (trial, epochs, metrics, how it was chosen, `mmsa
    confirm`'s statistics when it chose) goes to the search's parent run, with the exported file as an artifact.
    Returns the parent run id when it was logged."""
    rec, why = read(exp)
    if rec is None:
        if why:
            say(f"warning: not logged to MLflow: {why}")
        return None
    try:
        require_mlflow("the search's MLflow logging")
    except UserError as e:
        say(f"warning: not logged to MLflow: {e}")
        return None
    store = Store(rec["tracking_uri"], say)
    run = rec["parent_run_id"]
    confirm = info.get("confirm") or {}
    metrics = {f"export.{k}": float(v) for k, v in (info.get("metrics") or {}).items() if isinstance(v, (int, float))}
    metrics.update({f"confirm.{k}": float(v) for k, v in confirm.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})
    store.log(run, metrics, step=0, tags={"mmsa.export.trial_id": info.get("trial_id"), "mmsa.export.best_epoch":
                                          info.get("best_epoch"), TAG_SELECTION: info.get("selection", "best trial"),
                                          "mmsa.export.metric": info.get("metric"),
                                          **({"mmsa.confirm.seeds": confirm.get("seeds")} if confirm else {})})
    store.artifact(run, out)
    return None if store.off else run
