"""The photo hash: copies of one photo agree on most bits, different photos on about half, on real images."""
import glob
import os

import cv2
import numpy as np
import pytest

from mining import duplicates

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "..", "shared")
COCO = sorted(glob.glob(os.path.join(SHARED, "data", "coco-val", "images", "*.jpg")))[:12]
HIGHWAY = sorted(glob.glob(os.path.join(SHARED, "data", "highway", "train", "images", "*.jpg")))[:40]


def rgb(path: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)


def reencoded(image: np.ndarray, quality: int, scale: float = 1.0) -> np.ndarray:
    h, w = image.shape[:2]
    small = cv2.resize(image, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA)
    return cv2.imdecode(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_UNCHANGED)


def copies(image: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    h, w = image.shape[:2]
    noisy = 255 * (image / 255.0) ** 0.8 + rng.normal(0, 6, image.shape)
    return {"jpeg40+resize80": reencoded(image, 40, 0.8),
            "crop88-offset": image[int(h * 0.07):int(h * 0.95), int(w * 0.04):int(w * 0.92)],
            "gamma+noise": np.clip(noisy, 0, 255).astype(np.uint8),
            "mirrored": np.ascontiguousarray(image[:, ::-1])}


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(duplicates.similarity(duplicates.signs(a[None]), duplicates.signs(b[None]))[0, 0])


@pytest.mark.skipif(not COCO, reason="../shared/data/coco-val is missing")
def test_copies_of_a_photo_agree_and_different_photos_do_not():
    rng = np.random.default_rng(0)
    hashes = [duplicates.photo_hash(rgb(p)) for p in COCO]
    assert hashes[0].shape == (len(duplicates.CROPS), duplicates.HASH_BYTES) and hashes[0].dtype == np.uint8
    crops_matched = 0
    for path, original in zip(COCO[:6], hashes):
        image = rgb(path)
        for kind, copy in copies(image, rng).items():
            matched = duplicates.crop_match(duplicates.thumbnail(image), duplicates.thumbnail(copy))
            if kind == "crop88-offset":  # a crop off the centre moves too many hash bits: crop_match's case
                crops_matched += matched >= duplicates.CROP_MATCH
            else:
                assert matched >= duplicates.CROP_MATCH, (path, kind)
                assert similarity(original, duplicates.photo_hash(copy)) >= 0.9, (path, kind)
        h, w = image.shape[:2]
        central = image[int(h * 0.05):int(h * 0.95), int(w * 0.05):int(w * 0.95)]
        assert similarity(original, duplicates.photo_hash(central)) >= 0.9
    assert crops_matched >= 5  # 94% of planted crops reach CROP_MATCH (docs/mining.md)
    all_signs = duplicates.signs(np.stack(hashes))
    between = duplicates.similarity(all_signs, all_signs)
    np.fill_diagonal(between, 0)
    assert between.max() < 0.8
    assert np.allclose(np.diag(duplicates.similarity(all_signs, all_signs)), 1.0)
    thumbs = [duplicates.thumbnail(rgb(p)) for p in COCO]
    assert max(duplicates.crop_match(a, b) for i, a in enumerate(thumbs) for b in thumbs[i + 1:]) < \
        duplicates.CROP_MATCH


@pytest.mark.skipif(not HIGHWAY, reason="../shared/data/highway is missing")
def test_photos_of_one_domain_are_not_near_duplicates():
    """Road photos that a COCO detector's embedding puts within cosine 0.97 of each other differ by hash."""
    hashes = duplicates.signs(np.stack([duplicates.photo_hash(rgb(p)) for p in HIGHWAY]))
    between = duplicates.similarity(hashes, hashes)
    np.fill_diagonal(between, 0)
    assert between.max() < 0.85


def test_flat_borders_are_left_out():
    rng = np.random.default_rng(2)
    photo = cv2.resize(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), (160, 120), interpolation=cv2.INTER_CUBIC)
    boxed = cv2.copyMakeBorder(photo, 30, 30, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0))  # letterbox bars
    assert duplicates.content(boxed).shape == (120, 160)
    assert np.array_equal(duplicates.photo_hash(boxed), duplicates.photo_hash(photo))
    assert np.array_equal(duplicates.thumbnail(boxed), duplicates.thumbnail(photo))


def test_grey_flat_and_tiny_images():
    assert duplicates.photo_hash(np.zeros((3, 2), np.uint8)).shape == (3, duplicates.HASH_BYTES)
    flat = duplicates.thumbnail(np.full((20, 30, 3), 7, np.uint8))
    assert flat.shape == (duplicates.THUMB, duplicates.THUMB) and duplicates.crop_match(flat, flat) == -1.0
    image = np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    assert np.array_equal(duplicates.photo_hash(image), duplicates.photo_hash(grey))


def test_photo_is_the_hash_and_the_thumbnail_from_one_border_search():
    image = cv2.copyMakeBorder(np.random.default_rng(3).integers(0, 255, (50, 70, 3), dtype=np.uint8), 9, 9, 0, 0,
                               cv2.BORDER_CONSTANT, value=(0, 0, 0))
    found, small = duplicates.photo(image)
    assert np.array_equal(found, duplicates.photo_hash(image)) and np.array_equal(small, duplicates.thumbnail(image))
