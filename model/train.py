"""THE training loop. Final training, search trials and ablations all run `Trainer.fit`; callers decide what to
do with the metrics it yields (print, write files, report to Ray)."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from data_pipeline.augment import augment, normalize
from data_pipeline.batches import batch_indices, collate, prefetch
from data_pipeline.errors import UserError
from data_pipeline.labels import LABELS
from data_pipeline.preprocess import Prepared

from . import run_files as ckpt
from . import metrics as M
from .config import Config, save_config
from .fusion import FusionClassifier


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device is {name!r} but CUDA is not available here; use 'auto' or 'cpu'.")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    if device.type != "cuda":
        return "32"
    # bfloat16 runs on tensor cores from compute capability 8.0 (Ampere) on; older cards emulate it slowly.
    return "bf16-mixed" if torch.cuda.get_device_capability(device)[0] >= 8 else "16-mixed"


def autocast(device: torch.device, precision: str):
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16-mixed" else torch.float16)


def keep_freed_host_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the kernel. By default large blocks
    (a batch of float pictures: 19 MB at 32 x 224 px) may be mapped fresh and given back on free, so a batch
    first-touches tens of MB of new pages again: 30k-230k page faults per 600 pictures, 8-15% of the CPU image
    path's time on a 2-core VM (docs/benchmarks.md). The price: the process keeps its peak size."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**30))


def _micro_chunks(idx: np.ndarray, micro: int, train: bool) -> list[np.ndarray]:
    """A step's micro-batches; in training a last one of a single sample joins the one before (BatchNorm)."""
    chunks = np.split(idx, range(micro, len(idx), micro))
    if train and len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks = [*chunks[:-2], np.concatenate(chunks[-2:])]
    return chunks


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    # Each epoch's randomness is a pure function of (seed, epoch), so resuming at epoch k replays k+1... exactly.
    return (seed * 1_000_003 + epoch * 7_919 + stream) % (2**63)


def param_groups(model: FusionClassifier, lr: float, backbone_lr_mult: float) -> list[dict]:
    """The new layers at lr (group 0, the one reported as lr), the backbones at lr x backbone_lr_mult; frozen
    parameters (model.freeze_text_layers) are left out. One group when the rates are equal: the optimizer (and its
    checkpoints) as before the setting existed."""
    trained = [p for p in model.parameters() if p.requires_grad]
    if backbone_lr_mult == 1.0:
        return [{"params": trained, "lr": lr}]
    backbone = {id(p) for m in model.backbones() for p in m.parameters()}
    groups = [{"params": [p for p in trained if id(p) not in backbone], "lr": lr},
              {"params": [p for p in trained if id(p) in backbone], "lr": lr * backbone_lr_mult}]
    return [g for g in groups if g["params"]]


def class_weight(kind: str, labels: np.ndarray, device: torch.device) -> torch.Tensor | None:
    """Per-class weights of the training loss (train.class_weights): balanced = n / (classes x rows of the class); a
    class without training rows gets weight 0 (it has no rows to weigh)."""
    if kind == "none":
        return None
    counts = np.bincount(labels[labels >= 0], minlength=len(LABELS)).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (len(LABELS) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32, device=device)


def warmup_steps(t, steps_per_epoch) -> int:
    """The warm-up's length in optimizer steps (train.warmup_steps, or warmup_fraction of all steps;
    steps_per_epoch() is asked only then)."""
    if t.warmup_fraction:
        return max(1, round(t.warmup_fraction * t.epochs * steps_per_epoch()))
    return t.warmup_steps


@dataclass
class Split:
    train: Prepared
    val: Prepared


