"""Decoding and letterboxing batches of images on a torch device: JPEGs through torchvision's batched
`decode_jpeg` (nvJPEG on CUDA; libjpeg-turbo on CPU), the resize and the grey padding in torch, with the
geometry of executor.engine.images.letterbox.

Which path a file takes depends on its bytes alone (`cpu_reason`): a complete baseline, extended or progressive
8-bit JPEG with 1 (grey) or 3 (YCbCr, usual chroma subsampling) components and no EXIF orientation other than 1
is decoded on the device. Every other file (PNG and the other formats, CMYK/YCCK or RGB-coded JPEGs, 12-bit,
EXIF-rotated, truncated or unparsable ones) and any file the device decoder raises on is decoded by
executor.engine.images.read_image (OpenCV: EXIF rotation, CMYK, 16-bit, the same errors for broken files) on the CPU,
then letterboxed on the device like the rest. Both paths give the same canvases within rounding
(tests/engine/test_gpu_decode.py), and the same canvas shapes, so the loop makes the same batches.

The originals (what CALD's views and the report need, Batch.images) are always copied back to the host as RGB
uint8 (H, W, 3) arrays: one device-to-host copy per image, measured in `python -m benchmarks` (P7).
"""
import logging
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from executor.engine.images import PAD_VALUE, Letterbox, letterbox_geometry, read_image
from executor.errors import ImageError

log = logging.getLogger(__name__)
# torchvision 0.29 warns on every call that its image decoders will move to TorchCodec; the pin holds them
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

# ---------------------------------------------------------------- which files the device decodes

SOI, EOI, SOS, APP1, APP14 = 0xD8, 0xD9, 0xDA, 0xE1, 0xEE
DEVICE_SOF = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive"}  # Huffman-coded frames
OTHER_SOF = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # lossless, hierarchical, arithmetic
NO_LENGTH = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn stand alone
MAX_PIXELS = 1 << 30  # OpenCV's default CV_IO_MAX_IMAGE_PIXELS: larger images are its (and so our) error
ORIENTATION_TAG = 0x0112


