"""Shards: the unit of work, of restart and of merging for mining and inference over large pools.

The candidate list is cut into consecutive shards of `shard_size` images. Each finished shard is one file,
written atomically (temp file + rename) with a fingerprint of everything its content depends on (weights
sha256, algorithm and parameters, network size, post-processing, the shard's own keys), so a rerun after a
kill reuses a shard only if it is complete and was made by the same run; a stale or half-written one is
never reused. Batches never span shards, so a shard's content is the same whichever process made it.

A mining shard holds `key<TAB>score` lines sorted best first (ties in index order); the merge is a k-way
merge by (-score, shard, position), which is exactly the stable sort of the whole list: its memory is one
line per shard, whatever the pool size. An infer shard holds one JSON line per image, in index order.
"""
import hashlib
import heapq
import json
import os
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

from executor.errors import NoReadableImages
from executor.writers import atomic_write_text, format_score

MAGIC = "# quarry-shard 1"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(run: dict, keys: Sequence[str]) -> str:
    """sha256 of the run's identity (a JSON-able dict) and the shard's keys."""
    digest = hashlib.sha256(json.dumps(run, sort_keys=True, default=str).encode())
    for key in keys:
        digest.update(b"\0" + key.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


@dataclass(frozen=True)
class Shard:
    index: int
    start: int   # position of its first key in the candidate list
    keys: Sequence[str]


def plan(keys: Sequence[str], shard_size: int) -> list[Shard]:
    return [Shard(i, start, keys[start:start + shard_size])
            for i, start in enumerate(range(0, len(keys), shard_size))]


def shards_of_rank(shards: Sequence[Shard], rank: int, world: int) -> list[Shard]:
    """The shards of worker `rank` of `world`: every world-th, so each worker gets a share of every region."""
    return [shard for shard in shards if shard.index % world == rank]


class ShardStore:
    """The shard files of one task (`kind`: 'mining' or 'infer') in a folder shared by every worker."""

    def __init__(self, folder: str, kind: str, run: dict):
        self.folder, self.kind, self.run = folder, kind, run

    def path(self, shard: Shard | int) -> str:
        index = shard if isinstance(shard, int) else shard.index
        return os.path.join(self.folder, f"{self.kind}-{index:06d}.txt")

    def header(self, shard: Shard) -> str:
        return f"{MAGIC} {self.kind} {fingerprint(self.run, shard.keys)} {len(shard.keys)}\n"

    def complete(self, shard: Shard) -> bool:
        """The shard's file exists, was made by this run for these keys, and holds one line per key."""
        try:
            with open(self.path(shard), encoding="utf-8") as handle:
                if handle.readline() != self.header(shard):
                    return False
                return sum(1 for _ in handle) == len(shard.keys)
        except (OSError, UnicodeDecodeError):
            return False

    def write_scores(self, shard: Shard, scores: dict[str, float], unreadable: dict[str, str]) -> None:
        """key<TAB>score, best first, ties in index order; an unreadable image's line ends with its reason."""
        order = sorted(range(len(shard.keys)), key=lambda i: -scores[shard.keys[i]])
        lines = [f"{key}\t{format_score(scores[key])}" + (f"\t{_one_line(unreadable[key])}" if key in unreadable else "")
                 + "\n" for key in (shard.keys[i] for i in order)]
        atomic_write_text(self.path(shard), self.header(shard) + "".join(lines))

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

    def records(self, count: int) -> Iterator[tuple[str, object, str]]:
        """(key, record or None, unreadable reason or '') of shards 0..count-1 in index order (streamed)."""
        for index in range(count):
            for line in self._lines(index):
                key, record, *reason = json.loads(line)
                yield key, record, reason[0] if reason else ""

    def remove(self, count: int) -> None:
        for index in range(count):
            if os.path.exists(self.path(index)):
                os.unlink(self.path(index))


def ranked_rows(store: ShardStore, count: int, total: int) -> Iterator[tuple[str, float]]:
    """The merged ranking of `count` shards, checked: all of the `total` images unreadable is NoReadableImages
    (raised at the end of the stream, so the writer never renames its temp file)."""
    unreadable, first = 0, ""
    for key, score, reason in store.merged_scores(count):
        if reason:
            unreadable, first = unreadable + 1, first or reason
        yield key, score
    if total and unreadable == total:
        raise NoReadableImages(f"none of the {total} images could be read; first: {first}")


def named_records(store: ShardStore, count: int, names: Mapping[str, str]) -> Iterator[tuple[str, list]]:
    """(result name, box records) of every image in index order, checked like ranked_rows."""
    unreadable, first = 0, ""
    for key, record, reason in store.records(count):
        if reason:
            unreadable, first = unreadable + 1, first or reason
        yield names[key], record or []
    if names and unreadable == len(names):
        raise NoReadableImages(f"none of the {len(names)} images could be read; first: {first}")
