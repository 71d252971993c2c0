"""What drives a search: Optuna's TPE sampler (through Ray's searcher interface), ASHA, and Ray's status table."""
from __future__ import annotations

from search.settings.schema import M
from search.settings.space import SearchSpec


def make_sampler(seed: int, num_samples: int, kind: str = "tpe"):
    """TPE tuned for small budgets and parallel trials: Optuna's default spends its first 10 trials at random,
    which is most of a 12-40 trial search; multivariate TPE models lr x batch size jointly; the constant liar keeps
    trials that run at the same time from being proposed the same region."""
    import optuna

    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, min(10, num_samples // 4)),
                                      multivariate=True, constant_liar=True)


def check_new_study(optuna_storage: str, name: str) -> None:
    """Refuse an unusable --optuna-storage URL, or one that already holds a study of this name (two searches would
    silently share one study, and TPE would mix their results)."""
    import optuna

    from data_pipeline.errors import UserError

    try:
        storage = optuna.storages.RDBStorage(optuna_storage)
        names = {s.study_name for s in storage.get_all_studies()}
    except Exception as e:  # noqa: BLE001 - SQLAlchemy raises many types for a bad URL, driver or database
        raise UserError(f"--optuna-storage {optuna_storage}: cannot open it as an Optuna database "
                        f"({type(e).__name__}: {' '.join(str(e).split())[:300]}). Use e.g. sqlite:///optuna.db.") from None
    if name in names:
        raise UserError(f"--optuna-storage {optuna_storage} already holds a study named {name!r} (from another search "
                        "of that name): pick another --name, or delete the study with "
                        f"`optuna delete-study --storage {optuna_storage} --study-name {name}`.")


def make_searcher(spec: SearchSpec, name: str, max_concurrent: int, optuna_storage: str | None, num_samples: int,
                  warm: list | None = None):
    """warm: search/warm_start.WarmTrial's given to the study before the first proposal; they count among TPE's
    n_startup_trials (TPE counts every COMPLETE and PRUNED trial of its study), so a warm-started search starts
    modelling at once. spec.enqueue: configurations tried first."""
    from ray.tune.search import ConcurrencyLimiter

    from search.tune.truthful_optuna import TruthfulOptunaSearch

    storage = None
    if optuna_storage:
        import optuna

        storage = optuna.storages.RDBStorage(optuna_storage)
    searcher = TruthfulOptunaSearch(sampler=make_sampler(spec.search.seed, num_samples, spec.search.sampler), study_name=name, storage=storage,
                                    warm=warm, enqueue=spec.enqueue)
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def make_scheduler(spec: SearchSpec):
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr=M.EPOCH, max_t=spec.fixed.train.epochs,
                         grace_period=min(spec.search.grace_period, spec.fixed.train.epochs),
                         reduction_factor=spec.search.reduction_factor)


def status_reporter(spec: SearchSpec):
    """Ray's status table with the searched hyperparameters and the metrics that matter, every 30 s at most."""
    from ray.tune import CLIReporter

    return CLIReporter(
        metric_columns={M.EPOCH: "epoch", M.VAL_LOSS: "val_loss", spec.search.objective.running: spec.search.objective.running,
                        M.VAL_ACC: "val_acc", M.VAL_F1: "val_macro_f1"},
        parameter_columns={k.replace(".", "/"): k.split(".")[1] for k in spec.space},
        max_report_frequency=30, sort_by_metric=True, max_progress_rows=30, max_error_rows=10)
