"""Labelled sets as people keep them (executor/protocol/labelled.py): a data.yaml split, a YOLO folder (two
layouts), a COCO json and a ymir index give the same validated samples in the MODEL's classes, matched by name."""
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from executor.errors import DatasetError
from executor.protocol.dataset import yolo_label_to_ark
from executor.protocol.labelled import read_labelled, yaml_names
from executor.protocol.yaml_file import read_yaml_mapping
from tests.ymir_builders import COCO_VAL, SHARED

COCO8 = SHARED / "data" / "coco8"
pytestmark = pytest.mark.skipif(not (COCO8 / "data.yaml").is_file() or not (COCO_VAL / "annotations.json").is_file(),
                                reason="needs shared/data/coco8 and shared/data/coco-val")


@pytest.fixture(scope="module")
def names() -> list[str]:
    """The 80 COCO names in yolov8n's order (coco8's data.yaml lists them so)."""
    return yaml_names(read_yaml_mapping(str(COCO8 / "data.yaml"), "data.yaml"), "coco8")


@pytest.fixture
def coco8(tmp_path) -> Path:
    shutil.copytree(COCO8, tmp_path / "coco8")
    return tmp_path / "coco8"


def yolo_boxes(label: Path, width: int, height: int) -> tuple[np.ndarray, list[int]]:
    rows = np.loadtxt(label, ndmin=2)
    cx, cy, w, h = (rows[:, i] for i in range(1, 5))
    boxes = np.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], 1)
    return np.clip(boxes, 0, [width, height, width, height]), rows[:, 0].astype(int).tolist()


def by_name(samples) -> dict:
    return {Path(s.image).name: s for s in samples}


def test_a_data_yaml_split_gives_its_images_with_their_yolo_boxes(coco8, names, caplog):
    samples, source = read_labelled(str(coco8 / "data.yaml"), names)
    assert source == f"{coco8 / 'data.yaml'} key 'val'"
    assert sorted(by_name(samples)) == sorted(p.name for p in (coco8 / "images" / "val").iterdir())
    for sample in samples:
        label = coco8 / "labels" / "val" / (Path(sample.image).stem + ".txt")
        boxes, classes = yolo_boxes(label, sample.width, sample.height)
        np.testing.assert_allclose(sample.boxes, boxes, atol=1e-3)
        assert sample.classes.tolist() == classes and sample.classes.dtype == np.int64
    with caplog.at_level(logging.WARNING):
        train, _ = read_labelled(str(coco8 / "data.yaml"), names, split="train")
    assert len(train) == 4 and "usually what the model trained on" in caplog.text
    with pytest.raises(DatasetError, match=r"data.yaml: no key 'test' \(its splits: val, train\)"):
        read_labelled(str(coco8 / "data.yaml"), names, split="test")


def test_classes_are_matched_to_the_model_by_name_case_insensitive(coco8, names):
    reference = by_name(read_labelled(str(coco8 / "data.yaml"), names)[0])
    model = [n.upper() for n in reversed(names)]  # another order, another case
    for sample in read_labelled(str(coco8 / "data.yaml"), model)[0]:
        expected = reference[Path(sample.image).name]
        assert [model[c] for c in sample.classes] == [names[c].upper() for c in expected.classes]
        np.testing.assert_array_equal(sample.boxes, expected.boxes)


def test_a_class_the_model_lacks_names_the_class_and_the_file(coco8, names):
    label = coco8 / "labels" / "val" / "000000000036.txt"
    used = names[int(label.read_text().split()[0])]
    model = [n for n in names if n != used]
    with pytest.raises(DatasetError) as caught:
        read_labelled(str(coco8 / "data.yaml"), model)
    message = str(caught.value)
    assert f"{label} line 1: class '{used}'" in message and "is not a class of the model" in message
    assert f"the names of {coco8 / 'data.yaml'}" in message


