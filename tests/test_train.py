import csv
import json

import numpy as np
import pytest
import torch

from data_pipeline.labels import LABELS
from model import metrics as M
from model.run_files import STATE
from model.run import ablate_run, load_train_val
from model.train import Split, Trainer
from search.cli import main


@pytest.fixture(scope="module")
def split(demo_cfg):
    return load_train_val(demo_cfg, progress=False)


def _cfg(demo_cfg, **flat):
    return demo_cfg.with_overrides(flat)


def test_training_reduces_val_loss(demo_cfg, split):
    cfg = _cfg(demo_cfg, epochs=4, patience=0)
    t = Trainer(cfg, split)
    before = t.run_epoch(split.val, train=False)["loss"]
    hist = list(t.fit())
    assert [h[M.EPOCH] for h in hist] == [1, 2, 3, 4]
    assert set(M.EPOCH_METRICS) == set(hist[0])
    assert min(h[M.VAL_LOSS] for h in hist) < 0.7 * before
    assert hist[-1][M.TRAIN_LOSS] < hist[0][M.TRAIN_LOSS]
    assert all(h[M.SPS] > 0 and 0 <= h[M.VAL_ACC] <= 1 for h in hist)


def test_fusion_beats_text_only_and_image_only(demo_cfg, tmp_path):
    results = {r["modality"]: r for r in ablate_run(demo_cfg, tmp_path, log=lambda *_: None, progress=False)}
    assert results["fusion"][M.VAL_ACC] > results["text"][M.VAL_ACC] + 0.05
    assert results["fusion"][M.VAL_ACC] > results["image"][M.VAL_ACC] + 0.05
    table = (tmp_path / "ablation.md").read_text()
    assert "| fusion |" in table and "| text |" in table and "| image |" in table
    assert (tmp_path / "ablation.png").stat().st_size > 10_000


def test_ablation_branches_are_absent(demo_cfg, split):
    t = Trainer(_cfg(demo_cfg, modality="text"), split)
    assert not hasattr(t.model, "image") and hasattr(t.model, "text")
    t = Trainer(_cfg(demo_cfg, modality="image"), split)
    assert not hasattr(t.model, "text") and t.model.head[0].in_features == 128


def test_widths_follow_complexity_and_backbones(demo_cfg, split):
    high = Trainer(_cfg(demo_cfg, complexity="high"), split).model
    assert high.text_proj.in_features == 32 and high.image_proj.in_features == 512  # from the tiny backbones
    assert (high.text_proj.out_features, high.image_proj.out_features, high.head[0].out_features) == (256, 256, 128)
    low = Trainer(_cfg(demo_cfg, complexity="low"), split).model
    assert (low.text_proj.out_features, low.image_proj.out_features, low.head[0].out_features) == (128, 128, 64)
    assert low.head[-1].out_features == 3


def test_resume_gives_the_same_metrics(demo_cfg, split, tmp_path):
    cfg = _cfg(demo_cfg, epochs=4, patience=0)
    straight = list(Trainer(cfg, split).fit())
    first = Trainer(cfg, split)
    for h in first.fit():
        if h[M.EPOCH] == 2:
            first.save_checkpoint(tmp_path / "ck")
            break
    resumed = Trainer(cfg, split)
    resumed.load_checkpoint(tmp_path / "ck")
    assert resumed.epoch == 2
    rest = list(resumed.fit())
    assert [h[M.EPOCH] for h in rest] == [3, 4]
    for a, b in zip(straight[2:], rest):
        for k in (M.TRAIN_LOSS, M.VAL_LOSS, M.VAL_ACC, M.VAL_F1, M.LR):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
    # the state file holds only tensors and plain values: it loads with weights_only=True
    state = torch.load(tmp_path / "ck" / STATE, weights_only=True)
    assert state["epoch"] == 2 and "optimizer" in state and "scheduler" in state and "torch_rng" in state


def test_gradient_accumulation_matches_one_big_batch(tmp_path, demo_dir):
    from model.pretrained import make_tiny_pretrained
    from search.commands.demo import demo_config

    # No dropout anywhere, so a micro-batched step and a whole-batch step do the same arithmetic.
    # (BatchNorm layers in the ResNet see smaller batches, so the image branch is not exactly equivalent.)
    make_tiny_pretrained(tmp_path, dropout=0.0)
    cfg = demo_config(demo_dir, tmp_path).with_overrides({"modality": "text", "dropout": 0.0, "batch_size": 64})
    data = load_train_val(cfg, progress=False)
    one = Split(data.train.subset(np.arange(64)), data.val)
    params = []
    for micro in (0, 16):
        t = Trainer(cfg.with_overrides({"micro_batch_size": micro}), one)
        t.run_epoch(one.train, train=True)
        params.append(torch.cat([p.detach().flatten() for p in t.model.parameters()]))
    assert torch.allclose(params[0], params[1], atol=1e-6)


