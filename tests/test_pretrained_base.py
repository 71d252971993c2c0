"""`mmsa make-tiny-pretrained --size base`: the lab's real architectures with random weights, loaded by the same
from_pretrained / state-dict code as the downloaded ones."""
import json

import pytest

from model.backbones import check_backbones, load_image_backbone, load_text_backbone
from model.config import Config


@pytest.mark.slow  # writes 530 MB
def test_base_size_is_the_real_architecture(tmp_path):
    from search.cli import main

    assert main(["make-tiny-pretrained", str(tmp_path), "--size", "base"]) == 0
    bert_dir, resnet = tmp_path / "bert-base-random", tmp_path / "resnet50-random.safetensors"
    conf = json.loads((bert_dir / "config.json").read_text())
    assert (conf["hidden_size"], conf["num_hidden_layers"], conf["num_attention_heads"], conf["intermediate_size"],
            conf["vocab_size"]) == (768, 12, 12, 3072, 30522)
    assert len((bert_dir / "vocab.txt").read_text().splitlines()) == 30522
    cfg = Config().with_overrides({"model.text_model": str(bert_dir), "model.image_arch": "resnet50",
                                   "model.image_weights": str(resnet)})
    check_backbones(cfg.model)
    bert = load_text_backbone(bert_dir)
    net, width = load_image_backbone("resnet50", str(resnet))
    n = sum(p.numel() for p in bert.parameters()) + sum(p.numel() for p in net.parameters())
    assert width == 2048 and 130e6 < n < 136e6  # BERT-base 109M + ResNet-50 23.5M (without its classifier)


def test_unknown_size_refused(tmp_path):
    from search.cli import main

    with pytest.raises(SystemExit):
        main(["make-tiny-pretrained", str(tmp_path), "--size", "huge"])
