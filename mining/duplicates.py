"""Near-duplicates: "the same photo", told by a perceptual hash that means the same on any pool.

An image's hash is the signs of the 16 x 16 lowest-frequency DCT coefficients (DC left out: 255 bits) of its
grey image shrunk to 64 x 64, taken on the whole image and on its central 90% and 80%. Two images are the
same photo when, for the best of these pairings, most bits agree:

    similarity(a, b) = max over (crop of a, crop of b) with at least one whole image, and over b mirrored or not,
                       of the share of the 255 bits that agree.

Mirroring an image negates its DCT coefficients of odd horizontal frequency, so the mirrored hash is the hash
with those bits flipped: no second DCT. Re-encoding, resizing, brightness/gamma, noise and mirroring move a
few percent of the bits; a crop to 80-90% about the centre is matched by the crop hashes. Two different photos
agree on about half the bits whatever the domain (a detector's embedding puts all road scenes close together;
this hash does not), so one threshold carries over between pools: measured in docs/mining.md.

A crop that is not about the centre (a few percent off) moves too many bits. For those, `crop_match` compares
two 32 x 32 grey thumbnails by normalised cross-correlation, one scaled to 80-100% of the other's width and
height and slid over it (mirrored or not): the caller asks it only about an image and its nearest neighbour by
embedding (which finds the photo a crop came from: the embedding is pooled over the whole image), so it costs a
few milliseconds per image, not per pair of the pool.

Pure numpy and OpenCV; hash similarities are matrix products of +-1 vectors (agreeing bits = (B + a.b) / 2).
"""
import functools

import cv2
import numpy as np

SIDE = 16                       # DCT coefficients per side kept (SIDE * SIDE - 1 bits)
BITS = SIDE * SIDE - 1
CROPS = (1.0, 0.9, 0.8)         # the whole image, then central crops (share of each side)
HASH_BYTES = (BITS + 7) // 8
HASH_VERSION = "dct16-signs-crops100-90-80-v1"   # in the shards' fingerprint: another hash, other side files
# the bits of odd horizontal frequency (row-major u, v; DC dropped): flipped when the image is mirrored
_MIRROR = (np.tile(np.arange(SIDE), SIDE)[1:] % 2 == 1)
# (crop of a, crop of b) pairs compared: at least one side whole (two crops of one photo are not compared)
_PAIRS = [(i, j) for i in range(len(CROPS)) for j in range(len(CROPS)) if i == 0 or j == 0]
THUMB = 32                      # thumbnail side (the image squeezed to a square, grey)
THUMB_VERSION = "grey32-area-v1"
CROP_SCALES = (1.0, 0.95, 0.9, 0.85, 0.8)   # share of the other's width and height a crop is matched at
CROP_MATCH = 0.93               # normalised cross-correlation from which a thumbnail pair is the same photo
#                                 (planted 85-95% crops of highway: 94% reach it; its 3 nearest other photos: 0.1%)
FLAT = 12                       # grey levels a border row or column may stray from the corner's and still be cut


def content(image: np.ndarray) -> np.ndarray:
    """The grey image without flat borders (letterbox bars, frames): rows and columns at the edges whose pixels
    all lie within FLAT of the corner's value; at most a quarter of each side is taken off. Two photos letterboxed
    alike would otherwise look alike."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    height, width = grey.shape
    edge = int(grey[0, 0])
    near = np.abs(grey.astype(np.int16) - edge) <= FLAT
    flat_rows, flat_cols = near.all(axis=1), near.all(axis=0)
    top = _run(flat_rows, height // 4)
    bottom = _run(flat_rows[::-1], height // 4)
    left = _run(flat_cols, width // 4)
    right = _run(flat_cols[::-1], width // 4)
    return grey[top:height - bottom, left:width - right]


def _run(flat: np.ndarray, limit: int) -> int:
    """How many leading entries of `flat` are True, at most `limit`."""
    stop = np.flatnonzero(~flat[:limit])
    return int(stop[0]) if len(stop) else limit


def photo(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(photo_hash, thumbnail) of an image, its borders found once: what selection keeps of each image."""
    grey = content(image)
    return _hash(grey), _thumbnail(grey)


