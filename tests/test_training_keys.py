"""The training keys beyond the lab's (warm-up, a backbone learning rate, frozen lower text layers, class weights):
each one really changes training, and its default leaves training as it was."""
import numpy as np
import pytest
import torch

from data_pipeline.errors import UserError
from data_pipeline.labels import LABELS
from model.backbones import check_backbones
from model.run import load_train_val
from model.train import Trainer, class_weight


@pytest.fixture(scope="module")
def split(demo_cfg):
    return load_train_val(demo_cfg, progress=False)


def _one_step(trainer, split):
    """One optimizer step on the first training batch; returns the loss."""
    plan, gen = trainer.epoch_plan(split.train, True)
    idx, size, _ = plan[0]
    trainer.model.train(True)
    loss, _ = trainer.train_step(trainer.to_device(trainer._collate(split.train, idx)), gen, size, True)
    return float(loss.detach())


def _params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _changed(before, module):
    return {k for k, v in module.named_parameters() if not torch.equal(before[k], v.detach())}


def test_defaults_keep_the_labs_training(demo_cfg, split):
    t = Trainer(demo_cfg.with_overrides({"epochs": 1}), split)
    assert len(t.optimizer.param_groups) == 1 and t.optimizer.param_groups[0]["lr"] == demo_cfg.train.lr
    assert t.class_weight is None and t.warmup == 0 and t.warmup_factor(0) == 1.0
    assert all(p.requires_grad for p in t.model.parameters())


def test_frozen_text_layers_do_not_change(demo_cfg, split):
    t = Trainer(demo_cfg.with_overrides({"freeze_text_layers": 1, "lr": 1e-2}), split)
    bert = t.model.text
    frozen = [bert.embeddings, bert.encoder.layer[0]]
    before = [_params(m) for m in frozen] + [_params(bert.encoder.layer[-1]), _params(t.model.head)]
    _one_step(t, split)
    assert not _changed(before[0], frozen[0]) and not _changed(before[1], frozen[1])
    assert _changed(before[2], bert.encoder.layer[-1]) and _changed(before[3], t.model.head)
    in_optimizer = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for m in frozen for p in m.parameters())


def test_too_many_frozen_layers_is_a_clear_error(demo_cfg):
    layers = len(__import__("model.backbones", fromlist=["x"]).load_text_backbone(demo_cfg.model.text_model).encoder.layer)
    with pytest.raises(UserError, match=f"freeze_text_layers {layers + 1}: .* has only {layers} encoder layers"):
        check_backbones(demo_cfg.with_overrides({"freeze_text_layers": layers + 1}).model)


def test_backbone_learning_rate(demo_cfg, split):
    t = Trainer(demo_cfg.with_overrides({"backbone_lr_mult": 0.1, "lr": 1e-3}), split)
    assert [g["lr"] for g in t.optimizer.param_groups] == pytest.approx([1e-3, 1e-4])
    backbone = {id(p) for m in (t.model.text, t.model.image) for p in m.parameters()}
    assert all(id(p) in backbone for p in t.optimizer.param_groups[1]["params"])
    assert not any(id(p) in backbone for p in t.optimizer.param_groups[0]["params"])
    # a rate of 0 for the backbones: they keep their weights while the head learns
    t = Trainer(demo_cfg.with_overrides({"backbone_lr_mult": 0.0, "lr": 1e-2}), split)
    text, head = _params(t.model.text), _params(t.model.head)
    _one_step(t, split)
    assert not _changed(text, t.model.text) and _changed(head, t.model.head)


def test_balanced_class_weights_change_the_loss(demo_cfg, split):
    labels = np.array([0] * 6 + [1] * 1 + [2] * 3)
    w = class_weight("balanced", labels, torch.device("cpu"))
    assert w.tolist() == pytest.approx([10 / 18, 10 / 3, 10 / 9])
    assert class_weight("none", labels, torch.device("cpu")) is None
    assert class_weight("balanced", np.array([0, 0, 2]), torch.device("cpu"))[1] == 0  # no neutral rows
    plain = _one_step(Trainer(demo_cfg, split), split)
    t = Trainer(demo_cfg.with_overrides({"class_weights": "balanced"}), split)
    counts = np.bincount(split.train.labels, minlength=len(LABELS))
    assert t.class_weight.tolist() == pytest.approx((counts.sum() / (3 * counts)).tolist())
    assert _one_step(t, split) != pytest.approx(plain, rel=1e-4)
    # the validation loss stays unweighted: comparable between trials with and without weights
    fresh = Trainer(demo_cfg.with_overrides({"class_weights": "balanced"}), split)
    assert fresh.run_epoch(split.val, False)["loss"] == pytest.approx(
        Trainer(demo_cfg, split).run_epoch(split.val, False)["loss"], rel=1e-5)


def test_warmup_schedule(demo_cfg, split):
    t = Trainer(demo_cfg.with_overrides({"warmup_steps": 4, "lr": 1e-3, "backbone_lr_mult": 0.5}), split)
    assert [t.warmup_factor(s) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    seen = []
    t.before_step = lambda: seen.append([g["lr"] for g in t.optimizer.param_groups])
    for _ in range(5):
        _one_step(t, split)
    assert sum(seen, []) == pytest.approx([x for f in (0.25, 0.5, 0.75, 1.0, 1.0) for x in (1e-3 * f, 5e-4 * f)])
    assert [g["lr"] for g in t.optimizer.param_groups] == pytest.approx([1e-3, 5e-4])  # the scheduler's rates kept
    assert t.training_state()["steps"] == 5
    # a share of all steps: epochs x optimizer steps per epoch
    t = Trainer(demo_cfg.with_overrides({"warmup_fraction": 0.5, "epochs": 2}), split)
    per_epoch = sum(last for _, _, last in t.epoch_plan(split.train, True)[0])
    assert t.warmup == round(0.5 * 2 * per_epoch)


def test_warmup_given_twice_is_refused(demo_cfg):
    with pytest.raises(UserError, match="warmup_steps 3 and train.warmup_fraction 0.1 are both set"):
        demo_cfg.with_overrides({"warmup_steps": 3, "warmup_fraction": 0.1})
    with pytest.raises(UserError, match="class_weights: 'inverse' is not one of none, balanced"):
        demo_cfg.with_overrides({"class_weights": "inverse"})


def test_warmup_clock_survives_a_checkpoint(demo_cfg, split, tmp_path):
    cfg = demo_cfg.with_overrides({"warmup_steps": 50})
    t = Trainer(cfg, split)
    for _ in range(3):
        _one_step(t, split)
    t.save_checkpoint(tmp_path / "ck")
    again = Trainer(cfg, split)
    again.load_checkpoint(tmp_path / "ck")
    assert again.steps == 3 and again.warmup_factor(again.steps) == pytest.approx(4 / 50)
