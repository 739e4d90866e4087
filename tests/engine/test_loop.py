import cv2
import numpy as np

from executor.engine.images import letterbox
from executor.engine.loop import Unreadable, batches
from mining.base import Batch
from tests.platform import COCO_VAL


def rect(image):
    return letterbox(image, 64, 32)


def test_batches_hold_one_canvas_shape_and_the_batch_size_asked_for(tmp_path):
    files = {}
    for h, w in [(40, 80), (80, 40), (64, 64)]:
        files[h, w] = str(tmp_path / f"{h}x{w}.png")
        cv2.imwrite(files[h, w], np.zeros((h, w, 3), np.uint8))
    pattern = [(40, 80), (80, 40), (40, 80), (64, 64), (80, 40), (40, 80), (40, 80), (80, 40), (40, 80)]
    keys = [files[shape] for shape in pattern] * 25  # 225 images, a small pool: the batch stays 16
    found = list(batches(keys, rect, 16, 2))
    assert all(isinstance(b, Batch) for b in found)
    assert sorted(k for b in found for k in b.keys) == sorted(keys)  # every image once
    canvas_of = {files[40, 80]: (32, 64), files[80, 40]: (64, 32), files[64, 64]: (64, 64)}
    for b in found:
        assert b.canvases.shape[0] == len(b.keys) <= 16 and {canvas_of[k] for k in b.keys} == {b.canvases.shape[1:3]}
    assert sum(len(b.keys) == 16 for b in found) >= 8  # mostly full batches, not one image at a time
    assert len(found) <= 225 // 16 + 6


def test_unreadable_images_are_reported_in_place(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    keys = [str(COCO_VAL / "images" / "000000000139.jpg"), str(bad), str(COCO_VAL / "images" / "000000000802.jpg")]
    found = list(batches(keys, rect, 2, 2))
    assert isinstance(found[0], Unreadable) and found[0].key == str(bad) and "empty" in found[0].reason
    assert sorted(k for b in found[1:] for k in b.keys) == sorted([keys[0], keys[2]])
    assert [k for b in list(batches(keys, rect, 2, 0))[1:] for k in b.keys] == [k for b in found[1:] for k in b.keys]


def test_without_overlap_nothing_is_decoded_while_the_model_runs(tmp_path):
    """The model on the decoders' CPU cores: images are decoded between its forwards, never during one (a decode
    thread preempting an OpenMP thread stalls the forward); with overlap (a GPU model) decoding goes on meanwhile."""
    import threading
    import time

    path = str(tmp_path / "a.png")
    cv2.imwrite(path, np.zeros((40, 80, 3), np.uint8))
    busy, lock = [], threading.Lock()

    def slow_prepare(image):
        started = time.perf_counter()
        time.sleep(0.005)
        with lock:
            busy.append((started, time.perf_counter()))
        return rect(image)

    def overlaps(overlap: bool) -> int:
        busy.clear()
        model_runs = []
        for batch in batches([path] * 48, slow_prepare, 8, 2, overlap=overlap):
            started = time.perf_counter()
            time.sleep(0.03)  # the forward
            model_runs.append((started, time.perf_counter()))
        with lock:
            return sum(a < d and c < b for a, b in busy for c, d in model_runs)

    assert overlaps(False) == 0
    assert overlaps(True) > 0


def test_a_rare_shape_waits_a_bounded_number_of_images(tmp_path):
    """One image of a shape nobody else has goes out within OLDEST x waiting_limit images after it arrived (a
    caller grouping images in shards sees each shard done soon after its end), not at the end of the pool."""
    from executor.engine.loop import OLDEST, waiting_limit

    common, rare = str(tmp_path / "common.png"), str(tmp_path / "rare.png")
    cv2.imwrite(common, np.zeros((40, 80, 3), np.uint8))
    cv2.imwrite(rare, np.zeros((80, 40, 3), np.uint8))
    batch, limit = 4, OLDEST * waiting_limit(4)
    keys = [rare] + [common] * (3 * limit)
    arrived = 0
    for found in batches(keys, rect, batch, 0):
        if rare in found.keys:
            assert found.keys == [rare]
            break
        arrived += len(found.keys)
    assert limit - batch <= arrived <= limit  # went out with the image that made it `limit` images old


def test_small_batches_wait_with_as_many_images_as_large_ones():
    from executor.engine.loop import WAITING_BATCHES, WAITING_IMAGES, waiting_limit

    assert waiting_limit(4) == waiting_limit(1) == WAITING_IMAGES
    assert waiting_limit(64) == WAITING_BATCHES * 64 > WAITING_IMAGES
