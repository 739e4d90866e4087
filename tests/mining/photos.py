"""Made-up photo hashes and thumbnails for selection tests: the same photo id gives the same bits and pixels,
different ids are unrelated (random), so near-duplicates are exactly the images told to be copies."""
import numpy as np

from mining import duplicates


def photo_bits(photo: int) -> np.ndarray:
    """(len(CROPS), BITS) bool hash bits of one made-up photo."""
    return np.random.default_rng(1000 + photo).random((len(duplicates.CROPS), duplicates.BITS)) < 0.5


def pack(bits: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(bits, bool), axis=-1)


def hashes_of(photos, changed_bits=None) -> np.ndarray:
    """Packed hashes of images showing `photos` (ids); image i has its first changed_bits[i] bits flipped."""
    rows = []
    for i, photo in enumerate(photos):
        bits = photo_bits(photo).copy()
        if changed_bits is not None:
            bits[:, :changed_bits[i]] ^= True
        rows.append(bits)
    return pack(np.array(rows, bool).reshape(len(rows), len(duplicates.CROPS), duplicates.BITS))


def distinct(n: int) -> np.ndarray:
    return hashes_of(range(n))


def thumbnails_of(photos) -> np.ndarray:
    """(N, THUMB, THUMB) uint8 smooth random pictures, one per photo id."""
    import cv2

    out = []
    for photo in photos:
        coarse = np.random.default_rng(5000 + photo).integers(0, 256, (8, 8), dtype=np.uint8)
        out.append(cv2.resize(coarse, (duplicates.THUMB, duplicates.THUMB), interpolation=cv2.INTER_CUBIC))
    return np.stack(out) if out else np.zeros((0, duplicates.THUMB, duplicates.THUMB), np.uint8)
