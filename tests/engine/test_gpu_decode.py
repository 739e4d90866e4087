"""Decoding and letterboxing on a torch device (executor/engine/gpu_decode.py): which files take the device path, and that
both paths give the same canvases within rounding, the same canvas shapes and so the same batches. On CPU,
torchvision's CPU decode_jpeg stands in for nvJPEG; the CUDA tests run on a machine with a GPU."""
import dataclasses
import io
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from executor.engine import gpu_decode
from executor.engine.gpu_decode import DeviceLetterbox, cpu_reason, decode_batch, gpu_decodable, letterbox_tensor
from executor.engine.images import letterbox, read_image
from executor.engine.loop import device_letterbox
from executor.engine.loop import Unreadable, batches
from executor.errors import ConfigError, ImageError
from executor.protocol.settings import build_settings
from tests.platform import COCO_VAL

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
IMAGES = sorted(str(p) for p in (COCO_VAL / "images").glob("*.jpg"))
JPEG = IMAGES[0]
CUDA = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def cuda(test):
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


def encoded(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", **options)
    return out.getvalue()


def with_exif(jpeg: bytes, orientation: int, order: str) -> bytes:
    """`jpeg` with an APP1 Exif segment (TIFF byte order 'II' or 'MM') holding only an orientation tag."""
    big = order == "MM"

    def u(value, size):
        return value.to_bytes(size, "big" if big else "little")

    tiff = order.encode() + u(42, 2) + u(8, 4) + u(1, 2) + u(0x0112, 2) + u(3, 2) + u(1, 4) + u(orientation, 2) \
        + b"\0\0" + u(0, 4)
    payload = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


@pytest.fixture(scope="module")
def special(tmp_path_factory):
    """Files that must take the CPU path, and JPEG variants the device decodes, written from a COCO image."""
    folder = tmp_path_factory.mktemp("special")
    photo = Image.open(JPEG).convert("RGB")
    plain = encoded(photo)
    files = {
        "cmyk": encoded(photo.convert("CMYK")),
        "exif6_MM": with_exif(plain, 6, "MM"),
        "exif8_II": with_exif(plain, 8, "II"),
        "exif_pil6": encoded(photo, exif=_exif(6)),
        "exif1_II": with_exif(plain, 1, "II"),
        "gray": encoded(photo.convert("L")),
        "progressive": encoded(photo, progressive=True),
        "444": encoded(photo, subsampling=0),
        "422": encoded(photo, subsampling=1),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.jpg"
        paths[name].write_bytes(data)
    bgr = cv2.cvtColor(np.asarray(photo), cv2.COLOR_RGB2BGR)
    paths["png"] = folder / "photo.jpg"  # a PNG whatever its name says
    assert cv2.imwrite(str(folder / "photo.png"), bgr)
    (folder / "photo.png").rename(paths["png"])
    paths["16bit"] = folder / "deep.png"
    assert cv2.imwrite(str(paths["16bit"]), bgr.astype(np.uint16) * 257)
    paths["empty"] = folder / "empty.jpg"
    paths["empty"].write_bytes(b"")
    paths["missing"] = folder / "missing.jpg"
    paths["cut"] = folder / "cut.jpg"
    paths["cut"].write_bytes(plain[:len(plain) // 2])
    return {name: str(path) for name, path in paths.items()}


def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


DEVICE_DECODES = ["exif1_II", "gray", "progressive", "444", "422"]
CPU_DECODES = {"cmyk": "4-component", "exif6_MM": "EXIF orientation 6", "exif8_II": "EXIF orientation 8",
               "exif_pil6": "EXIF orientation 6", "png": "not a JPEG", "16bit": "not a JPEG",
               "cut": "no end-of-image marker"}


# ---------------------------------------------------------------- which path

def test_every_shared_jpeg_takes_the_device_path():
    assert len(IMAGES) > 100
    reasons = {path: cpu_reason(open(path, "rb").read()) for path in IMAGES}
    assert {path: r for path, r in reasons.items() if r} == {}


def test_special_files_are_classified(special):
    for name in DEVICE_DECODES:
        assert cpu_reason(open(special[name], "rb").read()) == "", name
    for name, reason in CPU_DECODES.items():
        assert reason in cpu_reason(open(special[name], "rb").read()), name


def test_frames_the_device_does_not_decode():
    plain = open(JPEG, "rb").read()
    sof = plain.index(b"\xff\xc0")
    assert gpu_decodable(plain)
    twelve_bit = plain[:sof + 4] + bytes([12]) + plain[sof + 5:]
    assert cpu_reason(twelve_bit) == "12-bit JPEG"
    lossless = plain[:sof + 1] + b"\xc3" + plain[sof + 2:]
    assert "frame type 0xC3" in cpu_reason(lossless)
    rgb_ids = plain[:sof + 10] + b"R" + plain[sof + 11:sof + 13] + b"G" + plain[sof + 14:sof + 16] + b"B" + \
        plain[sof + 17:]
    assert plain[sof + 9] == 3 and cpu_reason(rgb_ids) == "RGB-coded JPEG"
    luma_4x1 = plain[:sof + 11] + b"\x41" + plain[sof + 12:]
    assert "chroma subsampling" in cpu_reason(luma_4x1)
    assert "unparsable" in cpu_reason(plain[:2] + b"\x00garbage" + plain[-2:])
    assert "no frame header" in cpu_reason(b"\xff\xd8\xff\xda\x00\x02\xff\xd9")
    assert cpu_reason(plain + b"\0\0\0") == ""  # padding after the end marker is fine
    assert "end-of-image" in cpu_reason(plain + b"trailer")  # other data after it: OpenCV decides
    broken_exif = with_exif(plain, 6, "MM").replace(b"MM\x00\x2a", b"MM\x00\x2b", 1)
    assert "unparsable" in cpu_reason(broken_exif)


# ---------------------------------------------------------------- the torch letterbox

SHAPES = [(480, 640), (640, 480), (100, 37), (1000, 1500), (33, 2000), (640, 640), (1, 1), (7, 640), (2001, 999)]


@pytest.mark.parametrize("size,stride", [(640, None), (640, 32), (320, 32), (64, None)])
def test_letterbox_tensor_matches_opencv(size, stride):
    rng = np.random.default_rng(size)
    photo = read_image(JPEG)
    for h, w in SHAPES:
        noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # the worst case for rounding
        tiled = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
        for image in (noise, tiled):
            ref, ref_box = letterbox(image, size, stride)
            canvas, box = letterbox_tensor(torch.from_numpy(image).permute(2, 0, 1), size, stride)
            assert box == ref_box and canvas.shape == ref.shape and canvas.dtype == torch.uint8
            diff = np.abs(canvas.numpy().astype(int) - ref)
            assert diff.max() <= 2 and diff.mean() < 0.2, (h, w, diff.max(), diff.mean())


def test_letterbox_tensor_given_canvas_shape():
    image = read_image(JPEG)  # 640x426
    for shape in [(448, 640), (640, 640), (512, 704)]:
        ref, ref_box = letterbox(image, 640, None, shape)
        canvas, box = letterbox_tensor(torch.from_numpy(image).permute(2, 0, 1), 640, None, shape)
        assert box == ref_box and np.abs(canvas.numpy().astype(int) - ref).max() <= 2
    with pytest.raises(ValueError, match="does not fit"):
        letterbox_tensor(torch.from_numpy(image).permute(2, 0, 1), 640, None, (400, 640))


# ---------------------------------------------------------------- decode_batch against the CPU path

def assert_same_as_cpu_path(paths, got, size, stride, level_tolerance):
    """Each result of decode_batch equals read_image + letterbox: same original, box and canvas shape, canvas
    pixels within rounding (`level_tolerance`: (max abs difference, mean abs difference))."""
    worst, mean = level_tolerance
    for path, result in zip(paths, got):
        try:
            original = read_image(path)
        except ImageError as exc:
            assert isinstance(result, ImageError) and str(result) == str(exc)
            continue
        assert not isinstance(result, ImageError), (path, result)
        image, canvas, box, device_image = result
        ref, ref_box = letterbox(original, size, stride)
        assert device_image.device == canvas.device and np.array_equal(device_image.cpu().numpy(), image), path
        assert box == ref_box and tuple(canvas.shape) == ref.shape, path
        assert image.shape == original.shape and image.dtype == np.uint8
        assert np.abs(image.astype(int) - original).mean() <= mean, path
        diff = np.abs(canvas.cpu().numpy().astype(int) - ref)
        assert diff.max() <= worst and diff.mean() <= mean, (path, diff.max(), diff.mean())


def test_decode_batch_on_cpu_matches_the_opencv_path():
    paths = IMAGES[:40]
    assert_same_as_cpu_path(paths, decode_batch(paths, "cpu", 640, 32), 640, 32, (2, 0.2))
    assert_same_as_cpu_path(paths[:8], decode_batch(paths[:8], "cpu", 320, None), 320, None, (2, 0.2))


def test_decode_batch_falls_back_to_opencv(special, monkeypatch):
    names = list(special)
    paths = [special[name] for name in names]
    calls = []
    real = gpu_decode.device_decode
    monkeypatch.setattr(gpu_decode, "device_decode", lambda data, device: calls.append(len(data)) or real(data, device))
    got = decode_batch(paths, "cpu", 640, 32)
    assert calls == [len(DEVICE_DECODES)]  # one batched call for every file the device decodes, nothing else
    assert_same_as_cpu_path(paths, got, 640, 32, (2, 0.2))
    assert sum(isinstance(g, ImageError) for g in got) == 3  # empty, missing, cut
    assert "empty" in str(got[names.index("empty")]) and "missing.jpg" in str(got[names.index("missing")])
    rotated = got[names.index("exif6_MM")][0]
    assert rotated.shape[:2] == read_image(JPEG).shape[1::-1]  # EXIF applied, as OpenCV does


def test_a_file_the_device_decoder_rejects_goes_to_opencv(special, monkeypatch):
    paths = [IMAGES[0], special["gray"], IMAGES[1]]
    real = gpu_decode.device_decode

    def picky(data, device):  # rejects any call holding the grey JPEG, as a decoder rejecting one file would
        if any(len(d) == len(open(special["gray"], "rb").read()) for d in data):
            raise RuntimeError("nvjpeg: unsupported")
        return real(data, device)

    monkeypatch.setattr(gpu_decode, "device_decode", picky)
    assert_same_as_cpu_path(paths, decode_batch(paths, "cpu", 640, 32), 640, 32, (2, 0.2))


# ---------------------------------------------------------------- the loop

def same_batches(keys, on_device, batch_size, workers):
    cpu = list(batches(keys, lambda image: letterbox(image, on_device.size, on_device.stride), batch_size, workers))
    dev = list(batches(keys, None, batch_size, workers, on_device))
    assert [type(b) for b in dev] == [type(b) for b in cpu]
    for a, b in zip(cpu, dev):
        if isinstance(a, Unreadable):
            assert (a.key, a.reason) == (b.key, b.reason)
            continue
        assert a.keys == b.keys and a.boxes == b.boxes and isinstance(b.canvases, torch.Tensor)
        assert b.canvases.device.type == on_device.device.type and tuple(b.canvases.shape) == a.canvases.shape
        assert np.abs(b.canvases.cpu().numpy().astype(int) - a.canvases).max() <= 2
        assert all(x.shape == y.shape for x, y in zip(a.images, b.images))
        assert a.device_images is None and all(np.array_equal(x.cpu().numpy(), y)  # CALD's views start from them
                                               for x, y in zip(b.device_images, b.images))
    return dev


@pytest.mark.parametrize("workers", [0, 2])
def test_loop_on_device_yields_the_same_batches(special, workers):
    keys = IMAGES[:12] + [special["png"], special["empty"], special["cmyk"]] + IMAGES[12:20] + [special["exif6_MM"]]
    found = same_batches(keys, DeviceLetterbox(torch.device("cpu"), 320, 32), 4, workers)
    assert sum(isinstance(b, Unreadable) for b in found) == 1


# ---------------------------------------------------------------- the template key

def test_gpu_decode_setting():
    assert build_settings("mining", {}).gpu_decode == "auto" and build_settings("infer", {}).gpu_decode == "auto"
    for given, expected in [("auto", "auto"), ("AUTO", "auto"), ("", "auto"), (True, True), ("false", False),
                            ("1", True), (0, False)]:
        assert build_settings("infer", {"gpu_decode": given}).gpu_decode == expected
    with pytest.raises(ConfigError, match="gpu_decode.*auto, true or false"):
        build_settings("mining", {"gpu_decode": "nvjpeg"})


def test_gpu_decode_resolved_for_the_detector():
    from executor.engine.torch_detector import TorchDetector

    on_gpu = TorchDetector.__new__(TorchDetector)  # no weights needed: only its device and geometry are read
    on_gpu.device, on_gpu.img_size, on_gpu.rect_stride = torch.device("cuda:1"), 640, 32
    on_cpu = TorchDetector.__new__(TorchDetector)
    on_cpu.device, on_cpu.img_size, on_cpu.rect_stride = torch.device("cpu"), 640, 32
    assert device_letterbox("auto", on_gpu) == DeviceLetterbox(torch.device("cuda:1"), 640, 32)
    assert device_letterbox(True, on_gpu) == DeviceLetterbox(torch.device("cuda:1"), 640, 32)
    assert device_letterbox(False, on_gpu) is None
    assert device_letterbox("auto", on_cpu) is None and device_letterbox("auto", None) is None
    with pytest.raises(ConfigError, match="gpu_decode.*CUDA"):
        device_letterbox(True, on_cpu)


@pytest.mark.slow
def test_the_detector_takes_device_canvases():
    from tests.platform import batch_of, template_detector

    detector = template_detector(320)
    batch = batch_of(IMAGES[:1], detector)
    as_array = detector.predict(batch)
    batch.canvases = torch.from_numpy(batch.canvases.copy())
    for a, b in zip(as_array, detector.predict(batch)):
        np.testing.assert_array_equal(a.xyxy, b.xyxy)
        np.testing.assert_array_equal(a.cls, b.cls)


# ---------------------------------------------------------------- on a GPU

@cuda
def test_cuda_decode_matches_the_opencv_path(special):
    """nvJPEG against libjpeg-turbo (OpenCV): the IDCT and chroma upsampling may differ by a few levels."""
    paths = IMAGES + list(special.values())
    got = decode_batch(paths, "cuda", 640, 32)
    assert all(g[1].device.type == "cuda" for g in got if not isinstance(g, ImageError))
    assert_same_as_cpu_path(paths, got, 640, 32, (64, 1.5))


@cuda
def test_cuda_loop_yields_the_same_batches(special):
    keys = IMAGES[:40] + list(special.values()) + IMAGES[40:60]
    same_batches(keys, DeviceLetterbox(torch.device("cuda"), 640, 32), 16, 4)


@pytest.mark.slow
@cuda
def test_cuda_scores_do_not_depend_on_the_path():
    from mining.entropy import EntropyScorer
    from tests.platform import template_detector

    detector = template_detector(640, gpu_id="0")
    on_device = device_letterbox("auto", detector)
    assert on_device is not None
    scorer = EntropyScorer(entropy_aggregation="sum", entropy_conf_thres=0.01)
    scores = []
    for target in (None, on_device):
        found = {}
        for batch in batches(IMAGES[:48], detector.letterbox, 16, 2, target):
            found.update(zip(batch.keys, scorer.score(batch, detector)))
        scores.append(found)
    a, b = (np.array([s[k] for k in IMAGES[:48]]) for s in scores)
    assert np.corrcoef(a, b)[0, 1] > 0.99 and np.median(np.abs(a - b) / np.maximum(a, 1e-6)) < 0.05


class ViewRecorder:
    """The detector as CALD sees it, keeping the detections of the views."""

    def __init__(self, detector):
        self.detector, self.views = detector, []

    def __getattr__(self, name):
        return getattr(self.detector, name)

    def predict_views(self, views, batch_size):
        self.views = self.detector.predict_views(views, batch_size)
        return self.views


def cald_draw(batch, name: str, detector, seed: int) -> tuple[float, list]:
    """CALD's score of a one-image batch drawn as the result key `name`, and the discrete choices it rests on: the
    classes of the boxes kept in the reference and in each view, and the cutout patches."""
    from mining.augment import cutout_patches
    from mining.base import image_seed
    from mining.cald import CaldScorer

    seen, named = ViewRecorder(detector), dataclasses.replace(batch, names=[name])
    [score] = CaldScorer(seed=seed).score(named, seen)
    [ref] = detector.predict(named)  # the reference detections, from the forward CALD's own made
    height, width = batch.images[0].shape[:2]
    patches = cutout_patches(height, width, ref.xyxy, np.random.default_rng(image_seed(seed, name)))
    return score, [sorted(det.cls.tolist()) for det in [ref, *seen.views]] + [patches.tolist()]


# result keys drawn per image: a sweep, plus a draw where the torch path keeps a cutout-view box at confidence
# 0.257, just above conf_thres 0.25, that OpenCV's path drops: 0.91 against 0.70, as issue 23 saw in one clone
CALD_DRAWS = [(IMAGES[i], f"pool-{j}/{os.path.basename(IMAGES[i])}") for i in (0, 1, 3) for j in range(3)] + \
    [(IMAGES[3], "k196")]


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_cald_builds_its_views_where_the_originals_were_decoded(device):
    """With the originals decoded on the device, CALD makes its four views there (within a grey level of OpenCV's)
    and the detector letterboxes them there. Wherever both paths keep the same boxes (in the reference, hence the
    same cutout patches, and in every view) the scores agree within rounding; a box at the confidence threshold
    may be kept on one path only, and the score jumps with it."""
    from tests.platform import template_detector

    detector = template_detector(320, gpu_id="0" if device == "cuda" else "")
    paths = sorted({path for path, _ in CALD_DRAWS})
    decoded = []
    for target in (None, DeviceLetterbox(torch.device(device), detector.img_size, detector.rect_stride)):
        found = {batch.keys[0]: batch for batch in batches(paths, detector.letterbox, 1, 0, target)}
        assert all((batch.device_images is None) == (target is None) for batch in found.values())
        decoded.append(found)
    same_choices = 0
    for path, name in CALD_DRAWS:
        (host, host_choices), (on_device, device_choices) = (cald_draw(by_path[path], name, detector, 2)
                                                              for by_path in decoded)
        assert host > 0 and on_device > 0
        if host_choices == device_choices:
            same_choices += 1
            assert abs(host - on_device) < 0.02, (path, name, host, on_device)
    assert same_choices >= len(CALD_DRAWS) // 2  # most draws keep the same boxes: the check above is not idle
