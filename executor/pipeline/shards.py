"""Shards: the unit of work, of restart and of merging for mining and inference over large pools.

The candidate list is cut into consecutive shards of `shard_size` images (0: auto_shard_size). Each finished
shard is one file, written atomically (temp file + rename) with a fingerprint of everything its content depends
on (weights sha256, algorithm and parameters, network size, post-processing, the shard's own keys and their
result keys), so a rerun after a kill reuses a shard only if it is complete and was made by the same run; a
stale or half-written one is never reused. Batches never span shards, so a shard's content is the same whichever process made it.

A mining shard holds `key<TAB>score` lines sorted best first (ties in index order); the merge is a k-way
merge by (-score, shard, position), which is exactly the stable sort of the whole list: its memory is one
line per shard, whatever the pool size. An infer shard holds one JSON line per image, in index order.

A mining shard may have a side file `mining-NNNNNN.npz` (uncompressed numpy arrays, written atomically) with
what selection and the report need, row r describing the shard's r-th line: `order` (the line's index in the
shard's keys), `embeddings` (n, D) float16, `hashes` (n, 3, 32) uint8 photo hashes and `thumbnails` (n, 32, 32)
uint8 (selection: diverse),
`class_counts` (n, C) uint16 (class_balance),
the predicted boxes (report: `box_start` (n+1,) offsets into `box_xyxy` (M, 4), `box_conf` (M,), `box_cls` (M,))
and `readable` (how many rows are not unreadable). Its fingerprint covers the run and its `spec` says what it holds:
it serves any later run that needs no more than that (so the same pool re-selected with the report off, or other
selection settings, reuses it); a shard is complete only when both of its files are, so resume and several
workers treat the pair as one unit.
"""
import functools
import hashlib
import heapq
import json
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence, TypeVar

import numpy as np

from executor.errors import NoReadableImages
from executor.protocol.writers import atomic_write_text, atomic_writer, format_score
from mining.duplicates import CROPS, HASH_BYTES, THUMB

