from data_pipeline.text import decode_text


def test_utf8_and_strip():
    assert decode_text("  héllo “world”\n".encode("utf-8")) == ("héllo “world”", "utf-8")


def test_gb18030_left_double_quote():
    text, enc = decode_text(b"\xa1\xb0hello\xa1\xb1 there")
    assert text == "“hello” there" and enc == "gb18030"


def test_cp1252_falls_through_to_detection():
    raw = "“good” café…".encode("cp1252")  # ends in a lone 0x85: invalid GB18030
    text, enc = decode_text(raw)
    assert enc.startswith("detected:") or enc == "latin-1"
    assert "good" in text and "caf" in text


def test_never_crashes_on_junk_and_empty():
    for raw in (b"", b"\xff\xfe\xfd\x80\x81", bytes(range(256)), b"\x00\x00abc", b"\xef\xbb\xbf"):
        text, enc = decode_text(raw)
        assert isinstance(text, str) and enc
    assert decode_text(b"  \n") == ("", "utf-8")


def test_real_sample_gb18030_quote(sample_dir):
    files = [p for p in sorted((sample_dir / "data").glob("*.txt")) if b"\xa1\xb0" in p.read_bytes()]
    assert files, "the sample README promises GB18030 quotes"
    non_utf8 = 0
    for p in files:
        text, enc = decode_text(p.read_bytes())
        assert "“" in text, p
        non_utf8 += enc != "utf-8"
    assert non_utf8 == len(files)
