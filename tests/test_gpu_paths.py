"""The CUDA code paths: checked on the CPU where the same code runs, on a GPU when there is one."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from data_pipeline.augment import augment, normalize
from model import metrics as M
from model.backbones import encoder_mask, load_text_backbone
from model.run import load_train_val
from model.train import Trainer, predict_proba

ROOT = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_gpu_step_bench_runs_in_tiny_mode(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_step.py"), "--tiny", "--batches", "8,16", "--steps", "2"],
                       capture_output=True, text=True, env={**__import__("os").environ, "OUT": str(tmp_path)}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "samples/s" in r.stdout and "outside model" in r.stdout
    d = json.loads((tmp_path / "gpu_step.json").read_text())
    assert [row["batch"] for row in d["rows"]] == [8, 16]
    for row in d["rows"]:
        assert row["samples_per_s"] > 0 and row["gflop_per_sample"] > 0 and 0 <= row["outside_model_share"] <= 1


def test_channels_last_does_not_change_the_math(demo_cfg):
    split = load_train_val(demo_cfg, progress=False)
    t = Trainer(demo_cfg, split, device="cpu")
    t.model.eval()
    from data_pipeline.batches import collate

    b = collate(split.val, np.arange(16))
    images = normalize(b["images"])
    with torch.no_grad():
        plain = t.model(b["input_ids"], b["attention_mask"], images)
        t.model.image.to(memory_format=torch.channels_last)
        cl = t.model(b["input_ids"], b["attention_mask"], images.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(plain, cl, atol=1e-4)


class HostReads(TorchFunctionMode):
    """Records where a tensor's value is brought to the host (on a GPU each such read waits for the GPU)."""

    NAMES = frozenset({"item", "__float__", "__int__", "__bool__", "__index__", "tolist", "numpy", "cpu"})

    def __init__(self):
        super().__init__()
        self.sites: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.NAMES:
            caller = sys._getframe(1)
            self.sites.append(f"{func.__name__} at {caller.f_code.co_filename}:{caller.f_lineno}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("precision", ["32", "bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("train", [True, False])
def test_a_pass_reads_nothing_back_from_the_device(demo_cfg, train, precision):
    # The same code the GPU runs (autocast, the loss scaler, transformers, the fused optimizer), watched on the CPU.
    split = load_train_val(demo_cfg, progress=False)
    data = split.train.subset(np.arange(64))  # float16 is slow on the CPU; four batches show a per-batch read
    t = Trainer(demo_cfg.with_overrides({"batch_size": 16, "precision": precision}), split, device="cpu")
    with HostReads() as reads:
        loss_sum, confusion, seen = t.run_batches(data, train=train)
    assert seen == len(data) and int(confusion.sum()) == seen and torch.isfinite(loss_sum)
    assert reads.sites == [], f"host reads inside the batch loop: {sorted(set(reads.sites))}"


def test_the_4d_attention_mask_gives_transformers_own_result(tiny_bert):
    bert = load_text_backbone(tiny_bert).eval()
    lengths = torch.tensor([9, 4, 6])
    ids = torch.randint(5, bert.config.vocab_size, (3, 9))
    mask = (torch.arange(9)[None, :] < lengths[:, None]).long()
    with torch.no_grad():
        own = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        ours = bert(input_ids=ids, attention_mask=encoder_mask(mask)).last_hidden_state
        unmasked = bert(input_ids=ids).last_hidden_state
    assert torch.allclose(own, ours, atol=1e-5)
    assert not torch.allclose(own[1:, 0], unmasked[1:, 0], atol=1e-3)  # the padding really is masked


def test_predictions_keep_the_row_order(demo_cfg):
    split = load_train_val(demo_cfg, progress=False)
    t = Trainer(demo_cfg, split, device="cpu")
    p = predict_proba(t.model, split.val, batch_size=7, device="cpu")
    one = predict_proba(t.model, split.val.subset(np.array([5])), batch_size=1, device="cpu")
    assert p.shape == (len(split.val), 3) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert np.allclose(p[5], one[0], atol=1e-5)


def test_confusion_without_host_sync_matches_bincount():
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 0])
    preds = torch.tensor([0, 2, 2, 1, 1, 0, 1])
    conf = torch.zeros(9, dtype=torch.long).index_add_(0, labels * 3 + preds, torch.ones(7, dtype=torch.long))
    assert torch.equal(conf, torch.bincount(labels * 3 + preds, minlength=9))
    # per class F1: 0 -> P 1, R 2/3 = 0.8; 1 -> P 1/3, R 1/2 = 0.4; 2 -> P 1/2, R 1/2 = 0.5
    assert M.macro_f1(conf.view(3, 3)) == pytest.approx((0.8 + 0.4 + 0.5) / 3)


@cuda
def test_cuda_augment_matches_cpu():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    cpu = augment(normalize(x), 0.5, 10.0, torch.Generator().manual_seed(1))
    gpu = augment(normalize(x.cuda()), 0.5, 10.0, torch.Generator().manual_seed(1))
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-3)


@cuda
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_cuda_pass_does_not_synchronise(demo_cfg, precision):
    split = load_train_val(demo_cfg, progress=False)
    t = Trainer(demo_cfg.with_overrides({"device": "cuda", "precision": precision}), split)
    t.run_batches(split.train, train=True)  # first use: library set-up may synchronise once
    torch.cuda.set_sync_debug_mode("error")
    try:
        for train in (True, False):
            t.run_batches(split.val, train=train)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@cuda
@pytest.mark.slow
def test_cuda_compile_trains(demo_cfg):
    split = load_train_val(demo_cfg, progress=False)
    t = Trainer(demo_cfg.with_overrides({"epochs": 2, "compile": True, "device": "cuda"}), split)
    hist = list(t.fit())
    assert len(hist) == 2 and np.isfinite(hist[-1][M.VAL_LOSS])