def test_early_stop_after_patience_rises(demo_cfg, split):
    t = Trainer(_cfg(demo_cfg, patience=2), split)
    t.history = [{M.VAL_LOSS: v} for v in (0.9, 0.5, 0.6)]
    assert not t.should_stop()
    t.history.append({M.VAL_LOSS: 0.7})
    assert t.should_stop()
    t.history.append({M.VAL_LOSS: 0.4})
    assert not t.should_stop()


def test_train_and_predict_cli(demo_cfg, demo_dir, tmp_path, capsys):
    from model.config import save_config

    save_config(demo_cfg, tmp_path / "cfg.yaml")
    run = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(run), "--epochs", "2", "--quiet"]) == 0
    for f in ("model.safetensors", "config.yaml", "metrics.json", "metrics.csv", "curves.png", "checkpoint/trainer_state.pt"):
        assert (run / f).is_file(), f
    hist = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]
    assert list(csv.DictReader(open(run / "metrics.csv")))[1]["val_loss"] == str(hist[1]["val_loss"])
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(run), "--epochs", "3", "--resume", "--quiet"]) == 0
    assert [h["epoch"] for h in json.loads((run / "metrics.json").read_text())] == [1, 2, 3]
    assert main(["predict", "--model", str(run), "--data", str(demo_dir), "--probs", "--quiet"]) == 0
    lines = (run / "predictions.txt").read_text().splitlines()
    test_guids = [l.split(",")[0] for l in (demo_dir / "test_without_label.txt").read_text().splitlines()[1:]]
    assert lines[0] == "guid,tag" and [l.split(",")[0] for l in lines[1:]] == test_guids
    assert all(l.split(",")[1] in LABELS for l in lines[1:])
    probs = np.loadtxt(run / "probabilities.csv", delimiter=",", skiprows=1, usecols=(1, 2, 3))
    assert np.allclose(probs.sum(1), 1, atol=1e-4)


