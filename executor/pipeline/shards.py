"""Shards: the unit of work, of restart and of merging for mining and inference over large pools.

The candidate list is cut into consecutive shards of `shard_size` images (0: auto_shard_size). Each finished
shard is one file, written atomically (temp file + rename) with a fingerprint of everything its content depends
on (weights sha256, algorithm and parameters, network size, post-processing, the shard's own keys and their
result keys), so a rerun after a kill reuses a shard only if it is complete and was made by the same run; a
stale or half-written one is never reused. Batches never span shards, so a shard's content is the same whichever process made it.

A mining shard holds `key<TAB>score` lines sorted best first (ties in index order); the merge orders them by
(-score, shard, position), which is exactly the stable sort of the whole list: the scores alone are ordered first
(numpy argsorts over value buckets: 8 bytes an image, the time per image flat in the number of shards), then each
shard's next lines are read together, a block of lines at a time (merge_order, merged_columns). An infer shard holds one JSON line per image, in index order: its box
records and its decoded width and height (what the labelling-tool exports need), or null and why it is unreadable.
An audit shard (executor/pipeline/audit_shards.py) is laid out as an infer shard, its record the findings of the
image's labels.

A mining shard may have a side file `mining-NNNNNN.npz` (written atomically) with what selection and the report
need (its schema: executor/pipeline/side_files.py). Its fingerprint covers the run and its `spec` says what it holds: it serves any
later run that needs no more than that (so the same pool re-selected with the report off, or other selection
settings, reuses it); a shard is complete only when both of its files are, so resume and several workers treat
the pair as one unit.
"""
import functools
import hashlib
import itertools
import json
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence, TypeVar

import numpy as np

from executor.errors import NoReadableImages
from executor.pipeline.side_files import LOADED, SIDE_FIELDS, SideArrays, SideSpec, side_fields, side_rows
from executor.protocol.writers import atomic_write_text, atomic_writer, format_score

MAGIC = "# quarry-shard"
FORMAT = {"mining": 1, "infer": 2, "audit": 1}  # a shard file's layout, in its header: 2 = infer lines carry the image size
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


class Columns(NamedTuple):
    """Consecutive Rows as one list per field (reason: any iterable)."""
    key: list[str]
    score: list[float]
    reason: Iterable[str]
    shard: list[int]
    line: list[int]


_new_row = functools.partial(tuple.__new__, Row)  # Row._make without its Python-level length check


class Detected(NamedTuple):
    """One image of an infer pass: its record (box records, or a segmentation result's size and instances; None
    when unreadable, with the reason) and its decoded width and height (0 × 0 when unreadable)."""
    key: str
    record: list | dict | None
    width: int
    height: int
    reason: str = ""


def score_order(keys: Sequence[str], scores: Mapping[str, float]) -> list[int]:
    """The indices of `keys` best first, ties in index order: the line order of a mining shard."""
    return sorted(range(len(keys)), key=lambda i: -scores[keys[i]])


