"""search/trial/exported.py: the checkpoint `mmsa export` names is a copy in EXP/exported/ that no search deletes,
made whole or not at all while the trial, the pruner or retention delete the original (CI once lost an exported
checkpoint to the pin that raced with a deletion). And the pins of earlier exports are still honoured."""
import json
import os
import random
import shutil
import threading
import time

import pytest
import torch

from data_pipeline.safe_files import UnsafePath
from search.trial import exported
from search.trial.async_checkpoint import BEST_PREFIX, best_name, read_pointer
from search.trial.checkpoint_retention import METRICS_FILE, PIN_FILE

from test_async_checkpoint import one_epoch

FILES = {"model.safetensors": b"w" * 1000, "config.yaml": b"c: 1\n", METRICS_FILE: b'{"epoch": 1}'}


def _ckpt(d):
    d.mkdir(parents=True)
    for n, b in FILES.items():
        (d / n).write_bytes(b)
    return d


def test_the_copy_is_hard_linked_outlives_the_original_and_is_never_replaced(tmp_path):
    exp = str(tmp_path)
    src = _ckpt(tmp_path / "trial_a" / best_name(3))
    (src / "trainer_state.pt").write_bytes(b"s" * 1000)  # not what predict or train read: not copied
    got = exported.keep_copy(exp, str(src), "trial_a-" + best_name(3))
    assert got == f"{exp}/{exported.EXPORTED_DIR}/trial_a-{best_name(3)}"
    assert os.stat(f"{got}/model.safetensors").st_ino == (src / "model.safetensors").stat().st_ino  # no bytes copied
    assert sorted(os.listdir(got)) == sorted(FILES)
    shutil.rmtree(src)  # the trial found a better epoch, or the search ended
    assert {n: open(f"{got}/{n}", "rb").read() for n in FILES} == FILES
    (tmp_path / exported.EXPORTED_DIR / f"trial_a-{best_name(3)}" / "predictions.txt").write_text("guid,tag\n")
    assert exported.keep_copy(exp, str(src), "trial_a-" + best_name(3)) == got  # exported again: the same copy
    assert os.path.isfile(f"{got}/predictions.txt")  # the user's files in it stay


def test_rays_own_checkpoints_are_copied_not_linked(tmp_path):
    """checkpoint_mode sync: Ray rewrites a checkpoint_* folder's files in place when a resumed trial reports it
    again, which would change a hard-linked copy."""
    src = _ckpt(tmp_path / "trial_a" / "checkpoint_000002")
    got = exported.keep_copy(str(tmp_path), str(src), "trial_a-checkpoint_000002")
    assert os.stat(f"{got}/model.safetensors").st_ino != (src / "model.safetensors").stat().st_ino
    (src / "model.safetensors").write_bytes(b"rewritten in place")
    assert open(f"{got}/model.safetensors", "rb").read() == FILES["model.safetensors"]


def test_a_half_copy_is_left_alone_and_a_fresh_one_made_beside_it(tmp_path):
    src = _ckpt(tmp_path / "trial_a" / best_name(1))
    half = tmp_path / exported.EXPORTED_DIR / "c"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"cut")  # an export killed mid-way (no metrics file)
    got = exported.keep_copy(str(tmp_path), str(src), "c")
    assert got.startswith(f"{tmp_path}/{exported.EXPORTED_DIR}/c-") and os.path.isfile(f"{got}/{METRICS_FILE}")
    assert (half / "model.safetensors").read_bytes() == b"cut"