def test_a_yolo_folder_in_either_layout_with_negatives(coco8, names, tmp_path, caplog):
    reference = {**by_name(read_labelled(str(coco8 / "data.yaml"), names)[0]),
                 **by_name(read_labelled(str(coco8 / "data.yaml"), names, split="train")[0])}
    (coco8 / "data.yaml").unlink()
    (coco8 / "classes.txt").write_text("".join(f"{n}\n" for n in names))
    negative = coco8 / "labels" / "train" / "000000000009.txt"
    negative.unlink()
    samples, source = read_labelled(str(coco8), names)
    assert source == f"the YOLO folder {coco8}" and len(samples) == 8
    found = by_name(samples)
    assert len(found["000000000009.jpg"].boxes) == 0 and found["000000000009.jpg"].classes.dtype == np.int64
    for name, sample in found.items():
        if name != "000000000009.jpg":
            np.testing.assert_array_equal(sample.boxes, reference[name].boxes)
            assert sample.classes.tolist() == reference[name].classes.tolist()

    beside = tmp_path / "beside"  # images with their .txt beside them, and no names file: the model's indices
    beside.mkdir()
    for image in (coco8 / "images" / "val").iterdir():
        shutil.copy(image, beside / image.name)
        shutil.copy(coco8 / "labels" / "val" / (image.stem + ".txt"), beside / (image.stem + ".txt"))
    with caplog.at_level(logging.WARNING):
        samples, _ = read_labelled(str(beside), names)
    assert "the label class ids are read as the model's own class indices" in caplog.text
    assert len(samples) == 4
    for name, sample in by_name(samples).items():
        assert sample.classes.tolist() == reference[name].classes.tolist()


