"""Warm workers (search.reuse_workers): a process that runs many trials keeps imports and the backbones it read from
disk, and every trial still gets a fresh model, optimizer and generators, so it trains exactly as in a new process;
a finished trial gives back its memory (the lab's "GPU memory not freed between runs")."""
import gc
import json
import subprocess
import sys
import weakref

import pytest
import torch

from model import backbones
from model import metrics as M
from model.run import load_train_val
from model.train import Trainer
from search.settings.schema import WORKER_PID, WORKER_TRIAL


@pytest.fixture(scope="module")
def split(demo_cfg):
    return load_train_val(demo_cfg, progress=False)


def _history(cfg, split) -> list[dict]:
    t = Trainer(cfg, split)
    try:
        return [{k: r[k] for k in (M.TRAIN_LOSS, M.VAL_LOSS, M.VAL_ACC)} for r in t.fit()]
    finally:
        t.close()


def test_backbones_are_read_once_per_process_and_each_model_gets_its_own_copy(tiny_dir, tmp_path):
    import shutil

    backbones.clear_backbone_cache()
    bert = shutil.copytree(tiny_dir / "bert-tiny", tmp_path / "bert")
    a, b = backbones.load_text_backbone(bert), backbones.load_text_backbone(bert)
    assert a is not b
    pa, pb = next(a.parameters()), next(b.parameters())
    assert torch.equal(pa, pb) and pa.data_ptr() != pb.data_ptr()
    with torch.no_grad():
        pa.add_(1.0)  # training one model never changes the next one
    assert torch.equal(next(backbones.load_text_backbone(bert).parameters()), pb)
    # a rewritten weights file is read again (the cache is keyed by size and modification time)
    from safetensors.torch import load_file, save_file

    sd = load_file(bert / "model.safetensors")
    name = next(k for k in sd if k.endswith("word_embeddings.weight"))
    sd[name] = torch.zeros_like(sd[name])
    save_file(sd, str(bert / "model.safetensors"))
    fresh = backbones.load_text_backbone(bert)
    assert float(fresh.embeddings.word_embeddings.weight.detach().abs().sum()) == 0.0
    r1, w1 = backbones.load_image_backbone("resnet10", str(tiny_dir / "resnet10.safetensors"))
    r2, w2 = backbones.load_image_backbone("resnet10", str(tiny_dir / "resnet10.safetensors"))
    assert w1 == w2 and r1 is not r2 and torch.equal(next(r1.parameters()), next(r2.parameters()))


def test_a_trainer_in_a_warm_process_trains_exactly_as_in_a_fresh_process(demo_cfg, split, tmp_path):
    cfg = demo_cfg.with_overrides({"epochs": 2, "patience": 0, "seed": 3})
    backbones.clear_backbone_cache()
    cold = _history(cfg, split)  # reads the files
    warm = _history(cfg, split)  # from this process's copies
    assert warm == cold
    # and the same numbers in a brand-new interpreter (nothing of this process's state leaks into a trial)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    code = ("import json, sys; from model.config import Config; from model.run import load_train_val; "
            "from model.train import Trainer; from model import metrics as M; "
            "cfg = Config.from_dict(json.load(open(sys.argv[1]))); d = load_train_val(cfg, progress=False); "
            "print(json.dumps([{k: r[k] for k in (M.TRAIN_LOSS, M.VAL_LOSS, M.VAL_ACC)} for r in Trainer(cfg, d).fit()]))")
    out = subprocess.run([sys.executable, "-c", code, str(cfg_file)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == cold


def test_close_gives_the_model_back_even_while_the_trainer_is_still_referenced(demo_cfg, split):
    t = Trainer(demo_cfg.with_overrides({"epochs": 1}), split)
    next(t.fit())
    model, opt_state = weakref.ref(t.model), weakref.ref(next(iter(t.optimizer.state.values()))["exp_avg"])
    t.close()  # `t` stays referenced here, as a traceback or Ray's session may keep a finished trial's frame
    gc.collect()
    assert model() is None and opt_state() is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_memory_returns_to_its_baseline_after_each_trial(demo_cfg, split):
    cfg = demo_cfg.with_overrides({"epochs": 1, "device": "cuda"})
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    for _ in range(3):  # trial after trial in one process, as on a warm worker
        t = Trainer(cfg, split)
        next(t.fit())
        assert torch.cuda.memory_allocated() > base
        t.close()
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() == base
        assert torch.cuda.memory_reserved() <= base + 2**20 * 64  # the caching allocator gave its blocks back


@pytest.mark.slow
def test_search_trials_reuse_one_worker_and_match_a_fresh_process(demo_cfg, ray_local, tmp_path):
    """Two trials of the same configuration one after the other: the second runs in the first one's process and
    reports exactly its metrics; an ASHA-stopped trial's process runs the next trial without an error."""
    from search.selection.results import load_trials
    from search.settings.space import parse_spec
    from search.tune.tuner import run_search

    fixed = demo_cfg.with_overrides({"epochs": 2, "patience": 0}).to_dict()
    spec = parse_spec({"space": {"train.lr": {"choice": [fixed["train"]["lr"]]}}, "fixed": fixed,
                       "search": {"max_concurrent": 1}}, "test")
    run_search(spec, 2, "same", str(tmp_path / "rr"), verbose=0, log=lambda *a: None, points=[fixed, fixed])
    trials = sorted(load_trials(tmp_path / "rr" / "same"), key=lambda t: t.results[0][WORKER_TRIAL])
    assert [t.state for t in trials] == ["TERMINATED"] * 2
    assert [t.results[0][WORKER_TRIAL] for t in trials] == [1, 2]
    assert trials[0].results[0][WORKER_PID] == trials[1].results[0][WORKER_PID]
    key = lambda t: [(r[M.TRAIN_LOSS], r[M.VAL_LOSS], r[M.VAL_ACC]) for r in t.results]  # noqa: E731
    assert key(trials[0]) == key(trials[1])

    # ASHA stops trials after 1 epoch; the stopped trial's thread ends and the next trial reuses its process
    spec = parse_spec({"space": {"train.lr": {"choice": [1e-4, 3e-3]}}, "fixed": fixed,
                       "search": {"max_concurrent": 1, "grace_period": 1, "seed": 2}}, "test")
    run_search(spec, 4, "asha", str(tmp_path / "rr"), verbose=0, log=lambda *a: None)
    trials = load_trials(tmp_path / "rr" / "asha")
    assert len(trials) == 4 and all(t.state == "TERMINATED" for t in trials), [t.state for t in trials]
    assert len({t.results[0][WORKER_PID] for t in trials}) == 1
    assert sorted(t.results[0][WORKER_TRIAL] for t in trials) == [1, 2, 3, 4]
    assert any(len(t.results) == 1 for t in trials)  # at least one was stopped by ASHA, and its process reused