def test_a_folder_being_deleted_or_planted_is_not_copied(tmp_path):
    exp = str(tmp_path)
    half = _ckpt(tmp_path / "trial_a" / "half")
    (half / "model.safetensors").unlink()  # the deletion had begun
    with pytest.raises(FileNotFoundError):
        exported.keep_copy(exp, str(half), "half")
    assert not (tmp_path / exported.EXPORTED_DIR / "half").exists()
    with pytest.raises(OSError):
        exported.keep_copy(exp, str(tmp_path / "trial_a" / "gone"), "gone")
    outside = _ckpt(tmp_path.parent / f"{tmp_path.name}-outside")
    (tmp_path / "trial_a" / "linked").symlink_to(outside)  # a checkpoint folder that is a link
    with pytest.raises(UnsafePath):
        exported.keep_copy(exp, str(tmp_path / "trial_a" / "linked"), "linked")
    inner = _ckpt(tmp_path / "trial_a" / "inner")
    (inner / "config.yaml").unlink()
    (inner / "config.yaml").symlink_to(outside / "config.yaml")  # a link inside
    with pytest.raises(UnsafePath):
        exported.keep_copy(exp, str(inner), "inner")
    fifo = _ckpt(tmp_path / "trial_a" / "fifo")
    (fifo / "model.safetensors").unlink()
    os.mkfifo(fifo / "model.safetensors")  # would block a reader forever
    with pytest.raises(UnsafePath):
        exported.keep_copy(exp, str(fifo), "fifo")
    assert sorted(os.listdir(tmp_path / exported.EXPORTED_DIR)) == []  # nothing half-made left
    shutil.rmtree(tmp_path / exported.EXPORTED_DIR)
    (tmp_path / exported.EXPORTED_DIR).symlink_to(tmp_path.parent / f"{tmp_path.name}-outside")  # exported/ a link
    with pytest.raises(UnsafePath):
        exported.keep_copy(exp, str(_ckpt(tmp_path / "trial_a" / "ok")), "ok")
    assert sorted(p.name for p in outside.iterdir()) == sorted(FILES)  # nothing written there


