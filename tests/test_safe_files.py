"""data_pipeline/safe_files.py: no link below the root is followed, for reads and writes; names from files stay
inside; temporary files are created exclusively."""
import os

import pytest

from data_pipeline import safe_files as sf
from data_pipeline.atomic import replace_dir, write_file


@pytest.fixture
def tree(tmp_path):
    root, victim = tmp_path / "exp", tmp_path / "victim"
    (root / "trial_a").mkdir(parents=True)
    victim.mkdir()
    (victim / "secret.txt").write_text("SECRET-MARKER")
    return root, victim


def test_plain_read_write_round_trip(tree):
    root, _ = tree
    sf.write_bytes(root / "trial_a" / "x.json", b"{}", root)
    assert sf.read_bytes(root / "trial_a" / "x.json", root) == b"{}"
    sf.write_bytes(root / "new" / "deeper" / "y", b"1", root)  # folders below the root are created
    assert (root / "new" / "deeper" / "y").read_bytes() == b"1"
    assert [p.name for p in (root / "trial_a").iterdir()] == ["x.json"]  # no temporary file left


def test_link_as_the_file_is_neither_read_nor_written_through(tree):
    root, victim = tree
    (root / "report.md").symlink_to(victim / "secret.txt")
    assert sf.read_bytes(root / "report.md", root) is None
    with pytest.raises(sf.UnsafePath):
        sf.open_read(root / "report.md", root)
    sf.write_bytes(root / "report.md", b"new", root)  # the rename replaces the link itself
    assert (victim / "secret.txt").read_text() == "SECRET-MARKER"
    assert not (root / "report.md").is_symlink() and (root / "report.md").read_bytes() == b"new"


@pytest.mark.parametrize("how", ["dir", "file"])
def test_link_as_a_folder_below_the_root_is_refused(tree, how):
    root, victim = tree
    (root / "trial_b").symlink_to(victim)
    target = root / "trial_b" / ("secret.txt" if how == "file" else "new.json")
    assert sf.read_bytes(root / "trial_b" / "secret.txt", root) is None
    with pytest.raises(sf.UnsafePath):
        sf.write_bytes(target, b"x", root)
    with pytest.raises(sf.UnsafePath):
        sf.make_dirs(root / "trial_b" / "sub", root)
    assert sorted(p.name for p in victim.iterdir()) == ["secret.txt"]
    assert not sf.is_dir(root / "trial_b", root) and not sf.is_file(root / "trial_b" / "secret.txt", root)


def test_planted_temporary_files_are_not_written_through(tree):
    root, victim = tree
    for name in ("x.json.tmp", ".x.json.tmp"):
        (root / name).symlink_to(victim / "secret.txt")
    write_file(root / "x.json", b"data", root=root)
    assert (victim / "secret.txt").read_text() == "SECRET-MARKER"
    assert (root / "x.json").read_bytes() == b"data"


def test_fifo_and_devices_are_not_read(tree):
    root, _ = tree
    os.mkfifo(root / "result.json")  # a blocking read would hang `mmsa status`
    assert sf.read_bytes(root / "result.json", root) is None
    assert sf.read_bytes(root / "big", root) is None
    (root / "big").write_bytes(b"x" * 100)
    assert sf.read_bytes(root / "big", root, limit=10) is None
    with open(root / "sparse", "wb") as f:
        f.truncate(sf.MAX_READ + 1)  # costs an attacker nothing; read whole it would take the memory
    assert sf.read_bytes(root / "sparse", root) is None


def test_the_root_itself_may_be_a_link(tmp_path):
    """~/ray_results may be a link to a bigger disk: the root is the user's choice and is followed."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    sf.write_bytes(tmp_path / "link" / "exp" / "f", b"1", tmp_path / "link")
    assert sf.read_bytes(tmp_path / "link" / "exp" / "f", tmp_path / "link") == b"1"
    assert (real / "exp" / "f").read_bytes() == b"1"


@pytest.mark.parametrize("name", ["../../victim", "/etc/passwd", "a/../../b", "..", "", "trial_b/x", "x\0y", 3])
def test_names_from_files_must_stay_inside(tree, name):
    root, victim = tree
    (root / "trial_b").symlink_to(victim)
    assert sf.inside(root, name) is None


def test_names_that_stay_inside(tree):
    root, _ = tree
    assert sf.inside(root, "trial_a") == root / "trial_a"
    assert sf.inside(root, "trial_a/checkpoint_000001") == root / "trial_a" / "checkpoint_000001"  # may not exist yet


def test_paths_outside_the_root_are_refused(tree):
    root, victim = tree
    with pytest.raises(sf.UnsafePath):
        sf.write_bytes(victim / "x", b"1", root)
    with pytest.raises(sf.UnsafePath):
        sf.write_bytes(str(root) + "/../victim/x", b"1", root)
    assert sorted(p.name for p in victim.iterdir()) == ["secret.txt"]


def test_replace_dir_replaces_a_planted_link_and_never_writes_through_it(tree):
    root, victim = tree
    (root / "ck").symlink_to(victim)
    (root / ".ck.old").symlink_to(victim)
    replace_dir(root / "ck", lambda d: (d / "w").write_bytes(b"w"), root)
    assert (root / "ck" / "w").read_bytes() == b"w" and not (root / "ck").is_symlink()
    replace_dir(root / "ck", lambda d: (d / "w").write_bytes(b"v"), root)  # an older real folder is replaced
    assert (root / "ck" / "w").read_bytes() == b"v"
    assert sorted(p.name for p in victim.iterdir()) == ["secret.txt"]
    assert sorted(p.name for p in root.iterdir()) == ["ck", "trial_a"]


def test_replace_dir_failure_leaves_the_old_version(tree):
    root, _ = tree
    replace_dir(root / "ck", lambda d: (d / "w").write_bytes(b"1"), root)

    def boom(d):
        (d / "w").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        replace_dir(root / "ck", boom, root)
    assert (root / "ck" / "w").read_bytes() == b"1"
    assert sorted(p.name for p in root.iterdir()) == ["ck", "trial_a"]


def test_a_folder_swapped_for_a_link_while_writing_is_never_followed(tree):
    """The race a check-then-open has: another process swaps trial_a for a link to the victim over and over while
    files are written into and read from it."""
    import threading

    root, victim = tree
    stop = threading.Event()

    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    real, link = bytes(root / "trial_a"), bytes(root / "trial_a.swap")
    (root / "trial_a.swap").symlink_to(victim)

    if libc.renameat2(-100, real, -100, link, 2) != 0 or libc.renameat2(-100, real, -100, link, 2) != 0:
        pytest.skip("renameat2(RENAME_EXCHANGE) not supported here")
    swaps = [0]

    def swap():  # renameat2(RENAME_EXCHANGE): trial_a is always there, a folder or the link, never missing
        while not stop.is_set():
            swaps[0] += libc.renameat2(-100, real, -100, link, 2) == 0

    t = threading.Thread(target=swap)
    t.start()
    read = []
    try:
        for i in range(3000):
            try:
                sf.write_bytes(root / "trial_a" / "x.json", b"%d" % i, root)
            except OSError:
                pass  # refused (the link) or gone (mid-swap): both fine
            read.append(sf.read_bytes(root / "trial_a" / "secret.txt", root))
    finally:
        stop.set()
        t.join()
    assert swaps[0] > 1000
    assert sorted(p.name for p in victim.iterdir()) == ["secret.txt"]
    assert not any(read)