class Trainer:
    def __init__(self, cfg: Config, data: Split, device: str | torch.device | None = None):
        self.cfg = cfg
        self.data = data
        t = cfg.train
        self.device = torch.device(device) if device is not None else resolve_device(t.device)
        self.cuda = self.device.type == "cuda"
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        keep_freed_host_memory()
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(t.seed)
        self.model = FusionClassifier(cfg.model).to(self.device)
        if self.cuda and self.model.uses_image:
            self.model.image.to(memory_format=torch.channels_last)
        # torch.compile wraps the module; state dicts and checkpoints keep using the plain one.
        self.step_model = torch.compile(self.model, dynamic=True) if t.compile else self.model
        # Fused: one kernel per step, and (unlike the for-each version on the CPU) no `.item()` per parameter.
        fused = {"fused": True} if self.device.type in ("cuda", "cpu") else {}
        self.optimizer = torch.optim.AdamW(param_groups(self.model, t.lr, t.backbone_lr_mult), lr=t.lr,
                                           weight_decay=t.weight_decay, **fused)
        self.class_weight = class_weight(t.class_weights, data.train.labels, self.device)
        self.warmup = warmup_steps(t, lambda: sum(last for _, _, last in self.epoch_plan(data.train, True)[0]))
        self.steps = 0  # optimizer steps taken (the warm-up's clock)
        self.precision = resolve_precision(t.precision, self.device)
        # float16 gradients underflow without loss scaling; with the fused AdamW the scaler's inf check stays on
        # the device (the optimizer skips the step itself), so it adds no host synchronisation.
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "16-mixed" else None
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="min", factor=t.lr_factor,
                                                                    patience=t.lr_patience)
        self.epoch = 0  # epochs finished
        self.history: list[dict] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        # The last validation pass's predicted class per row (int8, the row order of data.val): the search keeps the
        # best epoch's for intervals and paired comparisons between trials (search/selection/stats.py). No extra pass.
        self.val_pred: np.ndarray | None = None
        self.on_batch = None  # optional callback(train: bool, samples: int), e.g. a progress bar
        self.before_step = None  # optional callback() before each optimizer step (search/trial/async_checkpoint.py)
        # train.select_metric: which epoch is best (its weights kept, its row's best_epoch); one rule, model/metrics
        self.objective = M.objective(t.select_metric)
        self.keep_best_state = True  # host copy of the best epoch's weights (search trials keep them on storage)

    # ---- one step: the public pieces run_batches is made of (benches time exactly these) -------------------
    def _collate(self, data: Prepared, idx: np.ndarray) -> dict:
        b = collate(data, idx)
        # Pinned on the prefetch thread, so the copy to the GPU below is asynchronous.
        return {k: v.pin_memory() for k, v in b.items()} if self.cuda else b

    def to_device(self, batch: dict) -> dict:
        """A collated batch on the training device (asynchronous from pinned memory; the CPU batch itself on the CPU)."""
        if self.cuda:
            return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        return batch

    def forward(self, b: dict, train: bool, gen: torch.Generator | None) -> torch.Tensor:
        """Float32 logits of a device batch: images normalised (and augmented with gen when train) on the device."""
        images = None
        if self.model.uses_image:
            images = normalize(b["images"])
            if train:
                images = augment(images, self.cfg.train.hflip, self.cfg.train.rotation, gen)
            if self.cuda:
                images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            return self.step_model(b["input_ids"], b["attention_mask"], images).float()

    def train_step(self, b: dict, gen: torch.Generator, step_size: int | None = None, last: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward of one (micro-)batch, then the optimizer step if it is the step's last micro-batch.
        The gradient is of the summed loss / step_size (default: this batch's size), so micro-batches of one step
        add up to the big batch's mean gradient. Returns the summed loss and the logits, left on the device."""
        logits = self.forward(b, True, gen)
        loss = F.cross_entropy(logits, b["labels"], weight=self.class_weight, reduction="sum")
        scaled = loss / (step_size or b["labels"].shape[0])
        (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        if last:
            self.optimizer_step()
        return loss, logits

    def warmup_factor(self, step: int) -> float:
        """The share of each group's learning rate that optimizer step `step` (0-based) uses: linear from
        1/warmup to 1 over the warm-up, then 1."""
        return min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0

    def optimizer_step(self) -> None:
        # The warm-up scales the rate for this step only: the groups keep the plateau scheduler's rates.
        w = self.warmup_factor(self.steps)
        peaks = [g["lr"] for g in self.optimizer.param_groups]
        if w < 1.0:
            for g in self.optimizer.param_groups:
                g["lr"] = g["lr"] * w
        if self.before_step is not None:
            self.before_step()
        if self.scaler:  # skips the update on the device when float16 gradients overflowed
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        for g, lr in zip(self.optimizer.param_groups, peaks):
            g["lr"] = lr
        self.steps += 1
        self.optimizer.zero_grad(set_to_none=True)

    # ---- one epoch -------------------------------------------------------------------------------------------
    def run_epoch(self, data: Prepared, train: bool, seed: int = 0) -> dict:
        """One pass over data; returns loss, accuracy, macro F1, "scores" (model.metrics.classification_metrics),
        samples, seconds (and, for an evaluation pass,
        "pred": the predicted class of each row of data, in its row order)."""
        start = time.perf_counter()
        pred = None if train else torch.full((len(data),), -1, dtype=torch.int8, device=self.device)
        loss_sum, confusion, seen = self.run_batches(data, train, seed, pred)
        conf = confusion.view(len(LABELS), len(LABELS)).cpu()  # the pass's one read of the device
        secs = time.perf_counter() - start
        scores = M.classification_metrics(conf)
        out = {"loss": float(loss_sum) / max(seen, 1), "acc": scores[M.VAL_ACC], "f1": scores[M.VAL_F1],
               "scores": scores, "samples": seen, "seconds": secs}
        if pred is not None:
            out["pred"] = pred.cpu().numpy()
        return out

    def epoch_plan(self, data: Prepared, train: bool, seed: int = 0
                   ) -> tuple[list[tuple[np.ndarray, int, bool]], torch.Generator]:
        """A pass's micro-batches as (sample indices, size of their optimizer step, last of the step?) and the
        generator of its augmentation: pure functions of (train.seed, seed), so a bench can replay a pass."""
        t = self.cfg.train
        batches = batch_indices(data.lengths, t.batch_size, shuffle=train, bucket=t.bucket_by_length or not train,
                                seed=_epoch_seed(t.seed, seed, 1))
        if train and len(batches) > 1:
            # BatchNorm cannot train on one sample: a training set of k*batch_size+1 rows crashed every trial.
            # The lone row sits out this epoch only (the order is reshuffled each epoch), as drop_last would.
            batches = [idx for idx in batches if len(idx) > 1]
        micro = t.micro_batch_size or t.batch_size
        plan = [(part, len(idx), part is chunks[-1])
                for idx in batches for chunks in [_micro_chunks(idx, micro, train)] for part in chunks]
        return plan, torch.Generator().manual_seed(_epoch_seed(t.seed, seed, 2))

    def run_batches(self, data: Prepared, train: bool, seed: int = 0,
                    pred: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The batches of one pass: summed loss and flat confusion counts, both left on the device (no host
        synchronisation per batch: the host queues work and runs ahead of the GPU), and the number of samples.
        `pred` (a device tensor of len(data)), if given, receives each row's predicted class."""
        t = self.cfg.train
        self.model.train(train)
        plan, gen = self.epoch_plan(data, train, seed)
        parts = ((self._collate(data, idx), step_size, last) for idx, step_size, last in plan)
        loss_sum = torch.zeros((), device=self.device)
        n_classes = len(LABELS)
        confusion = torch.zeros(n_classes**2, dtype=torch.long, device=self.device)
        ones = torch.ones(max(t.batch_size, t.micro_batch_size or 0), dtype=torch.long, device=self.device)
        seen = 0
        with torch.set_grad_enabled(train):
            for b, step_size, last in prefetch(parts):
                b = self.to_device(b)
                if train:
                    loss, logits = self.train_step(b, gen, step_size, last)
                else:
                    logits = self.forward(b, False, gen)
                    loss = F.cross_entropy(logits, b["labels"], reduction="sum")
                loss_sum += loss.detach()
                # index_add_, not bincount: bincount on CUDA reads the maximum back to the host every batch.
                confusion.index_add_(0, b["labels"] * n_classes + logits.argmax(1), ones[: b["labels"].shape[0]])
                if pred is not None:
                    pred.index_copy_(0, b["index"], logits.argmax(1).to(torch.int8))
                seen += b["labels"].shape[0]
                if self.on_batch is not None:
                    self.on_batch(train, b["labels"].shape[0])
        return loss_sum, confusion, seen

    # ---- the loop ---------------------------------------------------------------------------------------------
    def should_stop(self) -> bool:
        p = self.cfg.train.patience
        if p == 0 or len(self.history) <= p:
            return False
        losses = [h[M.VAL_LOSS] for h in self.history[-(p + 1):]]
        return all(b > a for a, b in zip(losses, losses[1:]))

    def done(self) -> bool:
        """All epochs trained, or early stop: the loop ends here (a search trial's last report)."""
        return self.epoch >= self.cfg.train.epochs or self.should_stop()

    def fit(self) -> Iterator[dict]:
        """Train until cfg.train.epochs or early stop, yielding each epoch's metrics (names from model.metrics)."""
        t = self.cfg.train
        while not self.done():
            torch.manual_seed(_epoch_seed(t.seed, self.epoch, 0))  # dropout
            lr = self.optimizer.param_groups[0]["lr"]  # the new layers' group: train.lr as the plateau scheduler left it
            tr = self.run_epoch(self.data.train, train=True, seed=self.epoch)
            va = self.run_epoch(self.data.val, train=False, seed=self.epoch)
            self.val_pred = va["pred"]
            if not math.isfinite(tr["loss"]):
                raise FloatingPointError(f"training loss is {tr['loss']} at epoch {self.epoch + 1}; lower train.lr")
            self.scheduler.step(va["loss"])
            self.epoch += 1
            row = {M.EPOCH: self.epoch, M.TRAIN_LOSS: tr["loss"], M.VAL_LOSS: va["loss"], **va["scores"], M.LR: lr,
                   M.SPS: tr["samples"] / max(tr["seconds"], 1e-9)}
            rows = self.history + [row]
            # Best so far by the one rule (model/metrics.best_index: the first epoch of the best finite value), which
            # the search's best-weights folder, kept predictions and best trial follow too.
            for o in M.OBJECTIVES.values():
                row[o.running] = rows[o.best_index([h[o.metric] for h in rows])][o.metric]
            row[M.BEST_EPOCH] = rows[self.objective.best_index([h[self.objective.metric] for h in rows])][M.EPOCH]
            if self.keep_best_state and self.objective.is_best(rows):
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            self.history.append(row)
            yield row

    def close(self) -> None:
        """Give back what this trainer holds (model, optimizer state, best weights; on CUDA the cached blocks too),
        even while something else still refers to the trainer, e.g. a traceback: a warm search worker runs the next
        trial in the same process, and the lab's "GPU memory not freed between runs" must not come back."""
        import gc

        self.model = self.step_model = self.optimizer = self.scheduler = self.scaler = None
        self.best_state = self.val_pred = None
        self.before_step = self.on_batch = None
        gc.collect()
        if self.cfg.train.compile:  # compiled graphs guard on the old module; a new trial's would pile up and recompile
            torch.compiler.reset()
        if self.cuda:
            torch.cuda.empty_cache()

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def training_state(self) -> dict:
        """Everything but the weights that a checkpoint holds (tensors are references, not copies)."""
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "epoch": self.epoch, "history": self.history, "torch_rng": torch.get_rng_state(), "steps": self.steps}
        if self.scaler:
            state["grad_scaler"] = self.scaler.state_dict()
        return state

    def save_checkpoint(self, path: str | Path, include_best: bool = True) -> Path:
        def write(tmp: Path):
            ckpt.save_weights(self.model.state_dict(), tmp / ckpt.WEIGHTS)
            if include_best and self.best_state is not None:
                ckpt.save_weights(self.best_state, tmp / ckpt.BEST_WEIGHTS)
            ckpt.save_state(self.training_state(), tmp / ckpt.STATE)
            save_config(self.cfg, tmp / ckpt.CONFIG)

        return ckpt.replace_dir(path, write)

    def load_checkpoint(self, path: str | Path) -> None:
        path = Path(path)
        self.model.load_state_dict(ckpt.load_weights(path / ckpt.WEIGHTS))
        state = ckpt.load_state(path / ckpt.STATE)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.steps = int(state.get("steps", 0))  # checkpoints from before the warm-up: none was configured
        self.history = list(state["history"])
        torch.set_rng_state(state["torch_rng"])
        if self.scaler and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        best = path / ckpt.BEST_WEIGHTS
        self.best_state = ckpt.load_weights(best) if best.is_file() else None


@torch.no_grad()
def predict_proba(model: FusionClassifier, data: Prepared, batch_size: int = 128, device: str = "auto",
                  precision: str = "auto") -> np.ndarray:
    """Class probabilities (N, 3) in the row order of data."""
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    model.to(dev).eval()
    rows, probs = [], []
    for idx in batch_indices(data.lengths, batch_size, shuffle=False, bucket=True):
        host = collate(data, idx)
        b = {k: v.to(dev) for k, v in host.items()}
        images = normalize(b["images"]) if model.uses_image else None
        with autocast(dev, precision):
            logits = model(b["input_ids"], b["attention_mask"], images).float()
        rows.append(host["index"].numpy())  # collate's row order
        probs.append(torch.softmax(logits, 1))  # kept on the device: read once at the end, not per batch
    out = np.zeros((len(data), len(LABELS)), dtype=np.float32)
    if rows:
        out[np.concatenate(rows)] = torch.cat(probs).cpu().numpy()
    return out
