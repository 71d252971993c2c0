"""Datasets that are valid file by file but wrong as a whole, pictures beyond 8-bit RGB, and files that leave data/:
each gets a clear answer (refusal or warning), never a silently wrong result."""
import numpy as np
import pytest
from PIL import Image

from conftest import write_dataset
from data_pipeline.dataset import MIN_VAL_ROWS
from data_pipeline.images import BadImage, load_image
from search.cli import main


def _train_args(root, tiny_dir, out):
    return ["train", "--data", str(root), "--out", str(out), "--text-model", str(tiny_dir / "bert-tiny"),
            "--image-arch", "resnet10", "--image-weights", str(tiny_dir / "resnet10.safetensors"), "--image-size", "32",
            "--max-length", "16", "--epochs", "1", "--quiet"]


def test_tiny_dataset_refused_with_the_minimum(tmp_path, tiny_dir, capsys):
    # 3 rows gave an empty validation set, `val_loss 0.0000`, and won searches.
    root = write_dataset(tmp_path / "d", [("1", "positive"), ("2", "negative"), ("3", "neutral")])
    assert main(_train_args(root, tiny_dir, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train.txt: 3 usable labelled rows" in err
    assert f"the validation set has 0 sample(s) (val_fraction 0.2); at least {MIN_VAL_ROWS} are needed" in err
    assert not (tmp_path / "run").exists()
    assert main(["check-data", str(root)]) == 1
    out = capsys.readouterr().out
    assert "at least 10 are needed" in out and "only one row is labelled positive" in out and "NOT USABLE" in out


def test_missing_and_single_row_classes_warned(tmp_path, capsys):
    rows = [(str(i), "positive") for i in range(60)] + [("100", "negative")]
    root = write_dataset(tmp_path / "d", rows)
    assert main(["check-data", str(root)]) == 0  # usable, but said
    out = capsys.readouterr().out
    assert "warning: no row is labelled neutral: the model will never predict it." in out
    assert "warning: only one row is labelled negative" in out


def _png16(path, value):
    a = np.full((20, 30), value, dtype=np.uint16)
    Image.fromarray(a).save(path)  # a real 16-bit greyscale PNG (mode I;16)
    assert Image.open(path).mode in ("I;16", "I")


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    _png16(tmp_path / "mid.png", 32768)  # mid-grey in 16 bits; Pillow's convert("RGB") made it white
    px = load_image(tmp_path / "mid.png", 16)
    assert px.dtype == np.uint8 and abs(int(px.mean()) - 128) <= 1
    _png16(tmp_path / "dark.png", 2570)
    assert abs(int(load_image(tmp_path / "dark.png", 16).mean()) - 10) <= 1


def test_float_and_32_bit_pictures_refused(tmp_path):
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(BadImage, match="floating point.*save the picture as 8-bit RGB"):
        load_image(tmp_path / "f.tif", 16)


def test_symlink_out_of_data_refused(tmp_path, capsys):
    root = write_dataset(tmp_path / "d", [(str(i), "positive" if i % 2 else "negative") for i in range(60)])
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "data" / "5.txt").unlink()
    (root / "data" / "5.txt").symlink_to(secret)  # as with /etc/passwd
    (root / "data" / "7.jpg").unlink()
    (root / "data" / "7.jpg").symlink_to("/dev/zero")  # would never end
    assert main(["check-data", str(root)]) == 1
    out = capsys.readouterr().out
    assert "guid 5: 5.txt: links to" in out and "secret.txt, outside" in out
    assert "guid 7: 7.jpg: links to /dev/zero, outside" in out
    # a link inside data/ is fine
    (root / "data" / "5.txt").unlink()
    (root / "data" / "5.txt").symlink_to(root / "data" / "6.txt")
    (root / "data" / "7.jpg").unlink()
    (root / "data" / "7.jpg").symlink_to(root / "data" / "8.jpg")
    assert main(["check-data", str(root)]) == 0


def test_check_data_flags_validated(tmp_path, demo_dir, capsys):
    assert main(["check-data", str(demo_dir), "--val-fraction", "nan"]) == 2
    assert "data.val_fraction: expected a finite number" in capsys.readouterr().err
    assert main(["check-data", str(demo_dir), "--val-fraction", "5"]) == 2
    assert "data.val_fraction: 5.0 must be <= 0.9" in capsys.readouterr().err
