import numpy as np
import torch

from data_pipeline.augment import augment, normalize
from data_pipeline.batches import batch_indices, collate, padded_tokens, prefetch
from data_pipeline.preprocess import Prepared


def _prepared(n=100, width=20, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, width + 1, n).astype(np.int32)
    ids = np.zeros((n, width), np.int32)
    for i, L in enumerate(lengths):
        ids[i, :L] = rng.integers(5, 50, L)
    return Prepared(np.array([str(i) for i in range(n)]), ids, lengths,
                    rng.integers(0, 255, (n, 3, 8, 8), dtype=np.uint8), rng.integers(0, 3, n).astype(np.int64))


def test_batches_cover_every_sample_once():
    lengths = np.random.default_rng(0).integers(1, 60, 1000)
    for bucket in (False, True):
        b = batch_indices(lengths, 32, shuffle=True, bucket=bucket, seed=3)
        assert sorted(np.concatenate(b).tolist()) == list(range(1000))
        assert [len(x) for x in b].count(32) == 31
        assert all(np.array_equal(x, y) for x, y in zip(b, batch_indices(lengths, 32, shuffle=True, bucket=bucket, seed=3)))
        assert not all(np.array_equal(x, y) for x, y in zip(b, batch_indices(lengths, 32, shuffle=True, bucket=bucket, seed=4)))


def test_bucketing_cuts_padding():
    lengths = np.random.default_rng(0).integers(5, 60, 2000)
    plain = padded_tokens(lengths, batch_indices(lengths, 32, shuffle=True, bucket=False))
    bucketed = padded_tokens(lengths, batch_indices(lengths, 32, shuffle=True, bucket=True))
    assert bucketed < 0.7 * plain and bucketed >= lengths.sum()


def test_collate_pads_to_batch_longest():
    p = _prepared()
    idx = np.array([5, 1, 9])
    b = collate(p, idx)
    width = int(p.lengths[[1, 5, 9]].max())
    assert b["input_ids"].shape == (3, width) and b["input_ids"].dtype == torch.int64
    assert b["attention_mask"].sum(1).tolist() == p.lengths[[1, 5, 9]].tolist()
    assert b["index"].tolist() == [1, 5, 9] and b["images"].dtype == torch.uint8
    assert torch.equal(b["input_ids"][b["attention_mask"] == 0], torch.zeros(int((b["attention_mask"] == 0).sum()), dtype=torch.int64))


def test_prefetch_keeps_order_and_raises():
    assert list(prefetch(iter(range(50)))) == list(range(50))

    def boom():
        yield 1
        raise ValueError("x")

    out = []
    try:
        for v in prefetch(boom()):
            out.append(v)
    except ValueError:
        out.append("raised")
    assert out == [1, "raised"]


def test_normalize_and_augment():
    from torchvision import transforms

    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    expected = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(x.float() / 255)
    assert torch.allclose(normalize(x), expected, atol=1e-5)  # same as the lab's ToTensor + Normalize
    img = torch.zeros(2, 3, 16, 16)
    img[:, :, :, :4] = 1.0  # bright stripe on the left
    g = torch.Generator().manual_seed(0)
    flipped = augment(img, hflip=1.0, rotation_deg=0.0, generator=g)
    assert flipped[:, :, :, -4:].mean() > 0.9 and flipped[:, :, :, :4].mean() < 0.1
    same = augment(img, hflip=0.0, rotation_deg=0.0, generator=g)
    assert torch.allclose(same, img, atol=1e-5)
    r1 = augment(img, 0.5, 10.0, torch.Generator().manual_seed(5))
    r2 = augment(img, 0.5, 10.0, torch.Generator().manual_seed(5))
    assert torch.equal(r1, r2) and not torch.allclose(r1, img)