def jpeg_segments(data: bytes):
    """(marker, payload) of each marker segment of a JPEG, from the one after SOI to the first SOS (its header
    as payload). Raises ValueError where the bytes are no JPEG header."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI marker)")
    pos = 2
    while True:
        if pos >= len(data) or data[pos] != 0xFF:
            raise ValueError(f"no marker at byte {pos}")
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= len(data):
            raise ValueError("ends inside a marker")
        marker = data[pos]
        pos += 1
        if marker in NO_LENGTH:
            continue
        if marker in (0x00, SOI, EOI):
            raise ValueError(f"marker 0x{marker:02X} before the first scan")
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2 or pos + length > len(data):
            raise ValueError(f"segment 0x{marker:02X} of length {length} at byte {pos} overruns the file")
        yield marker, data[pos + 2:pos + length]
        if marker == SOS:
            return
        pos += length


def exif_orientation(payload: bytes) -> int | None:
    """The orientation (tag 0x0112 of the first IFD) of an APP1 payload that holds Exif; None when it holds no
    Exif or no orientation. Raises ValueError when the Exif cannot be read."""
    if not payload.startswith(b"Exif\x00\x00"):
        return None  # e.g. XMP
    tiff = payload[6:]
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8 or int.from_bytes(tiff[2:4], order) != 42:
        raise ValueError("Exif without a TIFF header")
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        raise ValueError("Exif IFD outside the segment")
    for k in range(int.from_bytes(tiff[ifd:ifd + 2], order)):
        entry = tiff[ifd + 2 + 12 * k:ifd + 14 + 12 * k]
        if len(entry) < 12:
            raise ValueError("Exif IFD cut short")
        if int.from_bytes(entry[:2], order) == ORIENTATION_TAG:
            if int.from_bytes(entry[2:4], order) != 3:  # SHORT
                raise ValueError("Exif orientation is not a SHORT")
            return int.from_bytes(entry[8:10], order)
    return None


def frame_reason(marker: int, payload: bytes) -> str:
    """Why a start-of-frame segment needs the CPU path ('' when the device decodes it)."""
    if marker not in DEVICE_SOF:
        return f"JPEG frame type 0x{marker:02X} (lossless, hierarchical or arithmetic coding)"
    if len(payload) < 6:
        return "short frame header"
    precision, count = payload[0], payload[5]
    height, width = int.from_bytes(payload[1:3], "big"), int.from_bytes(payload[3:5], "big")
    if precision != 8:
        return f"{precision}-bit JPEG"
    if count == 4:
        return "4-component JPEG (CMYK/YCCK)"
    if count not in (1, 3) or len(payload) < 6 + 3 * count:
        return f"{count}-component JPEG"
    if not 0 < height * width <= MAX_PIXELS:
        return f"{width}x{height} pixels"
    if count == 3:
        ids = bytes(payload[6 + 3 * c] for c in range(3))
        sampling = [(payload[7 + 3 * c] >> 4, payload[7 + 3 * c] & 15) for c in range(3)]
        if ids == b"RGB":
            return "RGB-coded JPEG"
        if sampling[0] not in ((1, 1), (2, 1), (1, 2), (2, 2)) or sampling[1:] != [(1, 1), (1, 1)]:
            return f"chroma subsampling {sampling}"
    return ""


def cpu_reason(data: bytes) -> str:
    """Why `data` (a whole file) takes the CPU path: '' for a JPEG the device decodes to the pixels OpenCV
    gives, else a few words (not a JPEG, CMYK, 12-bit, EXIF orientation 6, no end-of-image marker, ...)."""
    if data[:2] != b"\xff\xd8":
        return "not a JPEG"
    if not data.rstrip(b"\0").endswith(b"\xff\xd9"):  # cut short, or data after the image: OpenCV decides
        return "no end-of-image marker at the end"
    frame, adobe_transform = None, None
    try:
        for marker, payload in jpeg_segments(data):
            if marker == APP1:
                orientation = exif_orientation(payload)
                if orientation not in (None, 1):
                    return f"EXIF orientation {orientation}"
            elif marker == APP14 and payload.startswith(b"Adobe") and len(payload) >= 12:
                adobe_transform = payload[11]
            elif (marker in DEVICE_SOF or marker in OTHER_SOF) and frame is None:
                frame = (marker, payload)
    except ValueError as exc:
        return f"unparsable JPEG ({exc})"
    if frame is None:
        return "no frame header before the first scan"
    reason = frame_reason(*frame)
    if not reason and adobe_transform == 0 and frame[1][5] == 3:
        reason = "RGB-coded JPEG (Adobe transform 0)"
    return reason


def gpu_decodable(data: bytes) -> bool:
    """`data` is a JPEG the device decodes (see cpu_reason)."""
    return not cpu_reason(data)


# ---------------------------------------------------------------- decoding and letterboxing on the device

def letterbox_tensor(image: torch.Tensor, size: int, stride: int | None = None,
                     canvas_shape: tuple[int, int] | None = None) -> tuple[torch.Tensor, Letterbox]:
    """executor.engine.images.letterbox of a (3, H, W) uint8 tensor, on its device: the same geometry and grey, the
    resize bilinear as cv2.INTER_LINEAR samples it (half-pixel centres, no antialiasing), rounded to uint8.
    Returns the (H', W', 3) uint8 canvas, channels last like the CPU path's."""
    _, height, width = image.shape
    at = letterbox_geometry(height, width, size, stride, canvas_shape)
    if (at.new_w, at.new_h) != (width, height):
        image = F.interpolate(image[None].float(), size=(at.new_h, at.new_w), mode="bilinear", align_corners=False,
                              antialias=False)[0].round_().clamp_(0, 255).to(torch.uint8)
    canvas = torch.full((at.canvas_h, at.canvas_w, 3), PAD_VALUE, dtype=torch.uint8, device=image.device)
    canvas[at.top:at.top + at.new_h, at.left:at.left + at.new_w] = image.permute(1, 2, 0)
    return canvas, Letterbox(at.ratio, float(at.left), float(at.top), height, width)


