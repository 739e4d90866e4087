import math

import cv2
import numpy as np
import pytest

from mining import augment
from mining.augment import CUTOUT_OVERLAP, cutout, cutout_patches, hflip, make_views, resize, rotate, rotation_matrix


def image(h=100, w=200):
    return np.random.default_rng(0).integers(1, 256, (h, w, 3), dtype=np.uint8)


def test_hflip():
    img = image()
    view, boxes = hflip(img, np.array([[10.5, 20, 30, 40]]))
    assert np.array_equal(view[:, 0], img[:, -1]) and view.shape == img.shape
    assert np.allclose(boxes, [[170, 20, 189.5, 40]]) and boxes.dtype == np.float32


def test_resize_scales_by_0_8_top_left():
    img = image(100, 200)
    view, boxes = resize(img, np.array([[10, 20, 30.5, 40]]))
    assert view.shape == img.shape
    assert np.allclose(boxes, [[8, 16, 24.4, 32]])
    assert not view[80:].any() and not view[:, 160:].any()
    assert np.array_equal(view[:80, :160], cv2.resize(img, (160, 80), interpolation=cv2.INTER_LINEAR))


def test_rotation_matrix_is_the_reference_centernet_affine():
    # the reference's get_affine_transform(centre, s = max(H, W), rot = 5, output (W, H)), built from
    # its three point pairs: the centre, a point s/2 "up" turned by rot, and a perpendicular third
    for w, h in [(640, 480), (480, 640), (100, 100)]:
        s, r = max(w, h), math.radians(augment.ROTATE_DEGREES)
        c = np.array([w / 2, h / 2])
        src_dir, dst_dir = np.array([s / 2 * math.sin(r), -s / 2 * math.cos(r)]), np.array([0, -w / 2])
        third = lambda a, b: b + np.array([-(a - b)[1], (a - b)[0]])
        src = np.stack([c, c + src_dir, third(c, c + src_dir)]).astype(np.float32)
        dst = np.stack([c, c + dst_dir, third(c, c + dst_dir)]).astype(np.float32)
        assert np.allclose(cv2.getAffineTransform(src, dst), rotation_matrix(w, h), atol=1e-4)


def test_rotate_keeps_a_centred_box_centred():
    for h, w in [(100, 200), (300, 100)]:
        box = np.array([[w / 2 - 10, h / 2 - 5, w / 2 + 10, h / 2 + 5]])
        view, moved = rotate(image(h, w), box)
        assert view.shape == (h, w, 3)
        assert np.allclose((moved[0, :2] + moved[0, 2:]) / 2, [w / 2, h / 2], atol=1e-4)
    # square image: scale 1, hull half-extents 10 cos + 5 sin and 10 sin + 5 cos
    a = math.radians(5)
    _, moved = rotate(image(100, 100), np.array([[40, 45, 60, 55]]))
    assert np.allclose(moved, [[50 - 10 * math.cos(a) - 5 * math.sin(a), 50 - 10 * math.sin(a) - 5 * math.cos(a),
                                50 + 10 * math.cos(a) + 5 * math.sin(a), 50 + 10 * math.sin(a) + 5 * math.cos(a)]],
                       atol=1e-4)


def test_rotate_portrait_shrinks_by_w_over_h():
    h, w = 200, 100
    _, moved = rotate(image(h, w), np.array([[40, 90, 60, 110]]))
    a = math.radians(5)
    assert moved[0, 2] - moved[0, 0] == pytest.approx(0.5 * (20 * math.cos(a) + 20 * math.sin(a)), rel=1e-5)


def test_rotate_clips_hull_to_the_image():
    _, moved = rotate(image(100, 200), np.array([[0, 0, 200, 100]]))
    assert np.array_equal(moved, [[0, 0, 200, 100]])


def test_rotate_image_and_boxes_agree():
    # a white rectangle on black: its rotated pixels lie inside the rotated box hull (within a pixel)
    img = np.zeros((120, 160, 3), np.uint8)
    img[30:70, 50:110] = 255
    view, moved = rotate(img, np.array([[50, 30, 110, 70]]))
    ys, xs = np.nonzero(view[..., 0] > 127)
    found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    assert np.allclose(found, moved[0], atol=1.0)


def test_boxes_keep_fractions():
    _, moved = rotate(image(), np.array([[10.25, 20.5, 30.75, 40.125]]))
    assert moved.dtype == np.float32 and not np.allclose(moved, np.round(moved))