def test_concurrent_exports_of_one_checkpoint_each_name_a_whole_copy(tmp_path):
    src = _ckpt(tmp_path / "trial_a" / best_name(2))
    got, errors = [], []
    go = threading.Barrier(4)

    def export():
        go.wait()
        for _ in range(25):
            try:
                got.append(exported.keep_copy(str(tmp_path), str(src), "same"))
            except OSError as e:
                errors.append(e)

    threads = [threading.Thread(target=export) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == [] and len(got) == 100
    for g in set(got):  # every copy any export named is still there, whole
        assert {n: open(f"{g}/{n}", "rb").read() for n in FILES} == FILES


def test_copies_racing_deletions_are_whole_or_refused(tmp_path):
    """Real threads: for each of 200 folders an export copies it while a deleter removes it (rmtree, file by file),
    each starting after its own random delay of up to 1 ms; every copy keep_copy returns holds all the files with
    their bytes, and no half copy is left. (Without the check that the copy is whole, a few copies in 200 lack a
    file.)"""
    exp = str(tmp_path)
    srcs = [_ckpt(tmp_path / "trial_a" / f"f{i:03d}") for i in range(200)]
    rng = random.Random(0)
    delays = [(rng.random() * 0.001, rng.random() * 0.001) for _ in srcs]
    made, refused = {}, 0
    go = threading.Barrier(2)

    def deleter():
        for s, (d, _) in zip(srcs, delays):
            go.wait()
            time.sleep(d)
            shutil.rmtree(s, ignore_errors=True)

    t = threading.Thread(target=deleter)
    t.start()
    for s, (_, d) in zip(srcs, delays):
        go.wait()
        time.sleep(d)
        try:
            made[s.name] = exported.keep_copy(exp, str(s), s.name)
        except OSError:
            refused += 1
    t.join()
    for name, got in made.items():
        assert {n: open(f"{got}/{n}", "rb").read() for n in FILES} == FILES, name
    assert sorted(p.name for p in (tmp_path / exported.EXPORTED_DIR).iterdir()) == sorted(made)  # no half copy left
    assert made and refused, f"the race was not exercised: {len(made)} copied, {refused} refused"


def test_a_replayed_epoch_keeps_the_pin_of_an_earlier_export(tmp_path, monkeypatch):
    """After a resume a trial trains the epoch after its saved state again. Its best folder, pinned by an export of an
    earlier version, is neither replaced (which dropped the pin: the CI failure) nor deleted by a later better epoch;
    the state written with the replayed epoch holds the replayed weights (not a link to the pinned ones)."""
    t, ck = one_epoch(tmp_path, monkeypatch)
    ck.after_epoch({"epoch": 1, "val_loss": 1.0})
    ck.finish_best()
    pinned = tmp_path / best_name(1)
    (pinned / PIN_FILE).write_text(json.dumps({"pinned_by": "mmsa export"}))
    ck.close()

    t2, ck2 = one_epoch(tmp_path, monkeypatch)  # the resumed trial replays epoch 1 (other weights: a new init)
    ck2.after_epoch({"epoch": 1, "val_loss": 1.0})
    want = {k: v.clone() for k, v in t2.model.state_dict().items()}
    t2.step()
    t2.epoch = 2
    t2.history.append({"epoch": 2, "val_loss": 0.5})
    ck2.after_epoch({"epoch": 2, "val_loss": 0.5})
    p = ck2.pointer(2, tmp_path / "p2")
    ck2.finish_best()
    assert (pinned / PIN_FILE).is_file() and (pinned / METRICS_FILE).is_file()
    assert sorted(x.name for x in tmp_path.glob(f"{BEST_PREFIX}*")) == [best_name(1), best_name(2)]
    from safetensors.torch import load_file

    got = load_file(str(tmp_path / read_pointer(p)["state"] / "model.safetensors"))
    old = load_file(str(pinned / "model.safetensors"))
    assert all(torch.equal(got[k], want[k]) for k in want) and not all(torch.equal(got[k], old[k]) for k in old)
    ck2.close()


def test_export_names_a_copy_and_follows_no_link_between_trials(tmp_path, capsys):
    """`mmsa export` names EXP/exported/TRIAL-FOLDER; a best folder that is a link (planted: to another trial's
    weights, inside the experiment) is not followed: no checkpoint is named, nothing is copied."""
    import yaml

    from search.cli import main
    from tests.test_intervals import fake_experiment

    exp = fake_experiment(tmp_path)  # trial a is the best, at epoch 2
    best = _ckpt(exp / "trial_a" / best_name(2))
    out = tmp_path / "best.yaml"
    assert main(["export", str(exp), "-o", str(out)]) == 0
    ck = yaml.safe_load(out.read_text())["search"]["checkpoint"]
    assert ck == f"{exp}/{exported.EXPORTED_DIR}/trial_a-{best_name(2)}"
    shutil.rmtree(best)  # a later resume prunes the original
    assert {n: open(f"{ck}/{n}", "rb").read() for n in FILES} == FILES

    shutil.rmtree(exp / exported.EXPORTED_DIR)
    other = _ckpt(exp / "trial_c" / best_name(9))
    best.symlink_to(os.path.relpath(other, best.parent))
    assert main(["export", str(exp), "-o", str(out), "--overwrite"]) == 0
    assert yaml.safe_load(out.read_text())["search"]["checkpoint"] is None
    assert not (exp / exported.EXPORTED_DIR).exists() or not any((exp / exported.EXPORTED_DIR).iterdir())


def test_a_full_disk_during_the_byte_copy_leaves_no_half_copy_and_the_original(tmp_path):
    """The copy of a Ray checkpoint (bytes, not links) runs out of space half-way: ENOSPC is raised for the export to
    name (search/commands/export.py), the half-written folder is removed (its space back), the original is untouched,
    and once space is freed the same export makes a whole copy."""
    from conftest import tmpfs

    with tmpfs(tmp_path / "small", "4m") as mnt:
        src = mnt / "trial_a" / "checkpoint_000003"
        src.mkdir(parents=True)
        weights = os.urandom(1536 * 1024)
        files = {**FILES, "model.safetensors": weights}
        for n, b in files.items():
            (src / n).write_bytes(b)
        filler = mnt / "filler"
        filler.write_bytes(b"\0" * (os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize - 512 * 1024))
        free = os.statvfs(mnt).f_bavail
        with pytest.raises(OSError) as e:
            exported.keep_copy(str(mnt), str(src), "trial_a-checkpoint_000003")
        assert e.value.errno == 28  # ENOSPC, as the storage said it
        assert os.listdir(mnt / exported.EXPORTED_DIR) == [] and os.statvfs(mnt).f_bavail == free
        assert {n: (src / n).read_bytes() for n in files} == files
        filler.unlink()
        got = exported.keep_copy(str(mnt), str(src), "trial_a-checkpoint_000003")
        assert {n: open(f"{got}/{n}", "rb").read() for n in files} == files
