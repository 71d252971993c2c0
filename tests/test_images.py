import io

import numpy as np
import pytest
from PIL import Image

from data_pipeline.images import BadImage, inspect_image, load_image


def _save(path, im, fmt="JPEG", **kw):
    im.save(path, fmt, **kw)
    return path


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK", "LA", "I;16"])
def test_modes_become_rgb(tmp_path, mode):
    base = Image.new("RGB", (50, 30), (200, 40, 10))
    im = base.convert(mode) if mode != "I;16" else Image.new("I;16", (50, 30), 1000)
    fmt = "PNG" if mode in ("RGBA", "P", "LA", "I;16") else "JPEG"
    p = _save(tmp_path / "x.jpg", im, fmt)  # PNG bytes behind a .jpg name included
    arr = load_image(p, 16)
    assert arr.shape == (3, 16, 16) and arr.dtype == np.uint8
    assert inspect_image(p).format == fmt


def test_rgba_transparent_is_white(tmp_path):
    p = _save(tmp_path / "t.jpg", Image.new("RGBA", (10, 10), (0, 0, 0, 0)), "PNG")
    assert load_image(p, 8).min() == 255


def test_exif_orientation_applied(tmp_path):
    im = Image.new("RGB", (60, 20), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 10, 20))  # white stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    p = _save(tmp_path / "o.jpg", im, exif=exif.tobytes(), quality=95)
    info = inspect_image(p)
    assert info.size == (20, 60)
    arr = load_image(p, 20)
    assert arr[:, :3, :].mean() > 200 and arr[:, -3:, :].mean() < 50  # stripe now on top


def test_bad_pictures(tmp_path):
    with pytest.raises(BadImage, match="missing"):
        load_image(tmp_path / "none.jpg", 8)
    (tmp_path / "z.jpg").write_bytes(b"")
    with pytest.raises(BadImage, match="zero-byte"):
        load_image(tmp_path / "z.jpg", 8)
    (tmp_path / "n.jpg").write_bytes(b"hello, not a picture")
    with pytest.raises(BadImage, match="not an image"):
        load_image(tmp_path / "n.jpg", 8)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(BadImage, match="cannot be decoded"):
        load_image(tmp_path / "t.jpg", 8)


def test_decompression_bomb_refused(tmp_path, monkeypatch):
    p = _save(tmp_path / "big.jpg", Image.new("RGB", (100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # 10,000 pixels: between 1x and 2x the limit
    with pytest.raises(BadImage, match="decompression-bomb limit"):
        load_image(p, 8)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # over 2x: Pillow's own error
    with pytest.raises(BadImage, match="decompression-bomb limit"):
        load_image(p, 8)
