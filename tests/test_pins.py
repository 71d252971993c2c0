"""search/trial/pins.py: `mmsa export` pinning a checkpoint folder while the trial or the pruner deletes it. Whatever
the interleaving, a folder the pinner was told is pinned stays whole, and a folder it was told is gone has no pin left
behind. (CI once lost an exported checkpoint to the old check-then-delete.)"""
import json
import threading

import pyarrow.fs as pafs

from search.trial import pins
from search.trial.async_checkpoint import BEST_PREFIX, best_name, read_pointer
from search.trial.checkpoint_retention import METRICS_FILE, PIN_FILE

from test_async_checkpoint import one_epoch

LOCAL = pafs.LocalFileSystem()


def _folder(root, name="mmsa_best_epoch_000001"):
    d = root / name
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"w" * 100)
    (d / METRICS_FILE).write_text(json.dumps({"epoch": 1}))
    return d


def test_unpinned_is_deleted_pinned_is_kept(tmp_path):
    a, b = _folder(tmp_path, "a"), _folder(tmp_path, "b")
    assert pins.pin(LOCAL, str(b), str(tmp_path))
    assert pins.delete_unpinned(LOCAL, str(a), str(tmp_path)) and not a.exists()
    assert not pins.delete_unpinned(LOCAL, str(b), str(tmp_path))
    assert (b / METRICS_FILE).is_file() and (b / PIN_FILE).is_file()
    assert pins.delete_unpinned(LOCAL, str(tmp_path / "never"), str(tmp_path))


def test_a_pin_between_the_deleters_two_looks_keeps_the_folder_whole(tmp_path, monkeypatch):
    d = _folder(tmp_path)
    real = pins.storage.delete_file

    def then_export_pins(fs, path, root=None):
        real(fs, path, root)
        if path.endswith(METRICS_FILE):  # the export's pin lands right after the marker went
            (d / PIN_FILE).write_text("{}")

    monkeypatch.setattr(pins.storage, "delete_file", then_export_pins)
    assert not pins.delete_unpinned(LOCAL, str(d), str(tmp_path))
    assert (d / METRICS_FILE).read_text() == json.dumps({"epoch": 1}) and (d / "model.safetensors").is_file()


def test_pinning_a_folder_that_is_gone_or_half_written_leaves_no_pin(tmp_path):
    assert not pins.pin(LOCAL, str(tmp_path / "gone"), str(tmp_path))
    assert not (tmp_path / "gone").exists()
    half = _folder(tmp_path, "half")
    (half / METRICS_FILE).unlink()
    assert not pins.pin(LOCAL, str(half), str(tmp_path))
    assert not (half / PIN_FILE).exists()


def test_a_link_planted_as_a_checkpoint_folder_is_removed_not_followed(tmp_path):
    outside = _folder(tmp_path / "outside")
    (tmp_path / "trial").mkdir()
    (tmp_path / "trial" / "mmsa_best_epoch_000009").symlink_to(outside)
    assert not pins.pin(LOCAL, str(tmp_path / "trial" / "mmsa_best_epoch_000009"), str(tmp_path / "trial"))
    assert not (outside / PIN_FILE).exists()
    assert pins.delete_unpinned(LOCAL, str(tmp_path / "trial" / "mmsa_best_epoch_000009"), str(tmp_path / "trial"))
    assert not (tmp_path / "trial" / "mmsa_best_epoch_000009").is_symlink()
    assert (outside / "model.safetensors").is_file() and (outside / METRICS_FILE).is_file()


def test_racing_pinner_and_deleter_never_lose_a_pinned_folder(tmp_path, monkeypatch):
    """Real threads, many folders: what pin() says pinned is there and whole at the end; what it says gone has no
    pin left."""
    monkeypatch.setattr(pins, "PIN_CHECKS_S", (0.0, 0.001, 0.002))
    folders = [_folder(tmp_path, f"f{i:03d}") for i in range(150)]
    said = {}
    go = threading.Barrier(2)

    def pinner():
        go.wait()
        for d in folders:
            said[d] = pins.pin(LOCAL, str(d), str(tmp_path))

    def deleter():
        go.wait()
        for d in folders:
            pins.delete_unpinned(LOCAL, str(d), str(tmp_path))

    threads = [threading.Thread(target=pinner), threading.Thread(target=deleter)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for d in folders:
        if said[d]:
            assert (d / METRICS_FILE).is_file() and (d / "model.safetensors").is_file() and (d / PIN_FILE).is_file(), d
        else:
            assert not (d / PIN_FILE).exists(), d


def test_a_replayed_epoch_keeps_the_export_pin_of_its_best_folder(tmp_path, monkeypatch):
    """After a resume a trial trains the epoch after its saved state again; its best folder, whole already, may be
    pinned by `mmsa export`: it is neither replaced (which dropped the pin) nor deleted by a later better epoch, and
    the state written with the replayed epoch holds the replayed weights, not a link to the pinned ones."""
    t, ck = one_epoch(tmp_path, monkeypatch)
    ck.after_epoch({"epoch": 1, "val_loss": 1.0})
    ck.finish_best()
    pinned = tmp_path / best_name(1)
    assert pins.pin(LOCAL, str(pinned), str(tmp_path))
    ck.close()

    t2, ck2 = one_epoch(tmp_path, monkeypatch)  # the resumed trial replays epoch 1 (other weights: a new init)
    ck2.after_epoch({"epoch": 1, "val_loss": 1.0})
    t2.step()
    t2.epoch = 2
    t2.history.append({"epoch": 2, "val_loss": 0.5})
    ck2.after_epoch({"epoch": 2, "val_loss": 0.5})
    p = ck2.pointer(2, tmp_path / "p2")
    ck2.finish_best()
    assert (pinned / PIN_FILE).is_file() and (pinned / METRICS_FILE).is_file()
    assert sorted(x.name for x in tmp_path.glob(f"{BEST_PREFIX}*")) == [best_name(1), best_name(2)]
    state = tmp_path / read_pointer(p)["state"]
    assert (state / "model.safetensors").stat().st_ino != (pinned / "model.safetensors").stat().st_ino
    ck2.close()
