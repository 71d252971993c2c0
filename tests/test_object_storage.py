"""A search on real object storage: an S3-compatible server (moto, in server mode on 127.0.0.1, started and stopped
here) with `--storage s3://bucket/...` and the endpoint given the way users give a MinIO endpoint (AWS_ENDPOINT_URL
and the AWS credential variables). Background checkpoints upload each state whole before a pointer names it: a worker
killed in the middle of an upload, then the driver SIGKILLed, `mmsa resume` in a fresh process and Ray instance that
has only the bucket; then status, export, report, confirm and `mmsa predict` from the exported checkpoint in the
bucket."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from searchproc import kill_group, start, without_ray_sigterm_noise, write_space

pytestmark = pytest.mark.slow
BUCKET = "mmsa-test-bucket"
EPOCHS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The server, a bucket, and the environment a user sets for an S3-compatible endpoint (restored after)."""
    pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.time() + 60
        while True:
            try:
                boto3.client("s3").create_bucket(Bucket=BUCKET)
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError(f"moto server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.5)
        yield f"s3://{BUCKET}"
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        kill_group(server)
        server.wait(timeout=30)


def _files(uri: str) -> dict[str, int]:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return {i.path[len(path) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}


def _rows(uri: str) -> int:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    n = 0
    for name in [f for f in _files(uri) if f.count("/") == 1 and f.endswith("/result.json") and f.startswith("trial_")]:
        with fs.open_input_stream(f"{path}/{name}") as f:
            n += len(f.read().splitlines())
    return n


@pytest.fixture(scope="module")
def killed_and_resumed(s3, demo_cfg, tmp_path_factory):
    """2 trials x 4 slowed epochs on s3://; a trial's worker killed mid-upload of epoch 2's state (Ray retries it; the
    first trial there, before the driver is), the driver SIGKILLed once 3 results are in, then `mmsa resume` from a
    fresh process."""
    tmp = tmp_path_factory.mktemp("s3search")
    fixed = demo_cfg.with_overrides({"epochs": EPOCHS, "patience": 0}).to_dict()
    space = write_space(tmp / "space.yaml", fixed, {"train.lr": {"loguniform": [1e-3, 3e-3]}},
                        {"grace_period": EPOCHS, "max_concurrent": 2, "max_failures": 2})
    storage, exp = f"{s3}/rr", f"{s3}/rr/s"
    faults = {"MMSA_TEST_FAULT": "slow:seed=0:1", "MMSA_TEST_FAULT_WRITE": "2", "MMSA_TEST_FAULT_DIR": str(tmp)}
    proc = start(["search", "--space", str(space), "--num-samples", "2", "--name", "s", "--storage", storage,
                  "--verbose", "0"], env=faults)
    deadline = time.time() + 420
    try:
        while _rows(exp) < 3:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "the search on s3:// reported fewer than 3 results in 7 minutes"
            time.sleep(1)
    finally:
        kill_group(proc)
    proc.wait(timeout=60)
    killed_rows = _rows(exp)
    r = subprocess.run([sys.executable, "-m", "search.cli", "resume", exp, "--verbose", "0"], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "MMSA_TEST_FAULT_DIR": str(tmp)})
    return exp, tmp, killed_rows, r


def test_killed_search_on_s3_resumes_from_the_bucket(killed_and_resumed):
    from search.selection.results import load_trials

    exp, tmp, killed_rows, r = killed_and_resumed
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in without_ray_sigterm_noise(r.stderr), r.stderr[-3000:]
    assert list(tmp.glob("killwrite-*")), "a worker was killed in the middle of a state upload"
    trials = load_trials(exp)
    assert len(trials) == 2 and all(t.state == "TERMINATED" and not t.error for t in trials), \
        [(t.trial_id, t.state, t.error) for t in trials]
    for t in trials:  # each epoch exactly once: resumed from its state in the bucket, nothing lost or repeated
        assert [row["epoch"] for row in t.results] == list(range(1, EPOCHS + 1)), (t.trial_id, t.results)
    assert killed_rows >= 3
    files = _files(exp)
    assert not [f for f in files if "/mmsa_state/" in f], "finished trials' training states are deleted"
    best = [f for f in files if "/mmsa_best_epoch_" in f and f.endswith("/model.safetensors")]
    assert len(best) == 2, best  # one best-weights folder per finished trial (keep_best_trials)


def test_status_export_report_confirm_predict_from_the_bucket(killed_and_resumed, tmp_path, monkeypatch, capsys):
    import yaml

    from search.cli import main

    exp = killed_and_resumed[0]
    assert main(["status", exp]) == 0
    assert "2 of 2 trials started, 2 terminated" in capsys.readouterr().out
    assert main(["export", exp, "-o", str(tmp_path / "best.yaml")]) == 0
    info = yaml.safe_load((tmp_path / "best.yaml").read_text())["search"]
    assert info["checkpoint"].startswith(f"{exp}/exported/trial_") and "-mmsa_best_epoch_" in info["checkpoint"]
    assert f"{info['checkpoint'][len(exp) + 1:]}/model.safetensors" in _files(exp)
    monkeypatch.chdir(tmp_path)
    assert main(["report", exp]) == 0
    assert (tmp_path / "s-report" / "report.md").is_file()
    assert main(["predict", "--model", info["checkpoint"], "--out", str(tmp_path / "pred.txt"), "--quiet"]) == 0
    lines = (tmp_path / "pred.txt").read_text().splitlines()
    assert lines[0] == "guid,tag" and len(lines) > 1 and all(l.split(",")[1] in {"positive", "neutral", "negative"}
                                                             for l in lines[1:])
    capsys.readouterr()
    assert main(["confirm", exp, "--top", "1", "--seeds", "1", "--verbose", "0"]) == 0
    assert main(["export", exp, "-o", str(tmp_path / "confirmed.yaml")]) == 0
    assert "confirm" in (tmp_path / "confirmed.yaml").read_text()


def test_a_missing_model_in_the_bucket_is_one_line(s3, capsys):
    from search.cli import main

    assert main(["predict", "--model", f"{s3}/no/such/model", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "not a trained model folder" in err


@pytest.mark.parametrize("where", ["missing bucket", "wrong endpoint"])
def test_unusable_object_storage_is_refused_before_any_trial(s3, demo_cfg, tmp_path, capsys, monkeypatch, where):
    from search.cli import main

    space = write_space(tmp_path / "space.yaml", demo_cfg.to_dict(), {"train.lr": {"loguniform": [1e-3, 3e-3]}}, {})
    storage = "s3://no-such-mmsa-bucket/rr" if where == "missing bucket" else f"{s3}/rr"
    if where == "wrong endpoint":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    assert main(["search", "--space", str(space), "--num-samples", "1", "--name", "x", "--storage", storage]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]  # (a new state key is noted)
    assert len(err) == 1 and err[0].startswith(f"error: --storage {storage}: cannot write there"), err
    err = err[0]
    assert "AWS_ENDPOINT_URL" in err


# ---- the folder rules on the real S3 server ------------------------------------------------------------------------
def _folder(s3, name):
    import pyarrow.fs as pafs

    from search.trial.object_store import ObjectStoreFolder

    fs, path = pafs.FileSystem.from_uri(f"{s3}/rules/{name}")
    return ObjectStoreFolder(fs, path)


def _best_folder(tmp_path, epoch):
    from search.trial.async_checkpoint import best_name
    from search.trial.checkpoint_retention import METRICS_FILE

    d = tmp_path / best_name(epoch)
    d.mkdir()
    for f, data in (("model.safetensors", b"w" * 1000), ("config.yaml", b"c"), (METRICS_FILE, b"{}")):
        (d / f).write_bytes(data)
    return d


def test_an_upload_cut_short_is_never_whole_and_goes_once_no_writer_is_left(s3, tmp_path):
    """A best folder is whole once its metrics file is up, and that file goes last: `mmsa export` waits for it, and
    retention deletes a folder without it once Tuner.fit has returned (half_written)."""
    from search.trial.async_checkpoint import apply_retention, best_name
    from search.trial.checkpoint_retention import METRICS_FILE

    folder = _folder(s3, "cut")
    folder.upload(_best_folder(tmp_path, 2), best_name(2))
    assert folder.whole(best_name(2))

    class Killed(Exception):
        pass

    def kill():
        raise Killed

    with pytest.raises(Killed):
        folder.upload(_best_folder(tmp_path, 3), best_name(3), between=kill)
    assert folder.exists(best_name(3)) and not folder.whole(best_name(3))  # one file up, not the metrics
    assert not folder.exists(f"{best_name(3)}/{METRICS_FILE}")
    apply_retention(folder, keep_best=True)  # a worker may still be writing it
    assert folder.exists(best_name(3))
    apply_retention(folder, keep_best=True, half_written=True)
    assert folder.names("mmsa_best_epoch_") == [best_name(2)]


def test_an_emptied_staging_folder_is_not_uploaded_as_a_state(s3, tmp_path):
    folder = _folder(s3, "empty")
    (tmp_path / "gone").mkdir()
    with pytest.raises(OSError, match="incomplete"):
        folder.upload(tmp_path / "gone", "mmsa_state/epoch_000001")
    assert not folder.exists("mmsa_state/epoch_000001")


def test_a_pinned_folder_is_kept_and_an_unpinned_one_deleted(s3, tmp_path):
    from search.trial.async_checkpoint import apply_retention, best_name
    from search.trial.checkpoint_retention import PIN_FILE

    folder = _folder(s3, "pin")
    for e in (1, 2):
        folder.upload(_best_folder(tmp_path, e), best_name(e))
    folder.write(f"{best_name(1)}/{PIN_FILE}", b"{}")
    apply_retention(folder, keep_best=False)
    assert folder.names("mmsa_best_epoch_") == [best_name(1)]


def test_fetch_model_takes_single_objects_only(s3, tmp_path):
    """A `model.safetensors` that is a prefix (a folder of objects) is not copied recursively into the local folder."""
    from data_pipeline.errors import UserError
    from search.experiment.storage import fetch_model

    folder = _folder(s3, "model")
    folder.write("model.safetensors/inner", b"x")
    folder.write("config.yaml", b"c")
    assert folder.exists("model.safetensors")  # a prefix, listed like a folder
    (tmp_path / "m").mkdir()
    with pytest.raises(UserError, match="not a trained model folder"):
        fetch_model(f"{s3}/rules/model", tmp_path / "m")
    assert list((tmp_path / "m").iterdir()) == []


def test_storage_that_cannot_answer_gets_the_safe_answer_or_an_error(tmp_path):
    """A real S3 client pointed at a port nobody listens on: pinned/whole say True (nothing deleted on a blip), a
    listing is empty, and where neither answer is safe (has the driver judged this trial ended?) the error is raised
    after asking again, so Ray retries the trial instead of training from a deleted state or ending it early."""
    import pyarrow.fs as pafs

    from search.trial.object_store import ObjectStoreFolder

    fs = pafs.S3FileSystem(access_key="x", secret_key="x", region="us-east-1", scheme="http",
                           endpoint_override=f"127.0.0.1:{_free_port()}", connect_timeout=0.5, request_timeout=0.5,
                           retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
    folder = ObjectStoreFolder(fs, "bucket/trial_x")
    from search.trial.pins import pinned

    assert pinned(fs, folder.at("mmsa_best_epoch_000001")) and folder.whole("mmsa_best_epoch_000001")
    assert not folder.exists("ended.json") and folder.names() == []
    from search.trial.async_checkpoint import apply_retention

    assert apply_retention(folder, keep_best=True) is False  # not seen gone: the next trial end tries it again
    t0 = time.monotonic()
    with pytest.raises(OSError):
        folder.exists("ended.json", on_error=None)
    assert time.monotonic() - t0 >= 3  # asked three times, 1 s and 2 s apart


def test_a_full_staging_disk_is_named_with_what_to_do(s3, tmp_path, monkeypatch):
    """A trial on object storage stages its states on the worker's disk ($TMPDIR): a full one (a real 6 MiB tmpfs;
    the state needs more) fails the trial (Ray retries it) with an error naming that disk and TMPDIR, not torch's
    "[enforce fail at inline_container.cc] unexpected pos"; on local storage it is the plain ENOSPC."""
    import errno

    import torch

    import search.trial.async_checkpoint as ac
    from conftest import tmpfs
    from search.trial.async_checkpoint import AsyncCheckpointer
    from test_async_checkpoint import FakeTrainer

    monkeypatch.setattr(ac, "save_config", lambda cfg, path: path.write_text("{}"))
    for remote in (True, False):
        with tmpfs(tmp_path / f"stage{remote}", "6m") as mnt:
            t = FakeTrainer()
            t.model = torch.nn.Sequential(torch.nn.Linear(3, 1000), torch.nn.Linear(1000, 1000))  # 4 MB; AdamW: 8 MB more
            t.optimizer = torch.optim.AdamW(t.model.parameters(), lr=0.1)
            t.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(t.optimizer)
            bucket = _folder(s3, "full") if remote else None
            ck = AsyncCheckpointer(t, mnt, every=1, remote=bucket)
            with pytest.raises(OSError) as e:
                for epoch in (1, 2):
                    t.step()
                    t.epoch = epoch
                    t.history.append({"epoch": epoch, "val_loss": 1.0 / epoch})
                    ck.after_epoch({"epoch": epoch, "val_loss": 1.0 / epoch, "best_val_loss": 1.0 / epoch})
                    ck.pointer(epoch, tmp_path / f"p{remote}{epoch}")
            assert e.value.errno == errno.ENOSPC
            if remote:
                assert "worker's local disk is full" in str(e.value) and "set TMPDIR" in str(e.value)
            else:
                assert "No space left on device" in str(e.value) and "TMPDIR" not in str(e.value)
            ck.pool.shutdown(wait=True)


@pytest.mark.parametrize("planted", ["../../../../escape.txt", "sub/inner.txt", "..hidden/x", ".profile"])
def test_a_planted_key_in_a_state_is_refused_not_written_outside(s3, tmp_path, planted):
    """Anyone who can write to the bucket can add keys under a state a pointer names: a key that is not one plain file
    name fails the load (Ray retries, then the trial errors), and nothing is written outside the staging folder."""
    import boto3

    folder = _folder(s3, "planted")
    folder.write("mmsa_state/epoch_000001/model.safetensors", b"w")
    bucket, _, prefix = folder.path.partition("/")  # a raw key, as any S3 client writes it (pyarrow normalises "..")
    boto3.client("s3").put_object(Bucket=bucket, Key=f"{prefix}/mmsa_state/epoch_000001/{planted}", Body=b"planted")
    local = tmp_path / "stage" / "deep" / "state"
    with pytest.raises(OSError, match="not loaded"):
        folder.download("mmsa_state/epoch_000001", local)
    assert [p for p in tmp_path.rglob("*") if p.is_file() and p.read_bytes() == b"planted"] == []
    folder.delete("mmsa_state")
    folder.write("mmsa_state/epoch_000002/model.safetensors", b"w")
    folder.write("mmsa_state/epoch_000002/trainer_state.pt", b"s")
    got = folder.download("mmsa_state/epoch_000002", local)
    assert sorted(p.name for p in got.iterdir()) == ["model.safetensors", "trainer_state.pt"]


def test_export_copy_on_object_storage(s3):
    """search/trial/exported.py on S3: a server-side copy of what predict reads, which outlives the original and
    is named again by a later export (never deleted or rewritten); a source being deleted is refused."""
    import pyarrow.fs as pafs

    from search.trial import exported
    from search.trial.checkpoint_retention import METRICS_FILE

    exp = f"{s3}/exported-test"
    fs, base = pafs.FileSystem.from_uri(exp)
    files = {"model.safetensors": b"w" * 100, "config.yaml": b"c", METRICS_FILE: b"{}"}
    for folder in ("trial_a/mmsa_best_epoch_000002", "trial_a/half"):
        for n, b in {**files, "trainer_state.pt": b"s"}.items():
            with fs.open_output_stream(f"{base}/{folder}/{n}") as f:
                f.write(b)
    got = exported.keep_copy(exp, f"{exp}/trial_a/mmsa_best_epoch_000002", "trial_a-best")
    assert got == f"{exp}/exported/trial_a-best"
    fs.delete_dir(f"{base}/trial_a/mmsa_best_epoch_000002")
    listed = {i.base_name for i in fs.get_file_info(pafs.FileSelector(f"{base}/exported/trial_a-best"))}
    assert listed == set(files)  # not the training state
    for n, b in files.items():
        with fs.open_input_stream(f"{base}/exported/trial_a-best/{n}") as f:
            assert f.read() == b
    assert exported.keep_copy(exp, f"{exp}/trial_a/mmsa_best_epoch_000002", "trial_a-best") == got  # source gone
    fs.delete_file(f"{base}/trial_a/half/model.safetensors")
    with pytest.raises(FileNotFoundError):
        exported.keep_copy(exp, f"{exp}/trial_a/half", "half")
    assert fs.get_file_info(f"{base}/exported/half/{METRICS_FILE}").type == pafs.FileType.NotFound
