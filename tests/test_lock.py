"""One writer per experiment (search/experiment/lock.py), on real files: refused while held, taken over when its holder died."""
import json
import socket
import subprocess
import sys
import time

import pytest

from data_pipeline.errors import UserError
from search.experiment import lock as L


def _lease(tmp_path, **kw):
    lease = {"token": "other", "host": socket.gethostname(), "pid": 1, "command": "mmsa search --name x",
             "started": "2026-01-01T00:00:00", "heartbeat": time.time(), **kw}
    (tmp_path / L.LOCK_FILE).write_text(json.dumps(lease))


def test_second_writer_refused_naming_the_holder_then_free_after_release(tmp_path):
    first = L.ExperimentLock(str(tmp_path), "mmsa search --name a").acquire()
    with pytest.raises(UserError, match=r"is in use by `mmsa search --name a` \(pid \d+ on .*mmsa resume"):
        L.ExperimentLock(str(tmp_path), "mmsa resume x").acquire()
    first.release()
    assert not (tmp_path / L.LOCK_FILE).exists()
    with L.ExperimentLock(str(tmp_path), "mmsa resume x"):
        assert json.loads((tmp_path / L.LOCK_FILE).read_text())["command"] == "mmsa resume x"


def test_lease_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lease(tmp_path, pid=dead.pid)
    with L.ExperimentLock(str(tmp_path), "mmsa resume x"):
        pass


def test_other_hosts_lease_counts_until_its_heartbeat_is_stale(tmp_path):
    _lease(tmp_path, host="node-7", pid=12345)
    with pytest.raises(UserError, match="pid 12345 on node-7"):
        L.ExperimentLock(str(tmp_path), "mmsa resume x").acquire()
    _lease(tmp_path, host="node-7", pid=12345, heartbeat=time.time() - L.STALE_S - 1)
    with L.ExperimentLock(str(tmp_path), "mmsa resume x"):
        pass


def test_cut_lease_file_holds_nothing(tmp_path):
    (tmp_path / L.LOCK_FILE).write_text('{"token": "x", "pi')
    with L.ExperimentLock(str(tmp_path), "mmsa resume x"):
        pass


def test_heartbeat_renews_the_lease(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "HEARTBEAT_S", 0.2)
    with L.ExperimentLock(str(tmp_path), "mmsa search --name a"):
        first = json.loads((tmp_path / L.LOCK_FILE).read_text())["heartbeat"]
        time.sleep(1.0)
        assert json.loads((tmp_path / L.LOCK_FILE).read_text())["heartbeat"] > first
