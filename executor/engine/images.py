"""Decoding images by content (whatever the extension says) and letterboxing them to the network size."""
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import cv2
import numpy as np

from executor.errors import ImageError

PAD_VALUE = 114  # grey padding, as the YOLO family trains with


def read_image(path: str) -> np.ndarray:
    """RGB uint8 (H, W, 3) for any image OpenCV can decode: EXIF-rotated, grayscale, RGBA, 16-bit, CMYK.

    Raises ImageError naming the file when it is missing, empty or not an image."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    if data.size == 0:
        raise ImageError(f"image file is empty: {path}")
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)  # applies EXIF orientation, drops alpha, 8-bit BGR
    except cv2.error as exc:  # e.g. dimensions over OpenCV's pixel limit
        raise ImageError(f"not a decodable image: {path} ({' '.join(str(exc).split())[-200:]})") from None
    if image is None or image.size == 0:  # truncated (OpenCV 5 rejects a JPEG cut anywhere), empty or no image
        raise ImageError(f"not a decodable image: {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def truncated_jpeg(path: str) -> bool:
    """A JPEG that stops before its end-of-image marker and does not decode (what read_image rejects, and what
    Ultralytics would silently 'restore' with grey). Cheap for complete files: only the last bytes are read."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - 64))
            tail = handle.read().rstrip(b"\0")
    except OSError:
        return False
    if tail.endswith(b"\xff\xd9"):
        return False
    try:  # bytes after the marker (some cameras append data) are fine if the image decodes
        read_image(path)
    except ImageError:
        return True
    return False


@dataclass(frozen=True)
class Letterbox:
    """How an original image maps into its network input (canvas): input = original * ratio + (pad_x, pad_y)."""
    ratio: float
    pad_x: float
    pad_y: float
    height: int  # original size
    width: int

    def to_original(self, xyxy: np.ndarray) -> np.ndarray:
        """Boxes (N, 4) from network-input pixels back to original pixels, clipped to the image."""
        out = np.empty_like(xyxy, dtype=np.float32)
        out[:, [0, 2]] = ((xyxy[:, [0, 2]] - self.pad_x) / self.ratio).clip(0, self.width)
        out[:, [1, 3]] = ((xyxy[:, [1, 3]] - self.pad_y) / self.ratio).clip(0, self.height)
        return out


class Placement(NamedTuple):
    """Where a resized original sits on its canvas."""
    new_w: int      # the resized original
    new_h: int
    canvas_h: int
    canvas_w: int
    left: int       # its top-left corner on the canvas
    top: int
    ratio: float    # resized = original * ratio


def letterbox_geometry(height: int, width: int, size: int, stride: int | None = None,
                       canvas_shape: tuple[int, int] | None = None) -> Placement:
    """The geometry of `letterbox` for an original of height × width (the one computation both the OpenCV and
    the torch letterbox use)."""
    ratio = min(size / height, size / width)
    new_w, new_h = max(1, round(width * ratio)), max(1, round(height * ratio))
    if canvas_shape is not None:
        canvas_h, canvas_w = canvas_shape
        if canvas_h < new_h or canvas_w < new_w:
            raise ValueError(f"a {new_w}x{new_h} image does not fit a {canvas_w}x{canvas_h} canvas")
    else:
        canvas_h, canvas_w = (size, size) if stride is None else (round_up(new_h, stride), round_up(new_w, stride))
    return Placement(new_w, new_h, canvas_h, canvas_w, (canvas_w - new_w) // 2, (canvas_h - new_h) // 2, ratio)


def letterbox(image: np.ndarray, size: int, stride: int | None = None,
              canvas_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio so the long side is `size`, centre it on a grey canvas: size×size, or,
    with `stride`, the smallest rectangle of stride multiples that holds it (640×480 for a 4:3 photo at 640:
    a quarter fewer pixels to compute), or a given (height, width) that holds it (evaluation's batch shapes).
    The canvas depends only on the image (and a given shape), never on its batch."""
    height, width = image.shape[:2]
    at = letterbox_geometry(height, width, size, stride, canvas_shape)
    if (at.new_w, at.new_h) != (width, height):
        image = cv2.resize(image, (at.new_w, at.new_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((at.canvas_h, at.canvas_w, 3), PAD_VALUE, dtype=np.uint8)
    canvas[at.top:at.top + at.new_h, at.left:at.left + at.new_w] = image
    return canvas, Letterbox(at.ratio, float(at.left), float(at.top), height, width)


def same_shape_chunks(canvases: Sequence[np.ndarray], size: int) -> list[list[int]]:
    """Indices of `canvases` in chunks of at most `size` canvases of one shape (shapes in order of first
    appearance; the last chunk of each shape may be short)."""
    by_shape: dict[tuple, list[int]] = {}
    for k, canvas in enumerate(canvases):
        by_shape.setdefault(canvas.shape, []).append(k)
    return [ks[i:i + size] for ks in by_shape.values() for i in range(0, len(ks), size)]


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= value."""
    return -(-value // multiple) * multiple
