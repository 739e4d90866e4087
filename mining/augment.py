"""CALD's four augmented views (flip, cutout, rotate, resize) with the matching reference-box transforms.

Images are H x W (x channels) uint8 arrays, or the same as torch tensors on any device (the executor decoded
them there: the views are then made there too, torch's bilinear sampling standing in for OpenCV's, equal
within rounding); boxes are (N, 4) float xyxy in pixel-edge coordinates (a pixel i spans [i, i+1]), in the
original image. Every view keeps the original size, so its predictions and its transformed reference boxes
share one coordinate frame. Randomness (cutout only) comes from the numpy Generator passed in, the same
draws on either kind of image.
"""
import cv2
import numpy as np
import torch
import torch.nn.functional as F

from mining.boxes import box_ioa

CUTOUT_TRIES = 50
CUTOUT_PATCHES = 2
CUTOUT_SIDE = (0.05, 0.2)      # patch side as a fraction of the image side, drawn per axis
CUTOUT_OVERLAP = (0.1, 0.4)    # accepted if max over boxes of (box ∩ patch) / box area lies here
ROTATE_DEGREES = 5.0           # counter-clockwise on screen, like cv2.getRotationMatrix2D
RESIZE_RATIO = 0.8

View = tuple[np.ndarray, np.ndarray]


def _boxes(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.nan_to_num(b)


def flip_pixels(image: np.ndarray) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        return image.flip(1)
    return np.ascontiguousarray(image[:, ::-1])


def _to_uint8(values: torch.Tensor) -> torch.Tensor:
    return values.round_().clamp_(0, 255).to(torch.uint8)


def _warp_tensor(image: torch.Tensor, m_pixels: np.ndarray) -> torch.Tensor:
    """cv2.warpAffine(image, m_pixels) (bilinear, black border) of an (H, W, C) uint8 tensor: each output pixel
    centre mapped back through the inverse affine and sampled there (grid_sample, zero padding)."""
    h, w = image.shape[:2]
    inverse = np.linalg.inv(np.vstack([m_pixels, [0.0, 0.0, 1.0]]))[:2]
    ys, xs = torch.meshgrid(torch.arange(h, device=image.device, dtype=torch.float32),
                            torch.arange(w, device=image.device, dtype=torch.float32), indexing="ij")
    src_x = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    src_y = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    grid = torch.stack([(2 * src_x + 1) / w - 1, (2 * src_y + 1) / h - 1], -1)[None]  # pixel centres → [-1, 1]
    warped = F.grid_sample(image.permute(2, 0, 1)[None].float(), grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    return _to_uint8(warped[0].permute(1, 2, 0))


def hflip(image: np.ndarray, boxes: np.ndarray) -> View:
    """Mirror left-right; x -> W - x."""
    w = image.shape[1]
    b = _boxes(boxes)
    flipped = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], axis=1)
    return flip_pixels(image), flipped.astype(np.float32)


