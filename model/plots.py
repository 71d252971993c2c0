"""Figures of a run: the lab's loss/accuracy curves, and the ablation comparison."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import metrics as M  # noqa: E402


def save_figure(fig, path: Path, root: Path | None = None, **kw) -> None:
    """Render, then write atomically without following a link below root (default: the file's folder; a planted
    `curves.png -> ~/.bashrc` is replaced, never written through: data_pipeline/safe_files.py)."""
    import io

    from data_pipeline.atomic import write_file

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, **kw)
    write_file(path, buf.getvalue(), root=root)


def plot_curves(history: list[dict], path: Path, objective: M.Objective = M.DEFAULT_OBJECTIVE, title: str = "") -> None:
    ep = [h[M.EPOCH] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [h[M.TRAIN_LOSS] for h in history], "o-", label="train loss")
    a.plot(ep, [h[M.VAL_LOSS] for h in history], "s-", label="val loss")
    i = M.best_index([h.get(objective.metric) for h in history], objective.mode)  # the epoch whose weights the run kept
    if i is not None:
        a.axvline(ep[i], color="gray", ls=":", label=f"best epoch {ep[i]} (by {objective.metric})")
    a.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    a.legend()
    b.plot(ep, [h[M.VAL_ACC] for h in history], "o-", color="tab:green", label="val accuracy")
    b.plot(ep, [h[M.VAL_F1] for h in history], "s--", color="tab:purple", label="val macro-F1")
    b.set(xlabel="epoch", ylabel="score (0-1)", title="validation")
    b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_ablation(histories: dict[str, list[dict]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, hist), color in zip(histories.items(), ("tab:blue", "tab:orange", "tab:green")):
        ep = [h[M.EPOCH] for h in hist]
        ax.plot(ep, [h[M.TRAIN_LOSS] for h in hist], "--", color=color, alpha=0.6, label=f"{name} train")
        ax.plot(ep, [h[M.VAL_LOSS] for h in hist], "o-", color=color, label=f"{name} val")
    ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="ablation: text-only vs image-only vs fusion")
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(ncol=3, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
