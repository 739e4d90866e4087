"""The class map of a labelled set (executor/protocol/labelled.py): `data_class<TAB>model_class` lines rename the
data's classes (by name or by index) before they are matched to the model's by name; a coco_names.txt beside the
data is read only when the names alone leave a class unmatched."""
import logging
from pathlib import Path

import pytest
from PIL import Image

from executor.errors import DatasetError
from executor.protocol.labelled import read_class_map, read_labelled

MODEL = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "truck"]


def yolo_set(root: Path, names: list[str], labels: dict[str, str]) -> Path:
    """A data.yaml with a val split of 64x64 images, one YOLO label file each."""
    for stem, text in labels.items():
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(exist_ok=True)
        Image.new("RGB", (64, 64)).save(root / "images" / f"{stem}.jpg")
        (root / "labels" / f"{stem}.txt").write_text(text)
    (root / "data.yaml").write_text("val: images\nnames:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(names)))
    return root / "data.yaml"


def classes_of(samples) -> dict[str, list[int]]:
    return {Path(s.image).stem: s.classes.tolist() for s in samples}


def test_a_map_file_reads_names_and_indices_and_names_its_bad_lines(tmp_path):
    path = tmp_path / "map.txt"
    path.write_text("# VOC and highway style\naeroplane\tairplane\n2\tmotorcycle\n\n")
    assert read_class_map(str(path)).names == {"aeroplane": "airplane", "2": "motorcycle"}
    path.write_text("aeroplane\tairplane\nmotorbike motorcycle\n")
    with pytest.raises(DatasetError, match=r"map.txt line 2: expected 'data_class<TAB>model_class'"):
        read_class_map(str(path))
    path.write_text("car\tcar\nCar\ttruck\n")
    with pytest.raises(DatasetError, match=r"line 2: class 'Car' is mapped twice"):
        read_class_map(str(path))


def test_a_coco_names_beside_the_data_maps_index_keys_when_the_names_do_not_match(tmp_path, caplog):
    spec = yolo_set(tmp_path, ["bus", "car", "motorbike"], {"a": "2 0.5 0.5 0.2 0.2\n0 0.3 0.3 0.1 0.1\n"})
    (tmp_path / "coco_names.txt").write_text("0\tbus\n1\tcar\n2\tmotorcycle\n")
    with caplog.at_level(logging.INFO):
        samples, _ = read_labelled(str(spec), MODEL)
    assert classes_of(samples) == {"a": [3, 5]}
    assert f"class map {tmp_path / 'coco_names.txt'}, found beside the data" in caplog.text


def test_a_coco_names_beside_is_not_read_when_the_names_match(tmp_path, caplog):
    spec = yolo_set(tmp_path, ["bus", "car"], {"a": "1 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "coco_names.txt").write_text("1\ttruck\n")
    with caplog.at_level(logging.INFO):
        samples, _ = read_labelled(str(spec), MODEL)
    assert classes_of(samples) == {"a": [2]} and "by name (no class map)" in caplog.text
    explicit, _ = read_labelled(str(spec), MODEL, class_map=str(tmp_path / "coco_names.txt"))
    assert classes_of(explicit) == {"a": [6]}  # an explicit map is always read


def test_an_explicit_map_renames_by_name_and_unlisted_classes_keep_theirs(tmp_path):
    spec = yolo_set(tmp_path / "voc", ["aeroplane", "person"], {"a": "0 0.5 0.5 0.2 0.2\n1 0.2 0.2 0.1 0.1\n"})
    (tmp_path / "voc.txt").write_text("aeroplane\tairplane\n")
    samples, _ = read_labelled(str(spec), MODEL, class_map=str(tmp_path / "voc.txt"))
    assert classes_of(samples) == {"a": [4, 0]}


def test_a_class_with_no_model_class_after_the_map_is_an_error_naming_it_the_file_and_the_map(tmp_path):
    spec = yolo_set(tmp_path / "set", ["bus", "okapi"], {"a": "0 0.5 0.5 0.2 0.2\n", "b": "1 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "map.txt").write_text("okapi\tgiraffe\n")
    with pytest.raises(DatasetError) as error:
        read_labelled(str(spec), MODEL, class_map=str(tmp_path / "map.txt"))
    message = str(error.value)
    assert "b.txt line 1: class 'okapi'" in message and f"mapped to 'giraffe' by {tmp_path / 'map.txt'}" in message
    (tmp_path / "map.txt").write_text("bus\tbus\n")
    with pytest.raises(DatasetError, match=r"class 'okapi' .*not in the class map .*map.txt\) is not a class"):
        read_labelled(str(spec), MODEL, class_map=str(tmp_path / "map.txt"))
