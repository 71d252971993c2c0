"""Batches from preprocessed arrays: padded to their own longest text, optionally length-bucketed."""
from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator

import numpy as np
import torch

from .preprocess import Prepared

BUCKET_SPAN = 50  # batches per sorting window: sorting by length only inside windows keeps epochs shuffled


def batch_indices(lengths: np.ndarray, batch_size: int, *, shuffle: bool, bucket: bool, seed: int = 0) -> list[np.ndarray]:
    """Index arrays of each batch. With bucket, samples of similar length share a batch: shuffle, sort inside
    windows of BUCKET_SPAN batches, cut into batches, shuffle the batches."""
    n = len(lengths)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n) if shuffle else np.arange(n)
    if bucket:
        span = batch_size * BUCKET_SPAN
        order = np.concatenate([w[np.argsort(lengths[w], kind="stable")] for w in np.split(order, range(span, n, span))]) if n else order
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if bucket and shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def collate(data: Prepared, idx: np.ndarray) -> dict[str, torch.Tensor]:
    """CPU tensors for the samples idx; texts padded to the longest among them."""
    idx = np.sort(idx)  # sequential reads from a memory-mapped cache
    lengths = np.asarray(data.lengths[idx])
    width = max(int(lengths.max()) if len(idx) else 1, 1)
    ids = torch.from_numpy(np.ascontiguousarray(data.input_ids[idx, :width], dtype=np.int64))
    mask = (torch.arange(width)[None, :] < torch.from_numpy(lengths.astype(np.int64))[:, None]).long()
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "images": torch.from_numpy(np.ascontiguousarray(data.images[idx])),
        "labels": torch.from_numpy(np.asarray(data.labels[idx], dtype=np.int64)),
        "index": torch.from_numpy(idx.astype(np.int64)),
    }


def padded_tokens(lengths: np.ndarray, batches: Iterable[np.ndarray]) -> int:
    """Tokens a model sees (incl. padding) for these batches."""
    return int(sum(len(b) * int(lengths[b].max()) for b in batches if len(b)))


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Produce the next items on a background thread while the caller computes (numpy/torch release the GIL)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work():
        try:
            for it in items:
                if stop.is_set():
                    return
                q.put(it)
        except BaseException as e:  # re-raised in the consumer
            q.put(e)
        finally:
            q.put(done)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while (it := q.get()) is not done:
            if isinstance(it, BaseException):
                raise it
            yield it
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.01)
