"""Which trial checkpoints the search keeps (search/trial/checkpoint_retention.py)."""
import math

from search.trial.checkpoint_retention import to_delete


def test_keeps_the_best_and_the_two_newest():
    entries = {f"c{e}": (e, loss) for e, loss in [(1, 0.9), (2, 0.5), (3, 0.7), (4, 0.8), (5, 0.6)]}
    assert to_delete(entries, keep=1) == {"c1", "c3"}
    assert to_delete(entries, keep=2) == {"c1", "c3"}  # c5 is both one of the newest and the second best
    assert to_delete(entries, keep=3) == {"c1"}


def test_previous_newest_survives_a_better_new_checkpoint():
    """Ray's num_to_keep deleted epoch n-1 when epoch n was better; the saved state may still name n-1."""
    entries = {}
    for e, loss in enumerate([0.9, 0.8, 0.7, 0.6, 0.5], start=1):
        entries[f"c{e}"] = (e, loss)
        for gone in to_delete(entries, keep=1):
            del entries[gone]
        assert f"c{e - 1}" in entries or e == 1
    assert set(entries) == {"c4", "c5"}


def test_nan_losses_rank_last_and_few_entries_are_untouched():
    entries = {"a": (1, math.nan), "b": (2, 0.4), "c": (3, math.nan), "d": (4, math.nan)}
    assert to_delete(entries, keep=1) == {"a"}
    assert to_delete({"a": (1, 0.3), "b": (2, 0.2)}, keep=1) == set()
    assert to_delete({}, keep=2) == set()


def test_a_val_loss_tie_keeps_the_epoch_export_calls_best():
    """Equal val_loss at epochs 1 and 2: best_index (status, export) says epoch 1, so the pruner keeps epoch 1."""
    from model.metrics import best_index

    entries = {"ck1": (1, 0.5), "ck2": (2, 0.5), "ck3": (3, 0.6), "ck4": (4, 0.7), "ck5": (5, float("nan"))}
    losses = [entries[f"ck{e}"][1] for e in range(1, 6)]
    assert best_index(losses, "min") == 0
    assert to_delete(entries, keep=1) == {"ck2", "ck3"}  # ck1 best, ck4/ck5 newest
