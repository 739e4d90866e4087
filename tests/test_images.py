"""Decoding by content and letterboxing, including the broken and unusual images platforms send."""
import cv2
import numpy as np
import pytest

from executor.errors import ImageError
from executor.images import PAD_VALUE, letterbox, read_image
from executor.loop import progress_batch_size, run_batches, same_shape_chunks
from tests.platform import COCO_VAL

JPEG = COCO_VAL / "images" / "000000000139.jpg"


def write(path, array, *params):
    assert cv2.imwrite(str(path), array, list(params))
    return path


@pytest.fixture
def odd_images(tmp_path):
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :30] = (255, 0, 0)  # left half red (RGB)
    bgr = rgb[..., ::-1].copy()
    return {
        "gray": write(tmp_path / "g.png", cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)),
        "rgba": write(tmp_path / "a.png", cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)),
        "16bit": write(tmp_path / "d.png", bgr.astype(np.uint16) * 257),
        "unknown_ext": write(tmp_path / "x.png", bgr).rename(tmp_path / "abc.unknown"),
    }


@pytest.mark.parametrize("kind", ["gray", "rgba", "16bit", "unknown_ext"])
def test_unusual_images_decode_to_rgb(odd_images, kind):
    image = read_image(str(odd_images[kind]))
    assert image.shape == (40, 60, 3) and image.dtype == np.uint8
    if kind != "gray":
        assert tuple(image[0, 0]) == (255, 0, 0)


def test_exif_rotation_is_applied(tmp_path):
    # a 20x10 JPEG whose EXIF orientation (6 = rotate 90° clockwise) makes it 10 wide, 20 high
    ok, encoded = cv2.imencode(".jpg", np.zeros((10, 20, 3), np.uint8))
    exif = (b"\xff\xe1\x00\x22Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01"
            b"\x00\x06\x00\x00\x00\x00\x00\x00")
    path = tmp_path / "rot.jpg"
    path.write_bytes(encoded.tobytes()[:2] + exif + encoded.tobytes()[2:])
    assert read_image(str(path)).shape[:2] == (20, 10)


@pytest.mark.parametrize("content", [b"", b"GIF89a not really", None])
def test_broken_files_raise_image_error_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError, match="bad.jpg") as err:
        read_image(str(path))
    assert err.value.code == 300003


def test_truncated_jpeg_is_unreadable_or_decodes(tmp_path):
    path = tmp_path / "cut.jpg"
    path.write_bytes(JPEG.read_bytes()[:200])
    with pytest.raises(ImageError):
        read_image(str(path))


def test_letterbox_keeps_aspect_and_maps_back():
    image = np.zeros((100, 200, 3), np.uint8)
    canvas, box = letterbox(image, 64)
    assert canvas.shape == (64, 64, 3) and box.ratio == pytest.approx(0.32)
    assert (canvas[0, 0] == PAD_VALUE).all() and (canvas[32, 32] == 0).all()
    back = box.to_original(np.array([[0.0, box.pad_y, 64.0, 64 - box.pad_y]], np.float32))
    np.testing.assert_allclose(back, [[0, 0, 200, 100]], atol=0.5)
    outside = box.to_original(np.array([[-10.0, -10.0, 80.0, 80.0]], np.float32))
    np.testing.assert_allclose(outside, [[0, 0, 200, 100]])  # clipped to the original image


def test_rectangular_letterbox_is_the_smallest_stride_multiple():
    canvas, box = letterbox(np.zeros((427, 640, 3), np.uint8), 640, stride=32)
    assert canvas.shape == (448, 640, 3) and box.ratio == 1 and (box.pad_x, box.pad_y) == (0, 10)
    assert (canvas[:10] == PAD_VALUE).all() and (canvas[10:437] == 0).all() and (canvas[437:] == PAD_VALUE).all()
    canvas, box = letterbox(np.zeros((200, 100, 3), np.uint8), 64, stride=32)  # portrait, scaled down
    assert canvas.shape == (64, 32, 3) and box.ratio == pytest.approx(0.32) and box.pad_x == 0
    back = box.to_original(np.array([[0.0, 0.0, 32.0, 64.0]], np.float32))
    np.testing.assert_allclose(back, [[0, 0, 100, 200]], atol=0.5)
    assert letterbox(np.zeros((64, 64, 3), np.uint8), 64, stride=32)[0].shape == (64, 64, 3)


def test_loop_batches_one_canvas_shape_at_a_time(tmp_path):
    import cv2

    files = {}
    for h, w in [(40, 80), (80, 40), (64, 64)]:
        files[h, w] = str(tmp_path / f"{h}x{w}.png")
        cv2.imwrite(files[h, w], np.zeros((h, w, 3), np.uint8))
    pattern = [(40, 80), (80, 40), (40, 80), (64, 64), (80, 40), (40, 80), (40, 80), (80, 40), (40, 80)]
    keys = [files[shape] for shape in pattern] * 25  # 225 images: batches of 2 (progress every 1%)
    batches, fractions = [], []
    run_batches(keys, 64, 16, 2, lambda b: batches.append((b.keys, b.canvases.shape)), fractions.append, stride=32)
    assert sorted(k for ks, _ in batches for k in ks) == sorted(keys)  # every image once
    canvas_of = {files[40, 80]: (32, 64), files[80, 40]: (64, 32), files[64, 64]: (64, 64)}
    for batch_keys, shape in batches:
        assert shape[0] == len(batch_keys) <= 2 and {canvas_of[k] for k in batch_keys} == {shape[1:3]}
    assert sum(len(ks) == 2 for ks, _ in batches) >= 100  # full batches, not one image at a time
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)


def test_loop_reports_unreadable_images_and_keeps_order(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    keys = [str(JPEG), str(bad), str(COCO_VAL / "images" / "000000000802.jpg")]
    seen, fractions = [], []
    failures = run_batches(keys, 64, 2, 2, lambda b: seen.extend(b.keys), fractions.append)
    assert seen == [keys[0], keys[2]] and failures[0][0] == str(bad)
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)


def test_progress_batch_size_moves_every_percent():
    assert progress_batch_size(16, 206) == 2
    assert progress_batch_size(16, 50) == 1
    assert progress_batch_size(16, 100000) == 16


def test_same_shape_chunks_keep_first_appearance_order():
    canvases = [np.zeros(shape) for shape in [(2, 4), (4, 2), (2, 4), (2, 4), (4, 2)]]
    assert same_shape_chunks(canvases, 2) == [[0, 2], [3], [1, 4]]
