"""What a trial reports to Ray each epoch: the schema that the trainable writes and that status, report, export,
ASHA and Optuna read. Defined once; importing it costs no torch and no Ray.

A row (one per epoch, in each trial's result.json) holds the epoch metrics of the one training loop (names in
model/metrics.py: epoch, train_loss, val_loss, val_acc, val_macro_f1, lr, samples_per_s, best_val_loss,
best_epoch), the report keys below, and what Ray adds itself (trial_id, timestamp, training_iteration,
checkpoint_dir_name, ...).
"""
from __future__ import annotations

from model import metrics as M

FINISHED = "finished"  # 1 when the trial ended by itself (all epochs, or val loss rose `patience` epochs in a row)
DEVICE = "device"  # where the trial trained: cuda or cpu (CPU fallback where a GPU was reserved but CUDA is absent)
GPU_IDS = "gpu_ids"  # the GPU ids Ray gave this trial, comma-separated (per node: pair with node_id)
NODE_ID = "node_id"  # the Ray node the trial ran on
WORKER_PID = "worker_pid"  # the process that ran the trial: a warm worker (search.reuse_workers) runs several
WORKER_TRIAL = "worker_trial"  # 1 for the first trial of that process, 2 for the next one it ran, ...
REPORTED_AT = "reported_at"  # wall-clock time of a report (finer than Ray's whole-second timestamp)
# Only in the rows of epochs that were the trial's best so far (so always in its best epoch's row): the validation
# rows' predicted classes and true labels, one digit per row in the validation set's row order (LABELS' indices).
# Small (one byte per row); they give each trial's accuracy interval and paired comparisons (search/selection/stats.py).
VAL_PRED = "val_pred"
VAL_LABEL = "val_label"

# Added by Ray to every row (tests/test_ray_internals.py checks these names against Ray's constants).
TRIAL_ID = "trial_id"
TIMESTAMP = "timestamp"
TRAINING_ITERATION = "training_iteration"
CHECKPOINT_DIR_NAME = "checkpoint_dir_name"

# A trial's state as Ray names it (Trial.status, and "status" in experiment_state files; tests/test_ray_internals.py
# checks them against Ray's). A trial not yet in any state file is PENDING.
PENDING = "PENDING"
RUNNING = "RUNNING"
PAUSED = "PAUSED"
TERMINATED = "TERMINATED"  # ended: all epochs, early stop, stopped by ASHA, or stopped by the clean-up after Ctrl-C
ERROR = "ERROR"  # failed more than search.max_failures times
ENDED = (TERMINATED, ERROR)  # states Ray leaves a trial in for good (until `mmsa resume` retries errored ones)

__all__ = ["M", "FINISHED", "DEVICE", "GPU_IDS", "NODE_ID", "WORKER_PID", "WORKER_TRIAL", "REPORTED_AT", "VAL_PRED", "VAL_LABEL", "TRIAL_ID", "TIMESTAMP",
           "TRAINING_ITERATION", "CHECKPOINT_DIR_NAME", "PENDING", "RUNNING", "PAUSED", "TERMINATED", "ERROR", "ENDED"]
EXPORT_SECTION = "search"  # a `mmsa export` file's provenance section beside data:/model:/train:
