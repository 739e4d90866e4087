"""Index files (ymir-protocol §4.3): candidate lists and training/val lists, read by one reader.

Every failure names the file and line: a missing file, one that is not UTF-8 text, a relative path where the
platform writes absolute ones, a training line without an annotation path. Files are streamed, never held whole;
the candidate list is kept as where each path is written in its file (IndexedPaths: 10 bytes a path, so a pool
of 10⁷ images costs its parent ~100 MB, not the ~1.1 GB of a list of Python strings).
"""
import array
import itertools
import logging
import os
from typing import Iterator, Sequence

import numpy as np

from executor.errors import DatasetError

log = logging.getLogger(__name__)


def index_rows(path: str, what: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, tab-separated fields) of each non-blank line of the index file `path`."""
    for number, _, line in _index_lines(path, what):
        yield number, line.split("\t")


def _index_lines(path: str, what: str) -> Iterator[tuple[int, int, str]]:
    """(line number, byte offset, text) of each non-blank line of the index file `path`, streamed; lines end at
    \\n, \\r\\n or \\r (as text mode reads them)."""
    for number, offset, chunk in _index_chunks(path, what):
        yield from _chunk_lines(path, what, number, offset, chunk)


def _index_chunks(path: str, what: str) -> Iterator[tuple[int, int, bytes]]:
    """The index file in chunks of whole lines (about READ_CHUNK bytes), each with the number of its first line
    and its byte offset."""
    if not path or not os.path.isfile(path):
        raise DatasetError(f"{what} index file not found: {path or '(not set)'}")
    number, offset, rest = 1, 0, b""
    try:
        with open(path, "rb") as handle:
            while block := handle.read(READ_CHUNK):
                block, cut = rest + block, (rest + block).rfind(b"\n") + 1
                if cut:
                    chunk, rest = block[:cut], block[cut:]
                    yield number, offset, chunk
                    number, offset = number + _breaks(chunk), offset + len(chunk)
                else:
                    rest = block
            if rest:
                yield number, offset, rest
    except OSError as exc:
        raise DatasetError(f"{what} index file {path} cannot be read: {exc.strerror or exc}") from None


def _breaks(text: bytes) -> int:
    return text.count(b"\n") + text.count(b"\r") - text.count(b"\r\n")


def _chunk_lines(path: str, what: str, number: int, offset: int, chunk: bytes) -> Iterator[tuple[int, int, str]]:
    """(line number, byte offset, text) of each non-blank line of a chunk of whole lines."""
    pieces = chunk.split(b"\n")
    if chunk.endswith(b"\n"):
        pieces.pop()
    for raw in pieces:
        end = len(raw) + 1
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        for part in raw.split(b"\r"):
            try:
                line = part.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(f"{what} index file {path} is not UTF-8 text ({exc.reason} at byte "
                                   f"{offset + exc.start})") from None
            if line.strip():
                yield number, offset, line
            number, offset = number + 1, offset + len(part) + 1
        offset += end - len(raw) - 1


READ_CHUNK = 1 << 20


def _absolute(path: str, number: int, given: str) -> None:
    if not os.path.isabs(given):
        raise DatasetError(f"{path} line {number}: {given!r} is a relative path; the index must list absolute paths")


class IndexedPaths(Sequence[str]):
    """Candidate paths held as where they are written in their index file (10 bytes each, where a list of Python
    strings costs ~110 per path: 1.1 GB for 10⁷ images) and read back from it when asked: one read for a slice
    (a view, as a shard's keys) walked in order, one small read per path taken by position. The file must not
    change while a run holds it: its size is checked whenever it is opened."""

    def __init__(self, path: str, size: int, starts: np.ndarray, lengths: np.ndarray, folder: str = ""):
        self.path, self.size, self.folder = path, size, folder  # folder: where relative paths are joined (lists)
        self.starts, self.lengths = starts, lengths  # byte offset and length of each path in the file
        self._fd = -1

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, at):
        if isinstance(at, slice):
            start, stop, step = at.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return IndexedPaths(self.path, self.size, self.starts[start:stop], self.lengths[start:stop], self.folder)
        at = range(len(self))[at]  # negative positions; IndexError past the end
        return self._path(os.pread(self._file(), int(self.lengths[at]), int(self.starts[at])))

    def __iter__(self) -> Iterator[str]:
        for lo in range(0, len(self), READ_BLOCK):
            starts, lengths = self.starts[lo:lo + READ_BLOCK], self.lengths[lo:lo + READ_BLOCK]
            first = int(starts[0])
            text = os.pread(self._file(), int(starts[-1]) + int(lengths[-1]) - first, first)
            yield from (self._path(text[begin:begin + length])
                        for begin, length in zip((starts - first).tolist(), lengths.tolist()))

    def _path(self, written: bytes) -> str:
        path = written.decode("utf-8")
        return os.path.normpath(os.path.join(self.folder, path)) if self.folder and not os.path.isabs(path) else path

    def _file(self) -> int:
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDONLY)
            if os.fstat(self._fd).st_size != self.size:
                raise DatasetError(f"candidate index file {self.path} changed while the run read its paths")
        return self._fd

    def __getstate__(self) -> dict:  # to a spawned worker: the arrays, not the open file
        return {**self.__dict__, "_fd": -1}

    def __del__(self):
        if self._fd >= 0:
            os.close(self._fd)


READ_BLOCK = 4096  # paths read back per read when walked in order


def read_candidate_index(path: str, relative_to_index: bool = False) -> IndexedPaths:
    """Image paths of a candidate index: first field of each line, verbatim, each once (a duplicate with a
    warning). A relative path is an error unless `relative_to_index` (local lists), which joins it to the
    index file's folder. Paths are not checked here: a missing file is an unreadable image like any other.
    Streamed: the file is never held whole, and the paths are kept as where they are written (IndexedPaths)."""
    folder = os.path.dirname(os.path.abspath(path)) if relative_to_index else ""
    starts, lengths, hashes = array.array("q"), array.array("H"), array.array("I")
    for first, at, chunk in _index_chunks(path, "candidate"):
        if _plain_paths(chunk, at, starts, lengths, hashes):
            continue
        for number, offset, line in _chunk_lines(path, "candidate", first, at, chunk):
            field = line.split("\t", 1)[0]
            written = field.strip()  # the path as the file has it; a relative one is joined when read back
            if not written:
                continue
            key = os.path.normpath(os.path.join(folder, written)) if folder and not os.path.isabs(written) else written
            _absolute(path, number, key)
            size = len(written.encode("utf-8"))
            if size > 0xFFFF:
                raise DatasetError(f"{path} line {number}: a path of {size} bytes (at most 65535)")
            starts.append(offset + len(field[:len(field) - len(field.lstrip())].encode("utf-8")))
            lengths.append(size)
            hashes.append(hash(key) & 0xFFFFFFFF)
    if not starts:
        raise DatasetError(f"candidate index file is empty: {path}")
    found = IndexedPaths(path, os.path.getsize(path), np.frombuffer(starts, np.int64),
                         np.frombuffer(lengths, np.uint16), folder)
    del starts, lengths
    repeated = _repeated(found, np.frombuffer(hashes, np.uint32))
    del hashes
    if not len(repeated):
        return found
    for number, key in zip(_line_numbers(path, found.starts[repeated]), (found[i] for i in repeated)):
        log.warning("%s line %d: duplicate entry %s is listed once", path, number, key)
    kept = np.ones(len(found), bool)
    kept[repeated] = False
    return IndexedPaths(path, found.size, found.starts[kept], found.lengths[kept], folder)


def _plain_paths(chunk: bytes, offset: int, starts: array.array, lengths: array.array, hashes: array.array) -> bool:
    """The paths of a chunk of whole lines added at C speed when every line is an absolute ASCII path alone
    (no tab, no \\r, no surrounding space; blank lines aside), the platform's index; False (nothing added) for
    any other chunk, which goes line by line."""
    if not chunk.isascii() or b"\t" in chunk or b"\r" in chunk:
        return False
    lines = chunk.decode("ascii").split("\n")
    if chunk.endswith(b"\n"):
        lines.pop()
    if list(map(str.strip, lines)) != lines:
        return False
    sizes = np.fromiter(map(len, lines), np.int64, count=len(lines))
    line_starts = offset + np.cumsum(sizes + 1) - (sizes + 1)
    kept = sizes > 0
    keys = [line for line in lines if line] if not kept.all() else lines
    if not all(map(str.startswith, keys, itertools.repeat("/"))) or (len(sizes) and sizes.max() > 0xFFFF):
        return False
    starts.frombytes(line_starts[kept].tobytes())
    lengths.frombytes(sizes[kept].astype(np.uint16).tobytes())
    hashes.frombytes((np.fromiter(map(hash, keys), np.int64, count=len(keys)) & 0xFFFFFFFF).astype(np.uint32)
                     .tobytes())
    return True


def _repeated(paths: IndexedPaths, hashes: np.ndarray) -> np.ndarray:
    """Positions (ascending) of the paths equal to one before them. `hashes`: 32 bits of each path's hash; only
    paths of a hash seen twice are read back (~10⁴ of 10⁷ distinct paths), so memory stays ~4 bytes a path."""
    ordered = np.sort(hashes)
    twice = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    del ordered
    suspects = []
    for lo in range(0, len(hashes), READ_BLOCK * 64):
        chunk = hashes[lo:lo + READ_BLOCK * 64]
        found = np.searchsorted(twice, chunk)
        suspects.append(lo + np.flatnonzero(twice[np.minimum(found, len(twice) - 1)] == chunk) if len(twice) else
                        np.zeros(0, np.int64))
    seen, repeated = set(), []
    for position in np.concatenate(suspects).tolist():  # ascending: the first of equal paths is kept
        key = paths[position]
        if key in seen:
            repeated.append(position)
        seen.add(key)
    return np.array(repeated, np.int64)


def _line_numbers(path: str, offsets: np.ndarray) -> list[int]:
    """The line number (from 1) of each line start of the file given by its byte offset, offsets ascending."""
    numbers, line, done = [], 1, 0
    with open(path, "rb") as handle:
        for offset in offsets.tolist():
            text = handle.read(offset - done)
            line += text.count(b"\n") + text.count(b"\r") - text.count(b"\r\n")
            done = offset
            numbers.append(line)
    return numbers


def read_training_index(path: str, what: str) -> list[tuple[str, str, int]]:
    """(asset, annotation, line number) per line of a training/val index file (tab-separated, or whitespace
    when a line has no tab)."""
    rows = []
    for number, fields in index_rows(path, what):
        if len(fields) < 2:
            fields = fields[0].split()
        if len(fields) < 2 or not fields[1].strip():
            raise DatasetError(f"{path} line {number}: expected '<image path><TAB><annotation path>'")
        asset, annotation = fields[0].strip(), fields[1].strip()
        for given in (asset, annotation):
            _absolute(path, number, given)
        rows.append((asset, annotation, number))
    return rows