def test_cutout_patches_follow_the_acceptance_rule():
    h, w = 100, 200
    boxes = np.array([[20, 20, 80, 80], [120, 10, 190, 60]], dtype=np.float64)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for seed in range(20):
        patches = cutout_patches(h, w, boxes, np.random.default_rng(seed))
        assert len(patches) <= 2
        for x1, y1, x2, y2 in patches:
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            iw = np.clip(np.minimum(boxes[:, 2], x2) - np.maximum(boxes[:, 0], x1), 0, None)
            ih = np.clip(np.minimum(boxes[:, 3], y2) - np.maximum(boxes[:, 1], y1), 0, None)
            assert CUTOUT_OVERLAP[0] <= (iw * ih / area).max() <= CUTOUT_OVERLAP[1]


def test_cutout_blacks_out_exactly_the_patches():
    img = np.full((100, 200, 3), 200, np.uint8)
    boxes = np.array([[20, 20, 80, 80]], dtype=np.float32)
    view, same = cutout(img, boxes, np.random.default_rng(3))
    patches = cutout_patches(100, 200, boxes, np.random.default_rng(3))
    assert len(patches) == 2
    mask = np.zeros((100, 200), bool)
    for x1, y1, x2, y2 in patches:
        mask[y1:y2, x1:x2] = True
    assert (view[mask] == 0).all() and (view[~mask] == 200).all()
    assert np.array_equal(same, boxes) and (img == 200).all()


def test_cutout_without_acceptable_patch_leaves_image():
    img = image()
    assert np.array_equal(cutout(img, np.zeros((0, 4)), np.random.default_rng(0))[0], img)
    # a box covering the image: any patch covers at most 4 % of it, below the 10 % floor
    whole = np.array([[0, 0, 200, 100]])
    assert len(cutout_patches(100, 200, whole, np.random.default_rng(0))) == 0


def test_make_views_order_shapes_and_seeded_determinism():
    img, boxes = image(), np.array([[20, 20, 80, 80], [120, 10, 190, 60]], dtype=np.float32)
    a = make_views(img, boxes, np.random.default_rng(5))
    b = make_views(img, boxes, np.random.default_rng(5))
    assert len(a) == 4
    for (va, ba), (vb, bb) in zip(a, b):
        assert va.shape == img.shape and va.dtype == np.uint8 and ba.shape == (2, 4)
        assert np.array_equal(va, vb) and np.array_equal(ba, bb)
    assert np.array_equal(a[0][0], hflip(img, boxes)[0])
    assert np.array_equal(a[2][1], rotate(img, boxes)[1]) and np.array_equal(a[3][1], resize(img, boxes)[1])
    c = make_views(img, boxes, np.random.default_rng(6))
    assert not np.array_equal(a[1][0], c[1][0])


def test_empty_boxes_everywhere():
    for view, moved in make_views(image(), np.zeros((0, 4), np.float32), np.random.default_rng(0)):
        assert moved.shape == (0, 4)


def test_views_of_a_tensor_are_the_views_of_the_array_within_rounding():
    """Originals decoded on a device get their views made there (torch stands in for OpenCV): the same cutout
    draws, the same boxes, pixels within rounding (OpenCV's fixed-point bilinear weights against float ones)."""
    import torch

    rng_image = np.random.default_rng(3)
    photo = cv2.GaussianBlur(rng_image.integers(0, 256, (90, 140, 3), dtype=np.uint8), (7, 7), 2)
    boxes = np.array([[10, 10, 60, 50], [70, 20, 130, 80]], np.float32)
    on_cpu = make_views(photo, boxes, np.random.default_rng(7))
    on_tensor = make_views(torch.from_numpy(photo), boxes, np.random.default_rng(7))
    for (view, moved), (tensor_view, tensor_moved), name in zip(on_cpu, on_tensor, ("flip", "cutout", "rotate", "resize")):
        assert isinstance(tensor_view, torch.Tensor) and tuple(tensor_view.shape) == view.shape
        np.testing.assert_array_equal(tensor_moved, moved)
        diff = np.abs(tensor_view.numpy().astype(int) - view)
        if name in ("flip", "cutout"):
            assert diff.max() == 0, name
        else:
            assert diff.max() <= 3 and diff.mean() < 0.3, (name, diff.max(), diff.mean())
