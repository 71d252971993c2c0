"""Pictures -> RGB uint8 CHW arrays at a fixed size. Decoded once, at preprocessing time."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

class BadImage(Exception):
    """A picture that cannot be used; the message says why."""


@dataclass(frozen=True)
class ImageInfo:
    format: str  # what the bytes are (JPEG, PNG, ...), whatever the file name says
    mode: str  # Pillow mode before conversion (RGB, L, RGBA, P, CMYK, ...)
    size: tuple[int, int]  # (width, height) after EXIF orientation


def _open_rgb(path: Path) -> tuple[Image.Image, ImageInfo]:
    if not path.is_file():
        raise BadImage("missing")
    if path.stat().st_size == 0:
        raise BadImage("zero-byte file")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its pixel limit; refuse both the same way.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt, mode = im.format or "?", im.mode
                im.load()  # truncated files fail here, not later in a training step
                im = ImageOps.exif_transpose(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"larger than Pillow's decompression-bomb limit ({Image.MAX_IMAGE_PIXELS} pixels)") from None
    except UnidentifiedImageError:
        raise BadImage("not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"cannot be decoded ({e})") from None
    info = ImageInfo(fmt, mode, im.size)
    if im.mode.startswith("I;16") or (im.mode == "I" and fmt == "PNG"):
        im = _sixteen_bit_to_l(im)
    elif im.mode in ("I", "F") or im.mode.startswith(("I;", "F;")):
        # 32-bit integer or float samples have no agreed white level: scaling them is a guess, so refuse.
        raise BadImage(f"{mode} pixels ({'32-bit integer' if mode.startswith('I') else 'floating point'}) are not "
                       "supported; save the picture as 8-bit RGB (JPEG or PNG)")
    try:
        im = _to_rgb(im)
    except (OSError, ValueError) as e:
        raise BadImage(f"mode {mode} cannot be converted to RGB ({e})") from None
    return im, info


def _sixteen_bit_to_l(im: Image.Image) -> Image.Image:
    """16-bit grey (PNG/TIFF) -> 8-bit grey, scaled by 255/65535. Pillow's convert clips at 255 instead, which
    turns a normal 16-bit picture almost entirely white."""
    a = np.asarray(im, dtype=np.uint32 if im.mode == "I" else None).astype(np.float64)
    return Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8), "L")


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent pixels become white, as a viewer would show them, not black.
        rgba = im.convert("RGBA")
        im = Image.new("RGB", rgba.size, (255, 255, 255))
        im.paste(rgba, mask=rgba.getchannel("A"))
    elif im.mode != "RGB":
        im = im.convert("RGB")
    return im


def inspect_image(path: str | Path) -> ImageInfo:
    """Decode fully (to catch truncation) and describe the picture; raises BadImage."""
    return _open_rgb(Path(path))[1]


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Decode, orient, convert to RGB and resize to size x size; returns uint8 (3, size, size)."""
    im, _ = _open_rgb(Path(path))
    im = im.resize((size, size), Image.BILINEAR)
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))