class ShardStore:
    """The shard files of one task (`kind`: 'mining', 'infer' or 'audit') in a folder shared by every worker. `side`: what
    the run's side files must hold (None: no side files)."""

    def __init__(self, folder: str, kind: str, run: dict, side: SideSpec | None = None):
        self.folder, self.kind, self.run, self.side = folder, kind, run, side
        self.embedding_dim, self.class_names = 0, []  # set by the worker that writes side files (its model's)
        self._headers: dict[int, str] = {}  # the fingerprint reads every key: once per shard, not per check

    def path(self, shard: Shard | int) -> str:
        index = shard if isinstance(shard, int) else shard.index
        return os.path.join(self.folder, f"{self.kind}-{index:06d}.txt")

    def header(self, shard: Shard) -> str:
        if shard.index not in self._headers:
            digest = fingerprint(self.run, shard.keys, shard.names)
            self._headers[shard.index] = f"{MAGIC} {FORMAT[self.kind]} {self.kind} {digest} {len(shard.keys)}\n"
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
                    data["order"].shape == (len(shard.keys),) and self.side.served_by(json.loads(str(data["spec"])))
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
        arrays = side_rows(self.side, [shard.keys[i] for i in order], side, unreadable, self.embedding_dim,
                           self.class_names)
        arrays.order = np.asarray(order, np.int32)
        held = {name: getattr(arrays, name) for name in SIDE_FIELDS if getattr(arrays, name) is not None}
        held.update(readable=np.array(arrays.readable, np.int64), class_names=np.array(arrays.class_names, dtype=str))
        with atomic_writer(self.side_path(shard), binary=True) as handle:
            np.savez(handle, fingerprint=np.array(self.side_fingerprint(shard)), spec=np.array(self.side.as_json()),
                     **held)

    def side_arrays(self, index: int, *names: str) -> SideArrays:
        """The named fields of shard `index`'s side file (only those are read; one it does not hold stays None)."""
        with np.load(self.side_path(index), allow_pickle=False) as data:
            return SideArrays(**{name: LOADED.get(name, lambda a: a)(data[name]) for name in side_fields(*names)
                                 if name in data.files})

    def side_has(self, index: int, name: str) -> bool:
        side_fields(name)
        try:
            with np.load(self.side_path(index), allow_pickle=False) as data:
                return name in data.files
        except Exception:  # noqa: BLE001
            return False

    def write_records(self, shard: Shard, records: dict[str, object], unreadable: dict[str, str],
                      sizes: Mapping[str, tuple[int, int]]) -> None:
        """One JSON line per key in index order: [key, record, width, height], or [key, null, reason] when
        unreadable."""
        lines = [json.dumps([key, None, unreadable[key]] if key in unreadable else [key, records[key], *sizes[key]],
                            separators=(",", ":")) + "\n" for key in shard.keys]
        atomic_write_text(self.path(shard), self.header(shard) + "".join(lines))

    def _lines(self, index: int) -> Iterator[str]:
        with open(self.path(index), encoding="utf-8") as handle:
            handle.readline()
            yield from handle

    def merged_rows(self, count: int) -> Iterator[Row]:
        """The lines of shards 0..count-1 best first, ties in index order, each with its origin (shard, line
        number); streamed (merged_columns)."""
        for columns in self.merged_columns(count):
            yield from map(_new_row, zip(*columns))

    def merged_columns(self, count: int) -> Iterator[Columns]:
        """merged_rows as columns, MERGE_BLOCK rows at a time: the scores are ordered first (merge_order), then
        each shard's next lines are read together; never more than a block of lines in memory."""
        files = [open(self.path(index), "rb", buffering=READ_BUFFER) for index in range(count)]  # noqa: SIM115
        try:
            total = sum(int(handle.readline().split()[-1]) for handle in files)  # the headers: lines per shard
            consumed = np.zeros(count, np.int64)  # lines of each shard already read
            for shard_of, scores in merge_order((self.negated_scores(i) for i in range(count)), total):
                for lo in range(0, len(shard_of), MERGE_BLOCK):
                    block = shard_of[lo:lo + MERGE_BLOCK]
                    lines, numbers = _next_lines(files, block, consumed)
                    keys, reasons = _fields(lines)
                    yield Columns(keys, scores[lo:lo + MERGE_BLOCK].tolist(), reasons, block.tolist(), numbers)
        finally:
            for handle in files:
                handle.close()

    def negated_scores(self, index: int) -> np.ndarray:
        """-score of each line of mining shard `index`, in line order."""
        with open(self.path(index), "rb") as handle:
            handle.readline()
            text = handle.read()
        lines = text.count(b"\n")
        if text.count(b"\t") == lines:  # no unreadable image: key, score, key, score...
            fields = text.replace(b"\n", b"\t").split(b"\t")[1::2]
        else:
            fields = [line.split(b"\t", 2)[1] for line in text.splitlines()]
        return -np.fromiter(map(float, fields), np.float64, count=lines)

    def keys_at(self, lines: Iterable[tuple[int, int]]) -> dict[tuple[int, int], str]:
        """The key of each (shard, line number) of a mining shard."""
        wanted: dict[int, set[int]] = {}
        for shard, line in lines:
            wanted.setdefault(shard, set()).add(line)
        found = {}
        for shard, numbers in wanted.items():
            for number, line in enumerate(self._lines(shard)):
                if number in numbers:
                    found[shard, number] = line.split("\t", 1)[0]
        return found

    def records(self, count: int) -> Iterator[Detected]:
        """Every image of the infer shards 0..count-1 in index order (streamed)."""
        for index in range(count):
            for line in self._lines(index):
                key, record, *rest = json.loads(line)
                yield Detected(key, None, 0, 0, rest[0]) if record is None else Detected(key, record, *rest)

    def remove(self, count: int) -> None:
        for index in range(count):
            for path in (self.path(index), self.side_path(index)):
                if os.path.exists(path):
                    os.unlink(path)