@dataclass
class Source:
    """One file as read for the device: its bytes when the device decodes it, else OpenCV's original (or the
    ImageError read_image raised)."""
    path: str
    data: torch.Tensor | None = None   # the whole file, uint8, on the CPU
    image: np.ndarray | None = None    # RGB uint8 (H, W, 3)
    error: ImageError | None = None


def read_source(path: str) -> Source:
    """The file's bytes if the device can decode them (gpu_decodable), else read_image's result."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        data = None
    if data is not None and data.size and gpu_decodable(data.tobytes()):
        return Source(path, data=torch.from_numpy(data))
    return cpu_source(path)


def cpu_source(path: str) -> Source:
    try:
        return Source(path, image=read_image(path))
    except ImageError as exc:
        return Source(path, error=exc)


def device_decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """torchvision's decode_jpeg of several files at once into (3, H, W) RGB uint8 tensors on `device`."""
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


# (original on the host, canvas on the device, map, original on the device as (H, W, 3): CALD's views)
Prepared = tuple[np.ndarray | None, torch.Tensor, Letterbox, torch.Tensor]


def decode_sources(sources: Sequence[Source], device: torch.device | str, size: int, stride: int | None = None,
                   canvas_shape: tuple[int, int] | None = None, originals: bool = True) -> list[Prepared | ImageError]:
    """Each source decoded and letterboxed on `device`, in order: the JPEG bytes by one batched decode (if it
    raises, one by one; a file the decoder still rejects goes to OpenCV), the others from their OpenCV
    original; an ImageError for an unreadable file. `originals`: copy the device-decoded originals to the host
    (else None in their place)."""
    device = torch.device(device)
    jpegs = [k for k, source in enumerate(sources) if source.data is not None]
    on_device: dict[int, torch.Tensor | None] = {}
    if jpegs:
        try:
            on_device = dict(zip(jpegs, device_decode([sources[k].data for k in jpegs], device)))
        except RuntimeError as exc:
            log.debug("batched decode of %d JPEGs failed (%s): one by one", len(jpegs), exc)
            for k in jpegs:
                try:
                    on_device[k] = device_decode([sources[k].data], device)[0]
                except RuntimeError as err:
                    log.debug("the %s decoder rejects %s (%s): OpenCV decodes it", device.type, sources[k].path, err)
                    on_device[k] = None
    out: list[Prepared | ImageError] = []
    for k, source in enumerate(sources):
        image = on_device.get(k)
        if k in on_device and image is None:
            source = cpu_source(source.path)
        if source.error is not None:
            out.append(source.error)
            continue
        original = source.image
        if image is None:
            image = torch.from_numpy(original).to(device).permute(2, 0, 1)
        canvas, box = letterbox_tensor(image, size, stride, canvas_shape)
        out.append([original, canvas, box, image.permute(1, 2, 0)])
    if originals:  # queued after every canvas, so the copies (each waits for the device) hold none of them up
        for k, item in enumerate(out):
            if isinstance(item, list) and item[0] is None:
                item[0] = on_device[k].permute(1, 2, 0).contiguous().cpu().numpy()
    return [item if isinstance(item, ImageError) else tuple(item) for item in out]


def decode_batch(paths: Sequence[str], device: torch.device | str, size: int, stride: int | None = None,
                 canvas_shape: tuple[int, int] | None = None, originals: bool = True) -> list[Prepared | ImageError]:
    """read_source then decode_sources: `paths` decoded and letterboxed on `device`."""
    return decode_sources([read_source(path) for path in paths], device, size, stride, canvas_shape, originals)


@dataclass(frozen=True)
class DeviceLetterbox:
    """What the loop needs to decode and letterbox on a device: the device and the detector's geometry."""
    device: torch.device
    size: int
    stride: int | None

    def decode(self, sources: Sequence[Source]) -> list[Prepared | ImageError]:
        return decode_sources(sources, self.device, self.size, self.stride)
