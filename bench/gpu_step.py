"""Benchmark: one training step of the real architectures (random-weight BERT-base + ResNet-50, no download)
at batch 16/32/64/128 with realistic text lengths: samples/s, model FLOP utilisation against the card's peak, and
the share of step time spent outside the model (batching, copies, host synchronisation).

Usage:
  python bench/gpu_step.py                 # on a GPU machine: BERT-base + ResNet-50, 224 px, bf16
  python bench/gpu_step.py --compile       # the same with torch.compile, reporting the warm-up
  python bench/gpu_step.py --precision 16-mixed   # float16 + loss scaling (what auto picks on T4/V100)
  python bench/gpu_step.py --tiny          # CPU smoke mode: tiny models (used by the tests)
Writes gpu_step.json into $OUT (or the current directory) as well.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import machine, spread
from data_pipeline.batches import collate
from data_pipeline.preprocess import Prepared
from model.config import Config
from model.train import Split, Trainer
from pure import pure_epoch

# Token lengths of the lab5 sample with the bert-base-uncased vocabulary: percentiles 1..99 (mean 31.8).
REAL_LENGTHS = [9, 12, 14, 14, 16, 17, 18, 18, 19, 20, 21, 21, 22, 23, 23, 24, 24, 25, 25, 26, 27, 27, 28, 28, 29, 30,
                31, 31, 32, 32, 33, 33, 34, 35, 36, 37, 38, 39, 41, 42, 43, 44, 46, 47, 49, 50, 52, 55, 62, 73]
# Dense bf16 tensor-core peaks (FLOP/s) by device-name substring (V100, T4: float16, they have no bf16 units).
PEAKS = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12,
         "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12, "V100": 125e12, "T4": 65e12}


def synthetic(n: int, vocab: int, image_size: int, seed: int = 0) -> Prepared:
    rng = np.random.default_rng(seed)
    lengths = rng.choice(REAL_LENGTHS, size=n).astype(np.int32)
    ids = np.zeros((n, 128), np.int32)
    for i, L in enumerate(lengths):
        ids[i, :L] = rng.integers(min(1000, vocab // 2), vocab, L)
        ids[i, 0], ids[i, L - 1] = 101 % vocab, 102 % vocab
    images = rng.integers(0, 256, (n, 3, image_size, image_size), dtype=np.uint8)
    return Prepared(np.array([str(i) for i in range(n)]), ids, lengths, images, rng.integers(0, 3, n).astype(np.int64))


def make_backbones(tmp: Path, tiny: bool) -> dict:
    from transformers import BertConfig, BertModel

    if tiny:
        from model.pretrained import TINY_BERT, make_tiny_pretrained

        make_tiny_pretrained(tmp)
        return {"text_model": str(tmp / TINY_BERT), "image_arch": "resnet10", "image_weights": str(tmp / "resnet10.safetensors")}
    # bert-base-uncased's architecture with random weights, through the same from_pretrained path as real ones.
    BertModel(BertConfig(), add_pooling_layer=False).save_pretrained(tmp / "bert-base", safe_serialization=True)
    (tmp / "bert-base" / "vocab.txt").write_text("\n".join(f"[unused{i}]" for i in range(30522)) + "\n")
    return {"text_model": str(tmp / "bert-base"), "image_arch": "resnet50", "image_weights": "none"}


def step_flops(trainer: Trainer, batch: dict) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    b = trainer.to_device(batch)
    with FlopCounterMode(display=False) as fc:
        loss = F.cross_entropy(trainer.forward(b, train=True, gen=torch.Generator().manual_seed(0)), b["labels"])
        loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def bench_batch(backbones: dict, bs: int, steps: int, image_size: int, compile_: bool, precision: str = "auto",
                repeats: int = 3) -> dict:
    n = bs * steps
    data = synthetic(n, 30522 if "bert-base" in backbones["text_model"] else 100, image_size)
    cfg = Config.from_dict({"data": {"image_size": image_size}, "model": {**backbones, "complexity": "high"},
                               "train": {"batch_size": bs, "lr": 1e-5, "compile": compile_, "precision": precision,
                                         "hflip": 0.5, "rotation": 10}})
    trainer = Trainer(cfg, Split(data, data.subset(np.arange(min(n, bs)))))
    first = collate(data, np.arange(bs))
    flops_per_sample = step_flops(trainer, first) / bs
    t0 = time.perf_counter()
    trainer.run_epoch(data, train=True, seed=0)  # warm-up (and compilation)
    warmup = time.perf_counter() - t0
    # Interleaved, so a change in machine load hits both alike; pure: the loop's own train_step on the same
    # batches already on the device, i.e. what the loop would reach with free batching, copies and metrics.
    full, pure = [], []
    for e in range(1, repeats + 1):
        full.append(n / trainer.run_epoch(data, train=True, seed=e)["seconds"])
        pure.append(n / pure_epoch(trainer, data, seed=e))
    f, p = statistics.median(full), statistics.median(pure)
    return {"batch": bs, "samples_per_s": f, "pure_samples_per_s": p, "outside_model_share": max(0.0, 1 - f / p),
            "samples_per_s_repeats": full, "pure_samples_per_s_repeats": pure,
            "gflop_per_sample": flops_per_sample / 1e9, "achieved_tflops": f * flops_per_sample / 1e12,
            "warmup_s": warmup, "steady_epoch_s": n / f, "precision": trainer.precision}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="tiny models on the CPU: checks the script, not the card")
    ap.add_argument("--batches", default="16,32,64,128")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per measured epoch")
    ap.add_argument("--repeats", type=int, default=3, help="measured epochs per batch size (median and range printed)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--precision", default="auto", choices=("auto", "bf16-mixed", "16-mixed", "32"),
                    help="train.precision (auto: bf16 on A100/H100-class cards, float16 + loss scaling on older ones)")
    args = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if dev == "cuda" else "CPU"
    peak = next((v for k, v in PEAKS.items() if k in name), None)
    image_size = 32 if args.tiny else 224
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        backbones = make_backbones(Path(tmp), args.tiny)
        for bs in (int(b) for b in args.batches.split(",")):
            rows.append(bench_batch(backbones, bs, args.steps, image_size, args.compile, args.precision, args.repeats))
            if dev == "cuda":
                torch.cuda.empty_cache()
    print(machine())
    print(f"device: {name}; {'tiny BERT + resnet10, 32 px' if args.tiny else 'BERT-base + ResNet-50 (random weights), 224 px'}, "
          f"precision {rows[0]['precision']}, compile={args.compile}, {args.steps} steps per epoch, "
          f"median of {args.repeats} epochs (loop and pure steps interleaved)")
    print(f"{'batch':>5} {'samples/s':>10} {'pure model':>11} {'outside model':>14} {'GFLOP/sample':>13} {'TFLOP/s':>8} "
          f"{'MFU':>6} {'warm-up s':>10} {'epoch s':>8}")
    for r in rows:
        r["mfu"] = r["achieved_tflops"] * 1e12 / peak if peak else None
        mfu = f"{r['mfu'] * 100:5.1f}%" if peak else "   n/a"
        print(f"{r['batch']:>5} {r['samples_per_s']:>10.1f} {r['pure_samples_per_s']:>11.1f} {r['outside_model_share'] * 100:>13.1f}% "
              f"{r['gflop_per_sample']:>13.2f} {r['achieved_tflops']:>8.2f} {mfu:>6} {r['warmup_s']:>10.1f} {r['steady_epoch_s']:>8.2f}")
    for r in rows:
        print(f"batch {r['batch']}: loop {spread(r['samples_per_s_repeats'], '.1f')}, "
              f"pure {spread(r['pure_samples_per_s_repeats'], '.1f')} samples/s")
    print("targets (H100-class): MFU >= 35% at batch 128; >= 90% of step time inside the model (outside <= 10%)")
    out = Path(os.environ.get("OUT", "."))
    (out / "gpu_step.json").write_text(json.dumps({"machine": machine(), "device": name, "peak_flops": peak, "compile": args.compile,
                                                   "tiny": args.tiny, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
