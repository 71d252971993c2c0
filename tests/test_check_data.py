import subprocess
import sys

from search.cli import main


def test_check_data_real_sample(sample_dir, capsys):
    assert main(["check-data", str(sample_dir)]) == 0
    out = capsys.readouterr().out
    assert "train.txt: 600 rows (positive 358, neutral 63, negative 179)" in out
    assert "test_without_label.txt: 60 rows" in out
    assert "gb18030" in out and "utf-8" in out
    assert "OK: the dataset can be used." in out


def test_check_data_demo(demo_dir, capsys):
    assert main(["check-data", str(demo_dir)]) == 0
    out = capsys.readouterr().out
    assert "train.txt: 400 rows (positive 240, neutral 40, negative 120)" in out
    assert "split (val_fraction 0.2, split_seed 0): train 320, val 80" in out
    for token in ("gb18030", "detected:", "PNG", "RGBA", "CMYK", " L ", " P "):
        assert token in out, token


def test_check_data_lists_bad_files_and_fails(tmp_path, capsys):
    assert main(["make-demo-data", str(tmp_path / "d"), "--n", "40", "--corrupt", "4"]) == 0
    capsys.readouterr()
    assert main(["check-data", str(tmp_path / "d")]) == 1
    out = capsys.readouterr().out
    assert "4 sample(s) cannot be used" in out
    for why in ("missing", "zero-byte file", "not an image Pillow can read", "cannot be decoded"):
        assert why in out
    assert "NOT USABLE" in out


def test_user_errors_have_no_traceback(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "train.txt").write_text("guid,tag\n1.0,positive\n")
    r = subprocess.run([sys.executable, "-m", "search.cli", "check-data", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert "train.txt:2: guid '1.0' is not a plain non-negative integer" in r.stderr
