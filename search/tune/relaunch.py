"""`mmsa search --if-exists resume`: one launch command for jobs that restart (a Kubernetes RayJob whose head pod is
restarted, a requeued Slurm job). The same command starts the search, or continues it when this very search (the
same space, data and settings: prerun.search_differences) is already at STORAGE/NAME, as `mmsa resume` would; a
search there that differs is refused, naming each difference. Like Ray Tune's `Tuner.can_restore` /
`Tuner.restore` pattern, but the decision checks that the stored search is the one asked for."""
from __future__ import annotations

from pathlib import Path

from data_pipeline.dataset import check_data_dir
from data_pipeline.errors import UserError
from data_pipeline.printable import term
from data_pipeline.preprocess import data_fingerprint

from search.experiment import layout as experiment
from search.experiment import storage
from search.experiment.lock import wait_out_dead_holder
from search.selection.opened import Experiment
from search.settings.schema import ENDED
from search.settings.space import SearchSpec, spec_to_dict
from search.tune.prerun import search_differences
from search.tune.tuner import check_search_args, check_spec, resume_search, run_search



def _launch_identity(spec: SearchSpec, num_samples: int, optuna_storage: str | None,
                     warm_start: list[str] | None) -> dict:
    """What run_search would record of this launch (prerun.IDENTITY's keys); spec's data_dir is made absolute, as
    run_search makes it."""
    data_dir = Path(spec.fixed.data.data_dir).resolve()
    check_data_dir(data_dir)
    spec.fixed = spec.fixed.with_overrides({"data.data_dir": str(data_dir)})
    return {"num_samples": num_samples, "data_dir": str(data_dir),
            "data_fingerprint": data_fingerprint(data_dir, "train"), "optuna_storage": optuna_storage,
            "warm_start": [storage.normalize(str(w)) for w in warm_start] if warm_start else None,
            "spec": spec_to_dict(spec)}


def refuse_other_search(exp: str, diffs: list[tuple[str, object, object]]) -> None:
    shown = "; ".join(f"{k}: {term(repr(a))[:80]} there, {term(repr(b))[:80]} now" for k, a, b in diffs[:8])
    more = f" (and {len(diffs) - 8} more)" if len(diffs) > 8 else ""
    raise UserError(f"--if-exists resume: {exp} holds another search than this command describes ({shown}{more}). "
                    f"Launch it with the settings it was started with ({experiment.META} in it records them) to "
                    f"continue it, or `mmsa resume {exp}`, or pick another --name for a new search.")


def finished(opened: Experiment) -> bool:
    trials = opened.fresh_trials()
    return len(trials) >= opened.meta["num_samples"] and all(t.state in ENDED for t in trials)


def search_or_resume(spec: SearchSpec, num_samples: int, name: str, storage_dir: str = "ray_results", *,
                     optuna_storage: str | None = None, warm_start: list[str] | None = None, log=print,
                     address: str | None = None, shared_storage: bool = False, verbose: int = 1,
                     warm_any_data: bool = False, break_lock: bool = False, mlflow: str | None = None) -> str:
    """Start the search, or continue the same one. Returns "started", "resumed" or "finished" (it had ended before:
    nothing is run). Every refusal comes before Ray starts."""
    check_search_args(num_samples, name, None)  # the Optuna study of a search being continued exists: not refused
    check_spec(spec)
    exp = experiment.location(storage_dir, name)
    if not experiment.meta_exists(exp) or not experiment.ever_ran(exp):
        # Nothing there, or a start that never ran a trial (stopped during start-up): run_search starts it afresh,
        # with this command's settings. A killed driver's lease may still hold it.
        if experiment.meta_exists(exp):
            wait_out_dead_holder(exp, log)
        run_search(spec, num_samples, name, storage_dir, address=address, shared_storage=shared_storage,
                   optuna_storage=optuna_storage, verbose=verbose, log=log, warm_start=warm_start,
                   warm_any_data=warm_any_data, break_lock=break_lock, mlflow=mlflow)
        return "started"
    opened = Experiment.open(exp, normalize=True)
    diffs = search_differences(opened.meta, _launch_identity(spec, num_samples, optuna_storage, warm_start))
    if diffs:
        refuse_other_search(opened.path, diffs)
    if finished(opened):
        log(f"search {name} in {opened.path} has already finished ({opened.meta['num_samples']} trials); nothing to "
            f"run. `mmsa status {opened.path}` for the table, `mmsa export {opened.path} -o best.yaml` for the best")
        return "finished"
    budget = launch_budget(opened, spec.search.time_budget, log)
    spent = budget_spent(opened, budget)
    if spent:  # for a job that restarts, a search its budget ended is done: no error, nothing run
        log(spent)
        return "finished"
    wait_out_dead_holder(opened.path, log)
    log(term(f"--if-exists resume: {opened.path} holds this search, unfinished; continuing it"))
    resume_search(opened, address=address, verbose=verbose, log=log, break_lock=break_lock,
                  shared_storage=shared_storage, time_budget=budget, mlflow=mlflow)
    return "resumed"


def launch_budget(opened: Experiment, launched: str | None, log=print) -> str | None:
    """The budget a relaunch continues with: the launch command's when it raises the search's (as `mmsa resume
    --time-budget` does), else None (the search's own). A restarted job runs its original command: a budget the user
    raised since (`mmsa resume EXP --time-budget 4h`, as the spent message says) must not go back to the job's."""
    from search.settings.duration import describe, parse_duration
    from search.settings.space import parse_spec

    if not launched:
        return None
    ours = parse_spec(opened.meta["spec"], f"{opened.path}/{experiment.META}").search.budget_s
    if ours is not None and ours > parse_duration(launched, "--time-budget"):
        log(term(f"--if-exists resume: {opened.path} keeps its time budget of {describe(ours)}, raised since it was "
                 f"launched (this command's --time-budget {launched} would lower it; `mmsa resume {opened.path} "
                 "--time-budget SHORTER` lowers it)"))
        return None
    return launched


def budget_spent(opened: Experiment, time_budget: str | None) -> str | None:
    """A line when the search's time budget (the launch's, when it gives one) is spent; None otherwise. The rule and
    its refusal of an unreadable time file are time_used.spent_line's, as for `mmsa resume`."""
    from search.experiment import time_used
    from search.settings.duration import parse_duration
    from search.settings.space import parse_spec

    budget = parse_duration(time_budget, "--time-budget") if time_budget else \
        parse_spec(opened.meta["spec"], f"{opened.path}/{experiment.META}").search.budget_s
    return time_used.spent_line(opened.path, budget)