MERGE_BLOCK = 1 << 15     # output lines placed per step of the merge: its line buffers
MERGE_BUCKET = 1 << 18    # lines ordered per argsort: its temporaries stay small whatever the pool size
READ_BUFFER = 4096        # per open shard file while the merge reads lines (10⁷ images: 4,883 files)


def merge_order(negated: Iterable[np.ndarray], total: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The merge of shards whose lines are sorted best first (`negated`: each shard's -scores; `total` lines in
    all), as (shard of each line, its score) arrays in the merged order: by -score, then shard, then line, i.e.
    the stable sort of the shards laid end to end. The scores are cut by value into buckets of about MERGE_BUCKET
    lines (equal scores share one); a bucket holds a run of consecutive lines of each shard, and a stable argsort
    orders it. The cost per line stays flat whatever the number of shards, where a heap of shards adds a log
    factor and a cache miss per line. Memory: 8 bytes per line, for the scores."""
    scores, starts = np.empty(total), [0]
    for part in negated:  # filled in place: one copy of the scores, never two
        scores[starts[-1]:starts[-1] + len(part)] = part
        starts.append(starts[-1] + len(part))
    if starts[-1] != total:
        raise ValueError(f"the shards hold {starts[-1]} lines, their headers {total}")
    edges = _bucket_edges(scores)
    # bounds[s, b]: the first line of shard s in bucket b (its lines are sorted, so each bucket takes a run of them)
    bounds = np.array([[0, *np.searchsorted(scores[lo:hi], edges), hi - lo] for lo, hi in zip(starts, starts[1:])],
                      np.int64).reshape(len(starts) - 1, len(edges) + 2)
    shard_ids = np.arange(len(starts) - 1)
    for bucket in range(len(edges) + 1):
        counts = bounds[:, bucket + 1] - bounds[:, bucket]
        size = int(counts.sum())
        if not size:
            continue
        first = np.asarray(starts[:-1]) + bounds[:, bucket]  # where each shard's run starts in `scores`
        where = np.repeat(first - (np.cumsum(counts) - counts), counts) + np.arange(size)
        order = np.argsort(scores[where], kind="stable")
        yield np.repeat(shard_ids, counts)[order], -scores[where[order]]


def _bucket_edges(negated: np.ndarray) -> np.ndarray:
    """Values cutting `negated` into ranges of about MERGE_BUCKET values each: quantiles of a sample."""
    buckets = -(-len(negated) // MERGE_BUCKET)
    if buckets < 2:
        return negated[:0]
    sample = np.sort(negated[::max(1, len(negated) // (64 * buckets))])
    edges = np.unique(sample[np.arange(1, buckets) * len(sample) // buckets])
    return edges[~np.isnan(edges)]


def _fields(lines: Sequence[bytes]) -> tuple[list[str], Iterable[str]]:
    """The keys of mining shard lines and their unreadable reasons ('' for a scored image)."""
    text = b"".join(lines).decode("utf-8")
    if text.count("\t") == len(lines):  # no unreadable image: one split for the whole block
        return text.replace("\n", "\t").split("\t")[0::2], itertools.repeat("")
    fields = [line.split("\t", 2) for line in text.split("\n")[:-1]]
    return [found[0] for found in fields], [found[2] if len(found) > 2 else "" for found in fields]


def _next_lines(files: Sequence, block: np.ndarray, consumed: np.ndarray) -> tuple[list[bytes], list[int]]:
    """The next line of shard block[i]'s file for each i, and its line number: the lines wanted from one shard
    are read together, then put in the block's order. `consumed` (lines read per shard) moves on."""
    counts = np.bincount(block, minlength=len(files))
    grouped = np.argsort(block, kind="stable")  # the block's positions, shard by shard
    read: list[bytes] = []
    for shard in np.flatnonzero(counts).tolist():
        read += itertools.islice(files[shard], int(counts[shard]))
    placed = np.empty(len(block), object)
    placed[grouped] = read
    first = np.cumsum(counts) - counts  # where each shard's lines start in `read`
    numbers = np.empty(len(block), np.int64)
    numbers[grouped] = np.arange(len(block)) - first[block[grouped]] + consumed[block[grouped]]
    consumed += counts
    return placed.tolist(), numbers.tolist()


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


def named_records(store: ShardStore, count: int, names: Mapping[str, str]) -> Iterator[Detected]:
    """Every image of the infer shards in index order under its result name, checked (some_readable)."""
    for found in some_readable(store.records(count), len(names), lambda found: found.reason):
        yield found._replace(key=names[found.key])