def cutout_patches(height: int, width: int, boxes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The reference's cutout placement: (P, 4) int xyxy patches, P <= CUTOUT_PATCHES.

    Each of CUTOUT_TRIES tries draws a patch of U(CUTOUT_SIDE)*H x U(CUTOUT_SIDE)*W at a uniform
    position (edges truncated to whole pixels) and keeps it only if the largest covered fraction of
    any box lies in CUTOUT_OVERLAP: part of an object is hidden, never most of it. Without boxes
    no patch qualifies.
    """
    b = _boxes(boxes)
    lo, hi = CUTOUT_OVERLAP
    patches = []
    for _ in range(CUTOUT_TRIES):
        ph, pw = rng.uniform(*CUTOUT_SIDE) * height, rng.uniform(*CUTOUT_SIDE) * width
        left, top = rng.uniform(0, width - pw), rng.uniform(0, height - ph)
        patch = np.array([int(left), int(top), int(left + pw), int(top + ph)])
        if lo <= box_ioa(b, patch.astype(np.float64)).max(initial=0.0) <= hi:
            patches.append(patch)
            if len(patches) == CUTOUT_PATCHES:
                break
    return np.array(patches, dtype=np.int64).reshape(-1, 4)


def cutout(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> View:
    """Black out the cutout_patches; boxes unchanged."""
    out = image.clone() if isinstance(image, torch.Tensor) else image.copy()
    for x1, y1, x2, y2 in cutout_patches(image.shape[0], image.shape[1], boxes, rng):
        out[y1:y2, x1:x2] = 0
    return out, _boxes(boxes).astype(np.float32)


def rotation_matrix(width: int, height: int) -> np.ndarray:
    """2x3 affine of the reference's CenterNet-style rotation, in pixel-edge coordinates.

    Rotate by ROTATE_DEGREES about the image centre and scale by W / max(H, W) (1 for landscape,
    shrinks portrait images so they fit the same width), centre fixed, output size W x H.
    """
    scale = width / max(width, height)
    return cv2.getRotationMatrix2D((width / 2.0, height / 2.0), ROTATE_DEGREES, scale)


def rotate_pixels(image: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """The image turned by rotation_matrix, black border."""
    h, w = image.shape[:2]
    m = rotation_matrix(w, h)
    # OpenCV addresses pixel centres (pixel i is at i, not i + 0.5): shift the translation by
    # (A - I)(0.5, 0.5) so image and boxes turn about the same point.
    m_pixels = m.copy()
    m_pixels[:, 2] += 0.5 * (m[:, 0] + m[:, 1]) - 0.5
    if isinstance(image, torch.Tensor):
        return _warp_tensor(image, m_pixels)
    return cv2.warpAffine(image, m_pixels, (w, h), flags=interpolation, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)


def rotate(image: np.ndarray, boxes: np.ndarray) -> View:
    """Rotated view (bilinear, black border) and the axis-aligned hulls of the rotated boxes, clipped."""
    h, w = image.shape[:2]
    m = rotation_matrix(w, h)
    view = rotate_pixels(image)
    b = _boxes(boxes)
    corners = b[:, [[0, 1], [2, 1], [0, 3], [2, 3]]]          # (N, 4 corners, xy)
    moved = corners @ m[:, :2].T + m[:, 2]                     # (N, 4, 2)
    hull = np.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=1)
    hull = np.clip(hull, 0, [w, h, w, h])
    return view, hull.astype(np.float32)


def shrunk_size(height: int, width: int) -> tuple[int, int]:
    return max(1, round(width * RESIZE_RATIO)), max(1, round(height * RESIZE_RATIO))


def shrink_pixels(image: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """The image shrunk by RESIZE_RATIO at the top-left of a black canvas of its size."""
    h, w = image.shape[:2]
    nw, nh = shrunk_size(h, w)
    if isinstance(image, torch.Tensor):  # as cv2.INTER_LINEAR samples: half-pixel centres, no antialiasing
        canvas = torch.zeros_like(image)
        small = F.interpolate(image.permute(2, 0, 1)[None].float(), size=(nh, nw), mode="bilinear",
                              align_corners=False, antialias=False)
        canvas[:nh, :nw] = _to_uint8(small[0].permute(1, 2, 0))
        return canvas
    canvas = np.zeros_like(image)
    canvas[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=interpolation).reshape((nh, nw) + image.shape[2:])
    return canvas


def resize(image: np.ndarray, boxes: np.ndarray) -> View:
    """Shrink by RESIZE_RATIO and paste at the top-left of a black canvas of the original size."""
    h, w = image.shape[:2]
    nw, nh = shrunk_size(h, w)
    # the true scale per axis (nw / w) differs from 0.8 by under half a pixel; boxes follow the image
    scaled = _boxes(boxes) * np.array([nw / w, nh / h, nw / w, nh / h])
    return shrink_pixels(image), scaled.astype(np.float32)


def make_views(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> list[View]:
    """The 4 CALD views in the fixed order flip, cutout, rotate, resize: [(view image, boxes (N, 4))]."""
    return [hflip(image, boxes), cutout(image, boxes, rng), rotate(image, boxes), resize(image, boxes)]


def mask_views(mask: np.ndarray) -> list[np.ndarray]:
    """A binary (H, W) uint8 mask moved as make_views moves the image, in the same order: flipped, unchanged
    (cutout hides part of the object, the object stays where it was), rotated, shrunk (nearest neighbour)."""
    return [flip_pixels(mask), mask, rotate_pixels(mask, cv2.INTER_NEAREST), shrink_pixels(mask, cv2.INTER_NEAREST)]
