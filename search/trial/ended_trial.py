"""A trial that finished, restored by `mmsa resume` as if it had not.

When a trial ends, the driver writes its verdict into the trial folder (search/trial/async_checkpoint.py mark_ended) and
deletes the trial's training state at once (TrialRetention, search/tune/callbacks.py): at the lab's size that state is
1.5 GiB per trial. Ray saves the experiment state only every few seconds, so a driver killed in between (SIGKILL,
a lost node) leaves a saved state in which the trial is still running, its last checkpoint naming a state that is
gone. Ray restores it on resume; here, before anything is built, the trial sees the verdict and does not train
again. The rows the driver had logged after Ray's saved state (result.json, and the driver's whole copy of it) are
reported again, so ASHA and Optuna learn how the trial really ended (finished or stopped, with its last values);
then the trial returns and Ray marks it finished.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.fs as pafs

from search.experiment import ray_internals
from search.trial.checkpoint_retention import METRICS_FILE, read_checkpoint_metrics
from search.settings.schema import M
from search.experiment.storage import read_bytes
from search.experiment.trial_backup import RESULTS, by_epoch, parse_rows, read_backup

log = logging.getLogger(__name__)


def _restored_epoch(checkpoint) -> int:
    """The epoch whose result Ray's restored checkpoint was reported with (0: no checkpoint)."""
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as d:
        from data_pipeline.safe_files import read_bytes as read_local

        m = read_checkpoint_metrics(read_local(Path(d) / METRICS_FILE))
    return m[0] if m else 0


def _logged_rows(fs, trial_path: str) -> list[dict]:
    """Every epoch's row the driver logged for the trial, the live file and the driver's whole copy merged."""
    exp, name = trial_path.rstrip("/").rsplit("/", 1)
    return by_epoch(read_backup(fs, exp, name)[1], parse_rows(read_bytes(fs, f"{trial_path}/{RESULTS}", exp)))


def finish_if_judged() -> bool:
    """Inside a trial, first thing: True when the driver had already judged this trial finished (then its rows
    after Ray's restored result are reported again and the trial must return without training)."""
    from ray import tune

    from search.trial.async_checkpoint import ENDED_FILE

    fs, trial_path = ray_internals.trial_storage()
    # The verdict's existence is what counts (its content, keep the best weights or not, is for retention): a file
    # damaged on disk must not send a finished trial back to a state that is gone.
    if isinstance(fs, pafs.LocalFileSystem):
        judged = (Path(trial_path) / ENDED_FILE).exists()
    else:
        from search.trial.object_store import ObjectStoreFolder

        # Neither answer is safe on a storage error: "not judged" trains from a state that may be deleted,
        # "judged" ends a trial early. Raised, Ray retries the trial (max_failures) and asks again.
        judged = ObjectStoreFolder(fs, trial_path).exists(ENDED_FILE, on_error=None)
    if not judged:
        return False
    after = _restored_epoch(tune.get_checkpoint())
    drop = ray_internals.ray_result_keys()
    missing = [r for r in _logged_rows(fs, trial_path) if r[M.EPOCH] > after]
    log.warning("%s had finished before the search was stopped; not trained again (%d logged epoch(s) reported "
                "again)", Path(trial_path).name, len(missing))
    for row in missing:
        tune.report({k: v for k, v in row.items() if k not in drop})
    return True
