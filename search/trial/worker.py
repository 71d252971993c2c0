"""A search worker process, which may run many trials (search.reuse_workers): which trial of the process this is,
and when the trial's start-to-first-batch clock starts. What the process keeps between trials is the imports and
the backbones read from disk (model/backbones.py); each trial builds its own model, optimizer and generators."""
from __future__ import annotations

import os
import time

_TRIALS_HERE = [0]  # trials this process has started


def process_started() -> float:
    """perf_counter() value of this process's start (the start-to-first-batch clock includes imports)."""
    import psutil

    return time.perf_counter() - (time.time() - psutil.Process().create_time())


def trial_started(entered: float) -> float:
    """Count a new trial in this process; the start of its clock: the process's start for its first trial (imports,
    Ray's worker start-up), `entered` (the trainable was called) for a trial on a warm worker."""
    _TRIALS_HERE[0] += 1
    return process_started() if _TRIALS_HERE[0] == 1 else entered


def where_it_runs(device) -> dict:
    """The report keys saying where a trial runs: device, Ray's GPU ids and node, this process and its trial count."""
    import ray

    from search.settings.schema import DEVICE, GPU_IDS, NODE_ID, WORKER_PID, WORKER_TRIAL

    return {DEVICE: device.type, GPU_IDS: ",".join(str(g) for g in ray.get_gpu_ids()),
            NODE_ID: ray.get_runtime_context().get_node_id(), WORKER_PID: os.getpid(), WORKER_TRIAL: _TRIALS_HERE[0]}