def test_a_coco_json_with_its_images_under_images_or_beside_it(tmp_path, names, caplog):
    data = json.loads((COCO_VAL / "annotations.json").read_text())
    chosen = data["images"][:6]
    ids = {image["id"] for image in chosen}
    subset = {"images": chosen, "categories": data["categories"],
              "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}
    folder = tmp_path / "coco"
    (folder / "images").mkdir(parents=True)
    for number, image in enumerate(chosen[:5]):  # the 6th is missing
        target = folder / "images" if number < 3 else folder
        shutil.copy(COCO_VAL / "images" / image["file_name"], target / image["file_name"])
    (folder / "subset.json").write_text(json.dumps(subset))
    with caplog.at_level(logging.WARNING):
        samples, source = read_labelled(str(folder / "subset.json"), names)
    assert source == f"the COCO json {folder / 'subset.json'}"
    assert "1 of its 6 images not found, left out" in caplog.text and len(samples) == 5
    category = {c["id"]: c["name"] for c in data["categories"]}
    for image, sample in zip(chosen, samples):
        assert Path(sample.image).name == image["file_name"]
        kept = [a for a in subset["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]]
        expected = sorted((names.index(category[a["category_id"]]), a["bbox"][0], a["bbox"][1]) for a in kept)
        got = sorted(zip(sample.classes.tolist(), sample.boxes[:, 0].tolist(), sample.boxes[:, 1].tolist()))
        assert [c for c, _, _ in got] == [c for c, _, _ in expected]
        np.testing.assert_allclose([xy for _, *xy in got], [xy for _, *xy in expected], atol=1e-3)
    assert sum(len(s.boxes) for s in samples) > 0


def test_a_ymir_index_with_ark_and_names_beside_it_or_voc(coco8, names, tmp_path):
    reference = by_name(read_labelled(str(coco8 / "data.yaml"), names)[0])
    folder = tmp_path / "ymir"
    folder.mkdir()
    rows = []
    for name, sample in reference.items():
        ark = folder / (Path(name).stem + ".txt")
        label = coco8 / "labels" / "val" / (Path(name).stem + ".txt")
        ark.write_text("".join(yolo_label_to_ark(str(label), sample.width, sample.height, names)))
        rows.append(f"{sample.image}\t{ark}\n")
    (folder / "index.tsv").write_text("".join(rows))
    (folder / "names.txt").write_text("".join(f"{n.title()}\n" for n in names))
    samples, source = read_labelled(str(folder / "index.tsv"), names)
    assert source == f"the ymir index {folder / 'index.tsv'}"
    for name, sample in by_name(samples).items():
        np.testing.assert_allclose(sample.boxes, reference[name].boxes, atol=1e-3)
        assert sample.classes.tolist() == reference[name].classes.tolist()

    image = next(iter(reference.values())).image
    xml = folder / "one.xml"
    xml.write_text("<annotation><object><name>Dog</name><bndbox><xmin>10</xmin><ymin>20</ymin><xmax>109</xmax>"
                   "<ymax>69</ymax></bndbox></object></annotation>")
    (folder / "voc.tsv").write_text(f"{image}\t{xml}\n")
    (sample,), _ = read_labelled(str(folder / "voc.tsv"), names)
    assert sample.classes.tolist() == [names.index("dog")] and sample.boxes.tolist() == [[10, 20, 110, 70]]
    xml.write_text(xml.read_text().replace("Dog", "wolf"))
    with pytest.raises(DatasetError, match=rf"{xml}: class 'wolf' \(the VOC object names\) is not a class"):
        read_labelled(str(folder / "voc.tsv"), names)


@pytest.mark.parametrize("case, needle", [
    ("bad label line", "000000000042.txt line 1: expected 'class cx cy w h'"),
    ("class id beyond the names", "000000000042.txt line 1: class 99 is outside the names of"),
    ("no labels at all", "no YOLO label files for its 4 images"),
    ("no boxes at all", "no labelled boxes in its 4 images"),
    ("names not a list", "'names' must list the class names"),
    ("not a labelled set", "expected a data.yaml, a YOLO folder"),
    ("missing", "no such file or folder"),
])
def test_bad_input_is_a_clear_error(coco8, names, case, needle):
    spec = coco8 / "data.yaml"
    labels = coco8 / "labels" / "val"
    if case == "bad label line":
        (labels / "000000000042.txt").write_text("0 0.5 0.5\n")
    elif case == "class id beyond the names":
        (labels / "000000000042.txt").write_text("99 0.5 0.5 0.1 0.1\n")
    elif case == "no labels at all":
        shutil.rmtree(labels)
    elif case == "no boxes at all":
        for label in labels.iterdir():
            label.write_text("")
    elif case == "names not a list":
        spec.write_text("train: images/train\nval: images/val\nnames: person\n")
    elif case == "not a labelled set":
        spec = next((coco8 / "images" / "val").iterdir())
    elif case == "missing":
        spec = coco8 / "none.yaml"
    with pytest.raises(DatasetError, match=needle):
        read_labelled(str(spec), names)


def test_each_box_keeps_where_it_is_written_past_dropped_and_blank_lines(coco8, names, tmp_path):
    """The label audit names a box's file and line: a blank line and a dropped box shift no later box's line."""
    label = coco8 / "labels" / "val" / "000000000036.txt"
    first, second = label.read_text().splitlines()
    label.write_text(f"\n{first.split()[0]} 1.5 1.5 0.1 0.1\n{first}\n\n{second}\n")  # line 2: outside the image
    found = by_name(read_labelled(str(coco8 / "data.yaml"), names)[0])
    assert found["000000000036.jpg"].sources == [f"{label} line 3", f"{label} line 5"]
    assert found["000000000042.jpg"].sources == [f"{coco8 / 'labels' / 'val' / '000000000042.txt'} line 1"]

    xml = tmp_path / "one.xml"  # a VOC file names its objects, in order
    xml.write_text("<annotation>" + "".join(f"<object><name>{n}</name><bndbox><xmin>10</xmin><ymin>20</ymin>"
                                            "<xmax>109</xmax><ymax>69</ymax></bndbox></object>" for n in ("dog", "cat"))
                   + "</annotation>")
    (tmp_path / "voc.tsv").write_text(f"{coco8 / 'images' / 'val' / '000000000042.jpg'}\t{xml}\n")
    (sample,), _ = read_labelled(str(tmp_path / "voc.tsv"), names)
    assert sample.sources == [f"{xml} object 1 ('dog')", f"{xml} object 2 ('cat')"]
