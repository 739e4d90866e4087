"""Decoding by content and letterboxing, including the broken and unusual images platforms send."""
import cv2
import numpy as np
import pytest

from executor.engine.images import PAD_VALUE, letterbox, read_image, same_shape_chunks
from executor.errors import ImageError
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


def test_same_shape_chunks_keep_first_appearance_order():
    canvases = [np.zeros(shape) for shape in [(2, 4), (4, 2), (2, 4), (2, 4), (4, 2)]]
    assert same_shape_chunks(canvases, 2) == [[0, 2], [3], [1, 4]]
