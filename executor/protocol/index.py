"""Index files (ymir-protocol §4.3): candidate lists and training/val lists, read by one reader.

Every failure names the file and line: a missing file, one that is not UTF-8 text, a relative path where the
platform writes absolute ones, a training line without an annotation path.
"""
import logging
import os
from typing import Iterator

from executor.errors import DatasetError

log = logging.getLogger(__name__)


def index_rows(path: str, what: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, tab-separated fields) of each non-blank line of the index file `path`."""
    if not path or not os.path.isfile(path):
        raise DatasetError(f"{what} index file not found: {path or '(not set)'}")
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().split("\n")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{what} index file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DatasetError(f"{what} index file {path} cannot be read: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\r")
        if line.strip():
            yield number, line.split("\t")


def _absolute(path: str, number: int, given: str) -> None:
    if not os.path.isabs(given):
        raise DatasetError(f"{path} line {number}: {given!r} is a relative path; the index must list absolute paths")


def read_candidate_index(path: str, relative_to_index: bool = False) -> list[str]:
    """Image paths of a candidate index: first field of each line, verbatim, each once (a duplicate with a
    warning). A relative path is an error unless `relative_to_index` (local lists), which joins it to the
    index file's folder. Paths are not checked here: a missing file is an unreadable image like any other."""
    keys, seen = [], set()
    for number, fields in index_rows(path, "candidate"):
        key = fields[0].strip()
        if not key:
            continue
        if relative_to_index and not os.path.isabs(key):
            key = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), key))
        _absolute(path, number, key)
        if key in seen:
            log.warning("%s line %d: duplicate entry %s is listed once", path, number, key)
            continue
        seen.add(key)
        keys.append(key)
    if not keys:
        raise DatasetError(f"candidate index file is empty: {path}")
    return keys


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
