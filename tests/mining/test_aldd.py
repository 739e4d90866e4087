import logging
import math

import numpy as np
import pytest
import torch

from mining.aldd import aldd_scores, binary_entropy, class_weights


def H(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def maps_for(img: int = 64, batch: int = 2, classes: int = 3, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, classes, img // s, img // s, generator=g) for s in (8, 16, 32)]


def test_binary_entropy_values_and_edges():
    h = binary_entropy(torch.tensor([0.5, 0.1, 0.0, 1.0]))
    assert torch.allclose(h, torch.tensor([math.log(2), H(0.1), 0.0, 0.0]), atol=2e-5)


def test_single_level_hand_computed():
    # one 1x3 level: the 3x3 windows (padding excluded) cover {0,1}, {0,1,2}, {1,2}; cells = the grid
    a, b, c = 0.5, 0.1, 0.7
    gaps = [H((a + b) / 2) - (H(a) + H(b)) / 2,
            H((a + b + c) / 3) - (H(a) + H(b) + H(c)) / 3,
            H((b + c) / 2) - (H(b) + H(c)) / 2]
    score = aldd_scores([torch.tensor([[[[a, b, c]]]])])
    assert score.shape == (1,)
    assert score.item() == pytest.approx(sum(gaps) / 3, rel=1e-5)


def test_two_levels_hand_computed():
    # fine 2x2: every window covers the whole grid, mean 0.3 -> gap H(0.3) - H(0.1) everywhere
    # (H(0.9) = H(0.1)); the coarse 1x1 level has gap 0; one cell: max of the sum
    fine = torch.tensor([[[[0.9, 0.1], [0.1, 0.1]]]])
    coarse = torch.tensor([[[[0.3]]]])
    expected = H(0.3) - H(0.1)
    assert aldd_scores([fine, coarse]).item() == pytest.approx(expected, rel=1e-5)
    assert aldd_scores([coarse, fine]).item() == pytest.approx(expected, rel=1e-5)  # any level order


def test_constant_map_scores_zero():
    maps = [torch.full((2, 4, 64 // s, 64 // s), 0.37) for s in (8, 16, 32)]
    assert torch.allclose(aldd_scores(maps), torch.zeros(2), atol=1e-6)


def test_step_edge_hand_computed():
    # 8x8 fine map, left half 0.05, right half 0.95; coarse levels flat. Windows at columns 3 and 4
    # hold one third / two thirds of 0.95: gap H(0.35) - H(0.05) (H(0.65) = H(0.35), H(0.95) = H(0.05));
    # elsewhere 0. Every one of the 2x2 coarse cells contains column 3 or 4, so the mean of the
    # cell maxima is that gap.
    fine = torch.full((1, 1, 8, 8), 0.05)
    fine[..., 4:] = 0.95
    flat = [torch.full((1, 1, 4, 4), 0.05), torch.full((1, 1, 2, 2), 0.05)]
    assert aldd_scores([fine, *flat]).item() == pytest.approx(H(0.35) - H(0.05), rel=1e-4)


def test_class_weights_applied():
    maps = maps_for(classes=2)
    per_class = [aldd_scores([m[:, c:c + 1] for m in maps]) for c in range(2)]
    w = torch.tensor([2.0, 0.5])
    assert torch.allclose(aldd_scores(maps, w), 2.0 * per_class[0] + 0.5 * per_class[1], rtol=1e-5)
    assert torch.allclose(aldd_scores(maps), per_class[0] + per_class[1], rtol=1e-5)
    with pytest.raises(ValueError):
        aldd_scores(maps, torch.ones(3))
    with pytest.raises(ValueError):
        aldd_scores(maps, torch.tensor([1.0, float("nan")]))


def test_batch_split_invariance():
    maps = maps_for(img=128, batch=4, classes=5, seed=1)
    whole = aldd_scores(maps)
    single = torch.cat([aldd_scores([m[i:i + 1] for m in maps]) for i in range(4)])
    assert whole.shape == (4,)
    assert torch.allclose(whole, single, rtol=0, atol=1e-6)


def test_chunking_does_not_change_scores(monkeypatch):
    import mining.aldd as aldd
    maps = maps_for(img=64, batch=3, classes=7, seed=2)
    whole = aldd_scores(maps)
    monkeypatch.setattr(aldd, "CPU_CHUNK_ELEMENTS", 2 * 64)  # 2 classes of one image per chunk
    assert torch.allclose(aldd_scores(maps), whole, rtol=0, atol=1e-6)


def test_non_contiguous_views_like_the_adapter():
    raw = torch.rand(2, 4 + 3, 64 + 16 + 4)  # (B, 4+C, anchors), levels 8x8, 4x4, 2x2
    views = [raw[:, 4:, 0:64].unflatten(2, (8, 8)), raw[:, 4:, 64:80].unflatten(2, (4, 4)),
             raw[:, 4:, 80:84].unflatten(2, (2, 2))]
    assert torch.allclose(aldd_scores(views), aldd_scores([v.contiguous() for v in views]))


def test_scores_do_not_depend_on_the_maps_memory_layout():
    """Bit for bit whatever the layout: the whole head's views, contiguous maps, the class branch's channels_last
    maps (a float32 convolution's last bits depend on the layout it runs on; 8 classes on 64x64 show it)."""
    torch.manual_seed(0)
    raw = torch.rand(2, 4 + 8, 64 * 64 + 32 * 32 + 16 * 16) ** 4
    views, start = [], 0
    for side in (64, 32, 16):
        views.append(raw[:, 4:, start:start + side * side].unflatten(2, (side, side)))
        start += side * side
    scores = aldd_scores(views)
    assert torch.equal(scores, aldd_scores([v.contiguous() for v in views]))
    assert torch.equal(scores, aldd_scores([v.contiguous(memory_format=torch.channels_last) for v in views]))


def test_finite_on_exact_zeros_ones_and_nan():
    maps = maps_for()
    maps[0][0, 0] = 0.0
    maps[0][0, 1, ::2] = 1.0
    maps[1][1, 2, 0, 0] = float("nan")
    s = aldd_scores(maps)
    assert torch.isfinite(s).all() and (s >= 0).all()


def test_half_precision_input():
    maps = maps_for()
    assert torch.allclose(aldd_scores([m.half() for m in maps]), aldd_scores([m.half().float() for m in maps]))


def test_no_classes_and_no_images():
    assert torch.equal(aldd_scores([torch.rand(2, 0, 8, 8), torch.rand(2, 0, 4, 4)]), torch.zeros(2))
    assert aldd_scores([torch.rand(0, 3, 8, 8)]).shape == (0,)


def test_levels_that_do_not_nest_rejected():
    with pytest.raises(ValueError):
        aldd_scores([torch.rand(1, 1, 5, 5), torch.rand(1, 1, 2, 2)])
    with pytest.raises(ValueError):
        aldd_scores([])
    with pytest.raises(ValueError):
        aldd_scores([torch.rand(1, 2, 4, 4), torch.rand(1, 3, 2, 2)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    maps = maps_for(img=128, batch=4, classes=6)
    w = torch.rand(6)
    gpu = aldd_scores([m.cuda() for m in maps], w.cuda())
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), aldd_scores(maps, w), rtol=1e-5)


def test_class_weights_padding_truncation_and_empty(caplog):
    assert np.array_equal(class_weights((), 3), [1.0, 1.0, 1.0])
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(class_weights((2.0, 0.5), 4), [2.0, 0.5, 1.0, 1.0])
    assert "padding" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(class_weights((1.0, 0.1, 0.2), 2), [1.0, 0.1])
    assert "ignoring" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(class_weights((1.0, 0.1), 2), [1.0, 0.1])
    assert caplog.text == ""
    assert class_weights((1.0,), 3).dtype == np.float64