def test_train_cli_refuses_bad_config(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("train:\n  batch_sise: 32\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: train: unknown key(s) ['batch_sise']" in err
    assert main(["train", "--out", str(tmp_path / "r"), "--data", str(tmp_path)]) == 2
    assert "no data/ folder" in capsys.readouterr().err


def test_precision_auto_is_full_precision_on_the_cpu(demo_cfg, split):
    t = Trainer(demo_cfg, split, device="cpu")
    assert t.precision == "32" and t.scaler is None


@pytest.fixture(scope="module")
def small(split):
    # float16/bfloat16 matrix products are slow on most CPUs: a few batches are enough to check the code path.
    return Split(split.train.subset(np.arange(64)), split.val.subset(np.arange(32)))


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_computes_what_full_precision_does_and_trains(demo_cfg, small, precision):
    # The GPU's autocast path (and float16's loss scaling) run on the CPU too.
    full = Trainer(_cfg(demo_cfg, epochs=3, patience=0), small).run_epoch(small.val, train=False)
    mixed = Trainer(_cfg(demo_cfg, epochs=3, patience=0, precision=precision), small)
    assert mixed.run_epoch(small.val, train=False)["loss"] == pytest.approx(full["loss"], rel=0.02)
    hist = list(mixed.fit())
    assert all(np.isfinite(h[M.TRAIN_LOSS]) for h in hist) and hist[-1][M.TRAIN_LOSS] < hist[0][M.TRAIN_LOSS]


def test_float16_loss_scale_survives_resume(demo_cfg, small, tmp_path):
    cfg = _cfg(demo_cfg, epochs=2, patience=0, precision="16-mixed")
    first = Trainer(cfg, small)
    epochs = first.fit()
    next(epochs)
    first.scaler.update(2.0**12)  # a loss scale that a fresh trainer would not start with
    first.save_checkpoint(tmp_path / "ck")
    resumed = Trainer(cfg, small)
    resumed.load_checkpoint(tmp_path / "ck")
    assert resumed.scaler.get_scale() == 4096.0
    for a, b in zip(list(epochs), list(resumed.fit()), strict=True):
        assert a[M.VAL_LOSS] == pytest.approx(b[M.VAL_LOSS], rel=1e-5, abs=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_epoch(demo_cfg, split):
    t = Trainer(_cfg(demo_cfg, epochs=1, device="cuda"), split)
    h = next(t.fit())
    assert np.isfinite(h[M.VAL_LOSS]) and next(t.model.parameters()).is_cuda


def test_validation_predictions_come_from_the_pass_that_scores(demo_cfg, split):
    """The row-order predictions of the validation pass give exactly its reported accuracy (no second pass)."""
    t = Trainer(_cfg(demo_cfg, epochs=1, patience=0), split)
    row = next(t.fit())
    assert t.val_pred is not None and t.val_pred.shape == (len(split.val),)
    assert t.val_pred.min() >= 0
    assert abs(float((t.val_pred == split.val.labels).mean()) - row["val_acc"]) < 1e-9


@pytest.mark.parametrize("shape", ["lone last batch", "lone last micro-batch"])
def test_a_single_leftover_training_sample_does_not_crash_batchnorm(demo_cfg, split, shape):
    """n_train = k*batch_size + 1 (or a step of k*micro + 1) left one sample for BatchNorm in train mode: every trial
    of a 120-row search died with "Expected more than 1 value per channel when training"."""
    n = len(split.train.lengths)
    flat = {"batch_size": n - 1} if shape == "lone last batch" else {"batch_size": 33, "micro_batch_size": 16}
    t = Trainer(_cfg(demo_cfg, epochs=1, **flat), split)
    plan, _ = t.epoch_plan(split.train, True)
    assert min(len(idx) for idx, _, _ in plan) > 1
    assert t.run_epoch(split.train, train=True)["loss"] > 0
    val_plan, _ = t.epoch_plan(split.val, False)  # validation still scores every row
    assert sum(len(idx) for idx, _, _ in val_plan) == len(split.val.lengths)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("losses,improved", [
    ([0.5, 0.4, 0.4, 0.6], [1, 2]),  # a tie: the first epoch of the lowest loss stays the best
    ([NAN, 0.7, 0.7], [2]),  # a NaN first epoch is never best and does not stick as the running best
    ([INF, 0.9, NAN, 0.8], [2, 4]),
    ([NAN, INF], []),  # nothing finite: no epoch is best
])
def test_trainer_checkpointer_statistics_and_results_agree_on_the_best_epoch(demo_cfg, split, tmp_path, losses,
                                                                              improved):
    """One rule (model/metrics.best_index) for "best epoch so far": the trainer's best weights and best_epoch, the
    search trial's best-weights folder, the epochs that keep validation predictions and the best row that status and
    export read. The epochs' passes are replaced by crafted numbers (a tie and a NaN validation loss with a finite
    training loss cannot be produced on demand); the bookkeeping under test is the real code."""
    from search.trial.async_checkpoint import AsyncCheckpointer, BEST_PREFIX
    from search.selection.results import TrialSummary
    from search.selection.stats import val_predictions

    t = Trainer(_cfg(demo_cfg, epochs=len(losses), patience=0), split)
    ck = AsyncCheckpointer(t, tmp_path, every=1000)
    t.keep_best_state = True  # the checkpointer turns the host copy off; here both are compared
    passes = iter(losses)

    def crafted_epoch(data, train, seed=0):
        if train:
            return {"loss": 1.0, "samples": 1, "seconds": 1.0}
        loss = next(passes)
        return {"loss": loss, "scores": {M.VAL_ACC: 1 - loss, M.VAL_F1: 1 - loss},
                "pred": np.zeros(len(data), dtype=np.int8)}

    t.run_epoch = crafted_epoch
    saved, folders, predicted, held = [], [], [], None
    for row in t.fit():
        if t.best_state is not held:  # the trainer took a new host copy of the best weights this epoch
            saved.append(row[M.EPOCH])
            held = t.best_state
        ck.after_epoch(row)
        ck.finish_best()
        folders.append(sorted(p.name for p in tmp_path.glob(f"{BEST_PREFIX}*")))
        if val_predictions(t.history, t.val_pred, "0"):
            predicted.append(row[M.EPOCH])
    ck.close()
    assert saved == predicted == improved
    assert folders[-1] == ([f"{BEST_PREFIX}{improved[-1]:06d}"] if improved else [])
    assert [h[M.BEST_EPOCH] for h in t.history][-1] == (improved[-1] if improved else 1)
    best = TrialSummary("t", tmp_path, {}, "TERMINATED", t.history).best
    assert (best[M.EPOCH] if best else None) == (improved[-1] if improved else None)
    if improved:  # the running best ASHA and Optuna compare is the best epoch's value
        assert t.history[-1][M.BEST_VAL_LOSS] == losses[improved[-1] - 1]


@pytest.mark.parametrize("metric,improved", [("val_loss", [1, 2]), ("val_acc", [1, 3]), ("val_macro_f1", [1, 3, 4])])
def test_select_metric_decides_the_kept_weights_everywhere(demo_cfg, split, tmp_path, metric, improved):
    """train.select_metric (a search sets it to search.metric) is the best epoch for the trainer's kept weights and
    best_epoch, the search trial's best-weights folder and its metrics file (which the pruner and export rank by), and
    the best row status and export read: an export's epoch count and the weights `mmsa train` keeps are one epoch."""
    from search.trial.async_checkpoint import AsyncCheckpointer, BEST_PREFIX
    from search.trial.checkpoint_retention import METRICS_FILE, read_checkpoint_metrics
    from search.selection.results import TrialSummary

    loss, acc, f1 = [0.5, 0.4, 0.6, 0.7], [0.6, 0.5, 0.8, 0.7], [0.3, 0.2, 0.35, 0.4]
    t = Trainer(_cfg(demo_cfg, epochs=4, patience=0, select_metric=metric), split)
    ck = AsyncCheckpointer(t, tmp_path, every=1000)
    t.keep_best_state = True
    passes = iter(range(4))

    def crafted_epoch(data, train, seed=0):
        if train:
            return {"loss": 1.0, "samples": 1, "seconds": 1.0}
        i = next(passes)
        return {"loss": loss[i], "scores": {M.VAL_ACC: acc[i], M.VAL_F1: f1[i]}, "pred": np.zeros(len(data), dtype=np.int8)}

    t.run_epoch = crafted_epoch
    saved, held = [], None
    for row in t.fit():
        if t.best_state is not held:
            saved.append(row[M.EPOCH])
            held = t.best_state
        ck.after_epoch(row)
        ck.finish_best()
    ck.close()
    assert saved == improved and t.history[-1][M.BEST_EPOCH] == improved[-1]
    (best_dir,) = tmp_path.glob(f"{BEST_PREFIX}*")
    assert best_dir.name == f"{BEST_PREFIX}{improved[-1]:06d}"
    obj = M.objective(metric)
    value = {M.VAL_LOSS: loss, M.VAL_ACC: acc, M.VAL_F1: f1}[metric][improved[-1] - 1]
    assert read_checkpoint_metrics((best_dir / METRICS_FILE).read_bytes()) == (improved[-1], obj.key(value))
    assert TrialSummary("t", tmp_path, {}, "TERMINATED", t.history, objective=obj).best[M.EPOCH] == improved[-1]


def test_checkpoint_metrics_files_from_before_select_metric_rank_by_val_loss():
    from search.trial.checkpoint_retention import read_checkpoint_metrics

    assert read_checkpoint_metrics(b'{"epoch": 3, "val_loss": 0.25}') == (3, 0.25)
    assert read_checkpoint_metrics(b'{"epoch": 3, "metric": "val_acc", "val_acc": 0.75}') == (3, -0.75)
    for bad in (b'{"epoch": 3, "metric": "loss", "loss": 1}', b'{"epoch": 3, "metric": ["val_acc"]}', b'[1]',
                b'{"epoch": 3, "metric": "val_acc", "val_loss": 0.2}', b'\xff'):
        assert read_checkpoint_metrics(bad) is None


def test_ablation_names_the_epoch_whose_weights_each_run_kept(demo_cfg, tmp_path):
    """ablation.md's best epoch is the one train_run kept (train.select_metric), not the lowest val loss."""
    cfg = demo_cfg.with_overrides({"train.select_metric": M.VAL_ACC, "train.epochs": 3, "train.patience": 0})
    results = ablate_run(cfg, tmp_path, log=lambda *_: None, progress=False)
    for r in results:
        hist = json.loads((tmp_path / r["modality"] / "metrics.json").read_text())
        best = M.objective(M.VAL_ACC).best_row(hist)
        assert (r[M.BEST_EPOCH], r[M.VAL_ACC]) == (best[M.EPOCH], best[M.VAL_ACC])
