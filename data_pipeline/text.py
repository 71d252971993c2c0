"""Tweet text bytes -> str. About one real file in four is not UTF-8 (GB18030 punctuation, cp1252)."""
from __future__ import annotations

from charset_normalizer import from_bytes

ENCODINGS = ("utf-8", "gb18030")


def decode_text(raw: bytes) -> tuple[str, str]:
    """Return (stripped text, how it was decoded). Never raises: the last resort is latin-1."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    for enc in ENCODINGS:
        try:
            return raw.decode(enc).strip(), enc
        except UnicodeDecodeError:
            pass
    best = from_bytes(raw).best()
    if best is not None:
        return str(best).strip(), f"detected:{best.encoding}"
    return raw.decode("latin-1").strip(), "latin-1"