MAGIC = "# quarry-shard 1"
T = TypeVar("T")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes (cached per path, size and modification time: shard stores ask per task)."""
    stat = os.stat(path)
    return _file_sha256(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(run: dict, keys: Sequence[str], names: Sequence[str] = ()) -> str:
    """sha256 of the run's identity (a JSON-able dict), the shard's keys and their result keys (when given: random
    and CALD draw from them)."""
    digest = hashlib.sha256(json.dumps(run, sort_keys=True, default=str).encode())
    for key in keys:
        digest.update(b"\0" + key.encode("utf-8", "surrogateescape"))
    if names:
        digest.update(b"\0names")
        for name in names:
            digest.update(b"\0" + name.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


@dataclass(frozen=True)
class Shard:
    index: int
    start: int   # position of its first key in the candidate list
    keys: Sequence[str]
    names: Sequence[str] = ()  # the keys' result keys, where the job gives them (Job.names)


# shard_size 0 (auto): about SHARDS_PER_WORKER shards per worker, within [MIN_AUTO_SHARD, MAX_AUTO_SHARD] images
SHARDS_PER_WORKER, MIN_AUTO_SHARD, MAX_AUTO_SHARD = 8, 64, 2048


def auto_shard_size(pool: int, workers: int) -> int:
    """The shard size of shard_size 0: ceil(pool / (8 * workers)), so each worker finishes several shards (what
    a Ctrl-C keeps) and the workers end close together; at least 64 images, as each shard costs two files and a
    part-filled batch; at most 2048, as before. Only the pool size and the worker count decide it, so every
    worker and a rerun plan the same shards."""
    return min(MAX_AUTO_SHARD, max(MIN_AUTO_SHARD, -(-pool // (SHARDS_PER_WORKER * max(1, workers)))))


def plan(keys: Sequence[str], shard_size: int, names: Sequence[str] = ()) -> list[Shard]:
    return [Shard(i, start, keys[start:start + shard_size], names[start:start + shard_size])
            for i, start in enumerate(range(0, len(keys), shard_size))]


def shards_of_rank(shards: Sequence[Shard], rank: int, world: int) -> list[Shard]:
    """The shards of worker `rank` of `world`: every world-th, so each worker gets a share of every region."""
    return [shard for shard in shards if shard.index % world == rank]


class Row(NamedTuple):
    """One line of the merged mining shards: where it came from (shard index, line number in that shard)."""
    key: str
    score: float
    reason: str   # unreadable: why ('' for a scored image)
    shard: int
    line: int


def score_order(keys: Sequence[str], scores: Mapping[str, float]) -> list[int]:
    """The indices of `keys` best first, ties in index order: the line order of a mining shard."""
    return sorted(range(len(keys)), key=lambda i: -scores[keys[i]])


def holds(held: Mapping, needed: Mapping) -> bool:
    """A side file made for the spec `held` serves a run that needs `needed`: everything it asks for is there, of
    the same kind (a file with more, e.g. the report's boxes, serves a run without the report)."""
    return all(json.dumps(held.get(key), sort_keys=True, default=str) == json.dumps(value, sort_keys=True, default=str)
               for key, value in needed.items() if value)


class ShardStore:
    """The shard files of one task (`kind`: 'mining' or 'infer') in a folder shared by every worker. `side`: what
    the run's side files must hold (None: no side files), part of their fingerprint."""

    def __init__(self, folder: str, kind: str, run: dict, side: dict | None = None):
        self.folder, self.kind, self.run, self.side = folder, kind, run, side
        self.embedding_dim, self.class_names = 0, []  # set by the worker that writes side files (its model's)
        self._headers: dict[int, str] = {}  # the fingerprint reads every key: once per shard, not per check

    def path(self, shard: Shard | int) -> str:
        index = shard if isinstance(shard, int) else shard.index
        return os.path.join(self.folder, f"{self.kind}-{index:06d}.txt")

    def header(self, shard: Shard) -> str:
        if shard.index not in self._headers:
            digest = fingerprint(self.run, shard.keys, shard.names)
            self._headers[shard.index] = f"{MAGIC} {self.kind} {digest} {len(shard.keys)}\n"
        return self._headers[shard.index]

    def side_path(self, shard: Shard | int) -> str:
        index = shard if isinstance(shard, int) else shard.index
        return os.path.join(self.folder, f"{self.kind}-{index:06d}.npz")

    def side_fingerprint(self, shard: Shard) -> str:
        return fingerprint({"run": self.run, "side file": 2}, shard.keys, shard.names)

    def complete(self, shard: Shard) -> bool:
        """The shard's file exists, was made by this run for these keys, and holds one line per key (and so does
        its side file, when the run has one)."""
        try:
            with open(self.path(shard), encoding="utf-8") as handle:
                if handle.readline() != self.header(shard):
                    return False
                if sum(1 for _ in handle) != len(shard.keys):
                    return False
        except (OSError, UnicodeDecodeError):
            return False
        return self.side is None or self.side_complete(shard)

    def side_complete(self, shard: Shard) -> bool:
        try:
            with np.load(self.side_path(shard), allow_pickle=False) as data:
                return str(data["fingerprint"]) == self.side_fingerprint(shard) and \
                    data["order"].shape == (len(shard.keys),) and holds(json.loads(str(data["spec"])), self.side)
        except Exception:  # noqa: BLE001 — missing, half-written, foreign: not complete
            return False

    def write_scores(self, shard: Shard, scores: dict[str, float], unreadable: dict[str, str],
                     side: dict | None = None) -> None:
        """key<TAB>score, best first, ties in index order; an unreadable image's line ends with its reason.
        `side`: per key (embedding, detections, (photo hash, thumbnail); each may be None), written first to the
        side file."""
        order = score_order(shard.keys, scores)
        if self.side is not None:
            self.write_side(shard, order, side or {}, unreadable)
        lines = [f"{key}\t{format_score(scores[key])}" + (f"\t{_one_line(unreadable[key])}" if key in unreadable else "")
                 + "\n" for key in (shard.keys[i] for i in order)]
        atomic_write_text(self.path(shard), self.header(shard) + "".join(lines))

    def write_side(self, shard: Shard, order: Sequence[int], side: Mapping[str, tuple], unreadable) -> None:
        keys = [shard.keys[i] for i in order]
        arrays = {"fingerprint": np.array(self.side_fingerprint(shard)),
                  "spec": np.array(json.dumps(self.side, sort_keys=True, default=str)),
                  "order": np.asarray(order, np.int32),
                  "readable": np.array(sum(1 for k in keys if k not in unreadable), np.int64),
                  "class_names": np.array([str(n) for n in self.class_names], dtype=str)}
        dim, classes = self.embedding_dim, len(self.class_names)
        if dim:
            rows = np.zeros((len(keys), dim), np.float16)
            for r, key in enumerate(keys):
                if key in side and side[key][0] is not None:
                    rows[r] = side[key][0]
            arrays["embeddings"] = rows
        if self.side.get("hashes"):
            hashes = np.zeros((len(keys), len(CROPS), HASH_BYTES), np.uint8)
            thumbnails = np.zeros((len(keys), THUMB, THUMB), np.uint8)
            for r, key in enumerate(keys):
                if key in side and side[key][2] is not None:
                    hashes[r], thumbnails[r] = side[key][2]
            arrays["hashes"], arrays["thumbnails"] = hashes, thumbnails
        if self.side.get("boxes") or self.side.get("class_counts"):
            found = [side[k][1] if k in side and side[k][1] is not None else None for k in keys]
            sizes = np.array([0 if d is None else len(d) for d in found], np.int64)
            picked = [d for d in found if d is not None and len(d)]
            cls = np.concatenate([d.cls for d in picked]).astype(np.int32) if picked else np.zeros(0, np.int32)
            if self.side.get("boxes"):
                arrays["box_start"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
                arrays["box_xyxy"] = (np.concatenate([d.xyxy for d in picked]).astype(np.float32) if picked
                                      else np.zeros((0, 4), np.float32))
                arrays["box_conf"] = (np.concatenate([d.conf for d in picked]).astype(np.float32) if picked
                                      else np.zeros(0, np.float32))
                arrays["box_cls"] = cls
            if self.side.get("class_counts"):
                counts = np.zeros((len(keys), classes), np.uint16)
                owner = np.repeat(np.arange(len(keys)), sizes)
                np.add.at(counts, (owner, cls), 1)
                arrays["class_counts"] = counts
        with atomic_writer(self.side_path(shard), binary=True) as handle:
            np.savez(handle, **arrays)

    def side_arrays(self, index: int, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The named arrays of shard `index`'s side file (only those are read)."""
        with np.load(self.side_path(index), allow_pickle=False) as data:
            return {name: data[name] for name in names if name in data.files}

    def side_has(self, index: int, name: str) -> bool:
        try:
            with np.load(self.side_path(index), allow_pickle=False) as data:
                return name in data.files
        except Exception:  # noqa: BLE001
            return False

    def write_records(self, shard: Shard, records: dict[str, object], unreadable: dict[str, str]) -> None:
        """One JSON line per key in index order: [key, record], or [key, null, reason] when unreadable."""
        lines = [json.dumps([key, None, unreadable[key]] if key in unreadable else [key, records[key]],
                            separators=(",", ":")) + "\n" for key in shard.keys]
        atomic_write_text(self.path(shard), self.header(shard) + "".join(lines))

    def _lines(self, index: int) -> Iterator[str]:
        with open(self.path(index), encoding="utf-8") as handle:
            handle.readline()
            yield from handle

    def merged_scores(self, count: int) -> Iterator[tuple[str, float, str]]:
        """(key, score, unreadable reason or '') of shards 0..count-1, best first, ties in index order (streamed:
        one line per shard in memory)."""
        def rows(index: int) -> Iterator[tuple[float, int, list]]:
            for line in self._lines(index):
                fields = line.rstrip("\n").split("\t", 2)
                yield -float(fields[1]), index, fields

        # (−score, shard) never ties between two shards, so the lists behind them are never compared
        for negative, _, fields in heapq.merge(*(rows(i) for i in range(count))):
            yield fields[0], -negative, fields[2] if len(fields) > 2 else ""

    def merged_rows(self, count: int) -> Iterator[Row]:
        """merged_scores with each line's origin (shard, line number): the same order, streamed."""
        def rows(index: int):
            for line_no, line in enumerate(self._lines(index)):
                fields = line.rstrip("\n").split("\t", 2)
                yield -float(fields[1]), index, line_no, fields

        for negative, index, line_no, fields in heapq.merge(*(rows(i) for i in range(count))):
            yield Row(fields[0], -negative, fields[2] if len(fields) > 2 else "", index, line_no)

    def records(self, count: int) -> Iterator[tuple[str, object, str]]:
        """(key, record or None, unreadable reason or '') of shards 0..count-1 in index order (streamed)."""
        for index in range(count):
            for line in self._lines(index):
                key, record, *reason = json.loads(line)
                yield key, record, reason[0] if reason else ""

    def remove(self, count: int) -> None:
        for index in range(count):
            for path in (self.path(index), self.side_path(index)):
                if os.path.exists(path):
                    os.unlink(path)


def some_readable(items: Iterable[T], total: int, reason: Callable[[T], str]) -> Iterator[T]:
    """`items` as they stream; when all of the `total` images turn out unreadable (`reason` of each non-empty),
    NoReadableImages at the end of the stream, so the writer consuming it never renames its temp file."""
    unreadable, first = 0, ""
    for item in items:
        why = reason(item)
        if why:
            unreadable, first = unreadable + 1, first or why
        yield item
    if total and unreadable == total:
        raise NoReadableImages(f"none of the {total} images could be read; first: {first}")


def ranked_rows(store: ShardStore, count: int, total: int, located: bool = False) -> Iterator:
    """The merged ranking of `count` shards, checked (some_readable): (key, score) pairs, or with `located` the
    Row of each line (where it came from, for selection and the report)."""
    rows = store.merged_rows(count) if located else store.merged_scores(count)
    for row in some_readable(rows, total, lambda row: row[2]):
        yield row if located else row[:2]


def named_records(store: ShardStore, count: int, names: Mapping[str, str], unreadable_as_none: bool = False
                  ) -> Iterator[tuple[str, list | None]]:
    """(result name, box records) of every image in index order, checked (some_readable); an unreadable image
    has none ([], or None with `unreadable_as_none`)."""
    for key, record, reason in some_readable(store.records(count), len(names), lambda item: item[2]):
        yield names[key], (None if unreadable_as_none else []) if reason else record
