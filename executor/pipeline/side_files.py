"""The schema of a mining shard's side file (`mining-NNNNNN.npz`, uncompressed numpy arrays): SideArrays is what it
holds, row r describing the shard's r-th line; SideSpec is what a run needs of it and is stored in it, so a file
serves any later run that needs no more than it holds. executor/pipeline/shards.py writes and reads the files.
"""
import dataclasses
import json
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from mining.duplicates import CROPS, HASH_BYTES, THUMB


@dataclass(frozen=True)
class SideSpec:
    """What a run needs of its mining side files (scoring.side_spec): the embeddings' pooling version and the photo
    hashes' version ('' none; selection diverse), per-image class counts (class_balance), the predicted boxes (the
    report), and the identity of the model they come from when the scores' own does not name it. Stored in each
    side file as JSON; a file serves a run that needs no more than it holds (`served_by`)."""
    embeddings: str = ""
    hashes: str = ""
    class_counts: bool = False
    boxes: bool = False
    model: Mapping | None = None

    def as_json(self) -> str:
        held = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return json.dumps(held, sort_keys=True, default=str)

    def served_by(self, held: Mapping) -> bool:
        """A side file made for the spec `held` serves this run: everything it asks for is there, of the same kind
        (a file with more, e.g. the report's boxes, serves a run without the report)."""
        same = lambda a, b: json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
        return all(same(held.get(name), value) for name, value in dataclasses.asdict(self).items() if value)


@dataclass
class SideArrays:
    """The schema of a mining side file, row r describing the shard's r-th line; a field not held (or not asked
    for when reading) is None. The predicted boxes of row r are box_xyxy[box_start[r]:box_start[r + 1]] (original
    pixels), with box_conf and box_cls alike."""
    order: np.ndarray | None = None          # (n,) int32: the line's index in the shard's keys
    readable: int | None = None              # rows that are not unreadable (the first `readable`)
    class_names: list[str] | None = None     # the model's classes, in model order
    embeddings: np.ndarray | None = None     # (n, D) float16 (selection diverse)
    hashes: np.ndarray | None = None         # (n, len(CROPS), HASH_BYTES) uint8 photo hashes (selection diverse)
    thumbnails: np.ndarray | None = None     # (n, THUMB, THUMB) uint8 (selection diverse)
    class_counts: np.ndarray | None = None   # (n, C) uint16 predicted boxes per class (class_balance)
    box_start: np.ndarray | None = None      # (n + 1,) int64 offsets (the report)
    box_xyxy: np.ndarray | None = None       # (M, 4) float32
    box_conf: np.ndarray | None = None       # (M,) float32
    box_cls: np.ndarray | None = None        # (M,) int32

    def boxes(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(xyxy, classes, confidences) of row `row`."""
        a, b = self.box_start[row], self.box_start[row + 1]
        return self.box_xyxy[a:b], self.box_cls[a:b], self.box_conf[a:b]

    def box_rows(self) -> np.ndarray:
        """The row of every box."""
        return np.repeat(np.arange(len(self.box_start) - 1), np.diff(self.box_start))


SIDE_FIELDS = tuple(f.name for f in dataclasses.fields(SideArrays))
LOADED = {"readable": int, "class_names": lambda names: [str(n) for n in names]}  # stored as arrays


def side_fields(*names: str) -> tuple[str, ...]:
    """`names`, each a field of SideArrays (a typo fails here, not as a silently missing array)."""
    unknown = set(names) - set(SIDE_FIELDS)
    if unknown:
        raise ValueError(f"side files hold no {sorted(unknown)}; fields: {', '.join(SIDE_FIELDS)}")
    return names


def side_rows(spec: SideSpec, keys: Sequence[str], side: Mapping[str, tuple], unreadable, embedding_dim: int,
              class_names: Sequence[str]) -> SideArrays:
    """The side file of lines `keys` from `side`: per key (embedding, detections, (photo hash, thumbnail)), each
    possibly None (rows left zero)."""
    arrays = SideArrays(readable=sum(1 for k in keys if k not in unreadable), class_names=list(class_names))
    taken = [side.get(key, (None, None, None)) for key in keys]
    if embedding_dim:
        arrays.embeddings = np.zeros((len(keys), embedding_dim), np.float16)
        for r, (embedding, _, _) in enumerate(taken):
            if embedding is not None:
                arrays.embeddings[r] = embedding
    if spec.hashes:
        arrays.hashes = np.zeros((len(keys), len(CROPS), HASH_BYTES), np.uint8)
        arrays.thumbnails = np.zeros((len(keys), THUMB, THUMB), np.uint8)
        for r, (_, _, found) in enumerate(taken):
            if found is not None:
                arrays.hashes[r], arrays.thumbnails[r] = found
    if spec.boxes or spec.class_counts:
        found = [d for _, d, _ in taken]
        sizes = np.array([0 if d is None else len(d) for d in found], np.int64)
        picked = [d for d in found if d is not None and len(d)]
        cls = np.concatenate([d.cls for d in picked]).astype(np.int32) if picked else np.zeros(0, np.int32)
        if spec.boxes:
            arrays.box_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            arrays.box_xyxy = (np.concatenate([d.xyxy for d in picked]).astype(np.float32) if picked
                               else np.zeros((0, 4), np.float32))
            arrays.box_conf = (np.concatenate([d.conf for d in picked]).astype(np.float32) if picked
                               else np.zeros(0, np.float32))
            arrays.box_cls = cls
        if spec.class_counts:
            arrays.class_counts = np.zeros((len(keys), len(class_names)), np.uint16)
            np.add.at(arrays.class_counts, (np.repeat(np.arange(len(keys)), sizes), cls), 1)
    return arrays
