"""The candidate index read as IndexedPaths: the paths of the straightforward reader (the whole text split into
lines, a set of those seen), held as offsets into the file and read back from it."""
import logging
import os
import pickle

import pytest

from executor.errors import DatasetError
from executor.protocol.index import IndexedPaths, read_candidate_index

TEXT = ("/a/x.jpg\textra\r\n  /a/é y.jpg  \n\n/a/x.jpg\n\t\n/b/z.jpg\r/c/w.jpg\nrel/v.jpg\n/a/é y.jpg\n"
        "\u00a0/d/nbsp.jpg\n./rel/v.jpg\n/e/last.jpg")


def straightforward(path: str, relative_to_index: bool) -> tuple[list[str], list[int]]:
    """The paths and the duplicates' line numbers, as the reader did before it streamed."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    keys, seen, repeated = [], set(), []
    for number, line in enumerate(lines, 1):
        key = line.rstrip("\r").split("\t")[0].strip()
        if not key:
            continue
        if relative_to_index and not os.path.isabs(key):
            key = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), key))
        if key in seen:
            repeated.append(number)
            continue
        seen.add(key)
        keys.append(key)
    return keys, repeated


def test_the_paths_are_those_of_the_straightforward_reader(tmp_path, caplog):
    path = tmp_path / "list.txt"
    path.write_bytes(TEXT.encode("utf-8"))
    keys, repeated = straightforward(str(path), True)
    with caplog.at_level(logging.WARNING):
        found = read_candidate_index(str(path), relative_to_index=True)
    assert isinstance(found, IndexedPaths) and list(found) == keys and len(found) == len(keys) == 7
    assert [found[i] for i in range(-len(keys), len(keys))] == keys + keys
    assert [r.message.split(": duplicate")[0] for r in caplog.records] == [f"{path} line {n}" for n in repeated]
    assert repeated == [4, 9, 11]
    shard = found[2:6]  # a view, as a shard's keys
    assert isinstance(shard, IndexedPaths) and list(shard) == keys[2:6] and shard[-1] == keys[5]
    assert found[::3] == keys[::3] and list(found[6:100]) == keys[6:] and list(found[5:2]) == []
    assert list(pickle.loads(pickle.dumps(shard))) == keys[2:6]  # to a spawned worker
    with pytest.raises(IndexError):
        found[len(keys)]


def test_a_changed_index_file_is_an_error_not_other_paths(tmp_path):
    path = tmp_path / "index.tsv"
    path.write_text("/a/1.jpg\n/a/2.jpg\n")
    found = read_candidate_index(str(path))
    path.write_text("/a/1.jpg\n/a/22.jpg\n")
    with pytest.raises(DatasetError, match="index.tsv changed while the run read its paths"):
        list(found)


def test_paths_of_equal_hash_are_told_apart(tmp_path, monkeypatch):
    """Duplicates are found by 32 bits of a hash, then the paths themselves: with every hash equal, distinct
    paths all stay and only the repeated ones go."""
    from executor.protocol import index

    path = tmp_path / "list.txt"
    path.write_bytes(TEXT.encode("utf-8"))
    monkeypatch.setattr(index, "hash", lambda key: 7, raising=False)
    assert list(read_candidate_index(str(path), relative_to_index=True)) == straightforward(str(path), True)[0]


@pytest.mark.parametrize("chunk", [1 << 20, 40, 7])
def test_plain_chunks_and_odd_lines_read_alike(tmp_path, monkeypatch, caplog, chunk):
    """Chunks of plain absolute paths (read at C speed) between odd lines (read one by one), cut anywhere: the
    same paths and duplicate line numbers as the straightforward reader."""
    from executor.protocol import index

    monkeypatch.setattr(index, "READ_CHUNK", chunk)
    plain = "".join(f"/p/{i:03d}.jpg\n" for i in range(30))
    path = tmp_path / "index.tsv"
    odd = TEXT.replace("./rel/v.jpg\n", "").replace("rel/v.jpg\n", "")  # absolute paths only
    path.write_bytes((plain + "\n/p/004.jpg\n" + odd + "\n" + plain[:40] + "/q/1.jpg")
                     .encode("utf-8"))
    keys, repeated = straightforward(str(path), False)
    with caplog.at_level(logging.WARNING):
        assert list(read_candidate_index(str(path))) == keys
    assert [r.message.split(": duplicate")[0] for r in caplog.records] == [f"{path} line {n}" for n in repeated]
    assert len(repeated) == 6