def photo_hash(image: np.ndarray) -> np.ndarray:
    """(len(CROPS), HASH_BYTES) uint8: the packed hash bits of an RGB or grey uint8 image (H, W[, 3]), its flat
    borders left out."""
    return _hash(content(image))


def _hash(grey: np.ndarray) -> np.ndarray:
    height, width = grey.shape
    rows = []
    for share in CROPS:
        h, w = max(1, round(height * share)), max(1, round(width * share))
        y, x = (height - h) // 2, (width - w) // 2
        small = cv2.resize(grey[y:y + h, x:x + w], (4 * SIDE, 4 * SIDE), interpolation=cv2.INTER_AREA)
        coefficients = cv2.dct(small.astype(np.float32))[:SIDE, :SIDE].reshape(-1)[1:]
        rows.append(np.packbits(coefficients > 0))
    return np.stack(rows)


def signs(hashes: np.ndarray) -> np.ndarray:
    """(N, len(CROPS), BITS) float32 +-1 vectors of packed hashes (N, len(CROPS), HASH_BYTES)."""
    bits = np.unpackbits(np.asarray(hashes, np.uint8), axis=-1)[..., :BITS]
    return bits.astype(np.float32) * 2.0 - 1.0


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) share of agreeing bits of the best pairing, from `signs` vectors."""
    best = np.full((len(a), len(b)), -np.inf, np.float32)
    if not len(a) or not len(b):
        return best
    mirror = np.where(_MIRROR, -1.0, 1.0).astype(np.float32)
    for i, j in _PAIRS:
        for other in (b[:, j], b[:, j] * mirror):
            np.maximum(best, a[:, i] @ other.T, out=best)
    return (best + BITS) / (2 * BITS)


def thumbnail(image: np.ndarray) -> np.ndarray:
    """(THUMB, THUMB) uint8 grey thumbnail of an RGB or grey uint8 image without its flat borders, squeezed to a
    square."""
    return _thumbnail(content(image))


def _thumbnail(grey: np.ndarray) -> np.ndarray:
    return cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA)


def crop_match(a: np.ndarray, b: np.ndarray) -> float:
    """The best normalised cross-correlation of either thumbnail, shrunk to 80-100% of the other's width and
    height (each on its own), slid over the other, mirrored or not: about 1 for a crop of the same photo."""
    best = -1.0
    for small, big in ((a, b), (b, a)):
        targets = _targets(big.tobytes())
        for template in _templates(small.tobytes()) if targets else ():
            for target in targets:
                best = max(best, float(cv2.matchTemplate(target, template, cv2.TM_CCOEFF_NORMED).max()))
    return best


@functools.lru_cache(maxsize=4096)
def _targets(thumb: bytes) -> tuple:
    """A thumbnail as float32 and mirrored; none for a flat one (it correlates with nothing)."""
    image = np.frombuffer(thumb, np.uint8).reshape(THUMB, THUMB).astype(np.float32)
    return () if image.std() == 0 else (image, np.ascontiguousarray(image[:, ::-1]))


@functools.lru_cache(maxsize=4096)
def _templates(thumb: bytes) -> tuple:
    """A thumbnail shrunk to every CROP_SCALES width and height (flat ones left out)."""
    image = np.frombuffer(thumb, np.uint8).reshape(THUMB, THUMB).astype(np.float32)
    shrunk = (cv2.resize(image, (round(THUMB * sx), round(THUMB * sy)), interpolation=cv2.INTER_AREA)
              for sy in CROP_SCALES for sx in CROP_SCALES)
    return tuple(t for t in shrunk if t.std() > 0)
