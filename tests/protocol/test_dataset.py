import logging
import os

import numpy as np
import pytest
import yaml
from PIL import Image

from executor.errors import DatasetError
from executor.protocol.dataset import annotation_format, export_yolo, read_dataset, read_split, yolo_label_lines
from tests.ymir_builders import (Item, coco_val_names, voc_items, voc_names, write_coco_val_dataset,
                                 write_dataset)

NAMES = ["dog", "cat"]


def image(tmp_path, name="a.jpg", size=(100, 80), color=(10, 200, 30)) -> "os.PathLike":
    path = tmp_path / "src" / name
    path.parent.mkdir(exist_ok=True)
    Image.new("RGB", size, color).save(path, quality=90)
    return path


def read(root, fmt="ark:raw", names=NAMES):
    return read_dataset(str(root / "train-index.tsv"), str(root / "val-index.tsv"), names, fmt)


def one_split(tmp_path, objects, fmt="ark", names=NAMES, **kw):
    """A dataset whose train and val split hold the same single 100x80 image with `objects`."""
    item = Item(image(tmp_path), objects)
    write_dataset(tmp_path / "in", [item], [item], names, fmt, **kw)
    return read_split("train", str(tmp_path / "in" / "train-index.tsv"), names, f"{fmt}:raw")


# ---------------------------------------------------------------- the three readers agree

def test_ark_voc_coco_give_the_same_boxes_and_yolo_labels(tmp_path):
    items = voc_items(30)
    train, val = items[:24], items[24:]
    exported = {}
    for fmt in ("ark", "voc", "coco"):
        root = tmp_path / fmt
        write_dataset(root, train, val, voc_names(), fmt)
        splits = read(root, f"{fmt}:raw", voc_names())
        data_yaml = export_yolo(str(tmp_path / f"yolo_{fmt}"), splits, voc_names())
        labels = {}
        for split in ("train", "val"):
            folder = os.path.join(os.path.dirname(data_yaml), "labels", split)
            labels.update({(split, n): open(os.path.join(folder, n)).read() for n in sorted(os.listdir(folder))})
        exported[fmt] = (splits, labels)
    (ark_splits, ark_labels) = exported["ark"]
    assert sum(len(s.boxes) for s in ark_splits[0].samples) > 50
    for fmt in ("voc", "coco"):
        splits, labels = exported[fmt]
        assert labels == ark_labels, fmt
        for ours, theirs in zip(splits, ark_splits):
            for a, b in zip(ours.samples, theirs.samples):
                np.testing.assert_array_equal(a.boxes, b.boxes)
                np.testing.assert_array_equal(a.classes, b.classes)


def test_boxes_follow_ymir_inclusive_corners(tmp_path):
    split = one_split(tmp_path, [(1, 10, 20, 29, 59)])
    sample = split.samples[0]
    np.testing.assert_array_equal(sample.boxes, [[10, 20, 30, 60]])  # xmax + 1: 20 px wide, 40 px high
    assert sample.classes.tolist() == [1]
    assert yolo_label_lines(sample) == ["1 0.200000 0.500000 0.200000 0.500000\n"]


@pytest.mark.parametrize("line", ["0, 10, 20, 29, 59", "0,10,20,29,59,-1.0", "0, 10, 20, 29, 59, 0.9, 0.0"])
def test_ark_five_six_or_seven_columns(tmp_path, line):
    item = Item(image(tmp_path))
    write_dataset(tmp_path / "in", [item], [item], NAMES, "ark")
    anno = (tmp_path / "in" / "train-index.tsv").read_text().split("\t")[1].strip()
    open(anno, "w").write(line + "\n\n")
    split = read_split("train", str(tmp_path / "in" / "train-index.tsv"), NAMES, "ark:raw")
    np.testing.assert_array_equal(split.samples[0].boxes, [[10, 20, 30, 60]])


def test_coco_val_maps_categories_by_id_and_name_and_drops_crowds(tmp_path):
    names = write_coco_val_dataset(tmp_path / "in", 12, 4)
    assert len(names) == 80
    train, val = read(tmp_path / "in", "seg-coco:raw", names)
    assert len(train.samples) == 12 and len(val.samples) == 4
    person = names.index("person")
    assert train.stats.boxes_per_class[person] > 0
    # category ids run 1..90 with gaps: 'toothbrush' (id 90) must be class 79, not out of range
    assert max(c for s in train.samples for c in s.classes.tolist()) < 80


def test_coco_categories_are_not_positional(tmp_path):
    item = Item(image(tmp_path), [(1, 10, 20, 29, 59)])
    write_dataset(tmp_path / "in", [item], [item], NAMES, "coco")
    # only 'cat' occurs, so categories == [{id: 1, name: cat}]: position 0 must not mean 'dog'
    split = read_split("train", str(tmp_path / "in" / "train-index.tsv"), NAMES, "coco:raw")
    assert split.samples[0].classes.tolist() == [1]
    # a category whose name is not a class is an error naming the file and annotation
    json_path = tmp_path / "in" / "annotations" / "coco-annotations.json"
    json_path.write_text(json_path.read_text().replace('"cat"', '"horse"'))
    with pytest.raises(DatasetError, match=r"coco-annotations.json annotation id 1 .*'horse' is not in class_names"):
        read_split("train", str(tmp_path / "in" / "train-index.tsv"), NAMES, "coco:raw")


def test_voc_truncated_unknown_and_unknown_name(tmp_path):
    split = one_split(tmp_path, [(0, 1, 2, 50, 60)], fmt="voc")
    assert split.samples[0].classes.tolist() == [0]
    xml = (tmp_path / "in" / "train-index.tsv").read_text().split("\t")[1].strip()
    assert "<truncated>unknown</truncated>" in open(xml).read()
    text = open(xml).read()
    open(xml, "w").write(text.replace("<name>dog</name>", "<name>wolf</name>"))
    with pytest.raises(DatasetError, match=r"\.xml object 1 \('wolf'\): class name 'wolf' is not in class_names"):
        read_split("train", str(tmp_path / "in" / "train-index.tsv"), NAMES, "voc:raw")


# ---------------------------------------------------------------- validation rules

def test_class_index_outside_class_names_names_file_and_line(tmp_path):
    item = Item(image(tmp_path), [(0, 1, 1, 20, 20), (2, 1, 1, 20, 20)])
    write_dataset(tmp_path / "in", [item], [item], NAMES, "ark")
    with pytest.raises(DatasetError) as err:
        read(tmp_path / "in")
    assert err.value.code == 300002
    assert ".txt line 2: class index 2 is outside class_names (0..1)" in str(err.value)


def test_negative_class_index_and_bad_fields(tmp_path):
    split_path = tmp_path / "in" / "train-index.tsv"
    item = Item(image(tmp_path))
    write_dataset(tmp_path / "in", [item], [item], NAMES, "ark")
    anno = split_path.read_text().split("\t")[1].strip()
    for text, needle in (("-1, 1, 1, 5, 5", "line 1: class index -1 is outside"),
                         ("0, 1, 1, 5", "line 1: expected 'class, xmin, ymin, xmax, ymax'"),
                         ("0, 1, a, 5, 5", "line 1: box corners must be numbers"),
                         ("\n0.5, 1, 1, 5, 5", "line 2: class index '0.5' is not an integer")):
        open(anno, "w").write(text + "\n")
        with pytest.raises(DatasetError, match=needle):
            read_split("train", str(split_path), NAMES, "ark:raw")


def test_boxes_are_clipped_and_bad_ones_dropped_and_counted(tmp_path):
    objects = [
        (0, -5, -5, 19, 19),      # partly outside: clipped to [0, 0, 20, 20]
        (1, 90, 70, 120, 100),    # partly outside: clipped to [90, 70, 100, 80]
        (0, 30, 30, 28, 40),      # inverted (xmax < xmin - 1)
        (0, 30, 30, 29, 40),      # zero width (inclusive corners: xmax = xmin - 1)
        (1, 200, 10, 220, 20),    # entirely outside the 100x80 image
        (1, 40, 40, 49, 49),      # fine
    ]
    split = one_split(tmp_path, objects)
    sample = split.samples[0]
    np.testing.assert_array_equal(sample.boxes, [[0, 0, 20, 20], [90, 70, 100, 80], [40, 40, 50, 50]])
    assert sample.classes.tolist() == [0, 1, 1]
    assert split.stats.clipped == 2
    assert dict(split.stats.dropped) == {"inverted (negative size)": 1, "zero area": 1, "outside image": 1}


def test_the_first_degenerate_boxes_are_named_in_a_warning(tmp_path, caplog):
    objects = [(0, 30, 30, 29, 40)] * 4 + [(1, 200, 10, 220, 20)] * 3 + [(1, 40, 40, 49, 49)]  # 7 dropped, 1 kept
    with caplog.at_level(logging.WARNING, logger="executor.protocol.dataset"):
        split = one_split(tmp_path, objects)
    assert dict(split.stats.dropped) == {"zero area": 4, "outside image": 3}
    named = [r for r in caplog.records if r.levelno == logging.WARNING and "box dropped" in r.getMessage()]
    assert len(named) == 5
    assert all(".txt line" in r.getMessage() for r in named)  # the annotation file and its line
    assert "line 5: outside image box dropped" in named[-1].getMessage()
    assert "only counted" in named[-1].getMessage()


def test_coco_zero_and_negative_sizes_are_dropped(tmp_path):
    item = Item(image(tmp_path), [(0, 10, 10, 19, 19)])
    write_dataset(tmp_path / "in", [item], [item], NAMES, "coco")
    json_path = tmp_path / "in" / "annotations" / "coco-annotations.json"
    import json
    data = json.loads(json_path.read_text())
    base = data["annotations"][0]
    data["annotations"] += [dict(base, id=2, bbox=[5, 5, 0, 10]), dict(base, id=3, bbox=[5, 5, -3, 10]),
                            dict(base, id=4, bbox=[5, 5, 3, 3], iscrowd=1)]
    json_path.write_text(json.dumps(data))
    split = read_split("train", str(tmp_path / "in" / "train-index.tsv"), NAMES, "coco:raw")
    assert len(split.samples[0].boxes) == 1
    assert dict(split.stats.dropped) == {"zero area": 1, "inverted (negative size)": 1, "crowd region": 1}


def test_unreadable_and_missing_images_are_skipped_and_counted(tmp_path, caplog):
    good = [Item(image(tmp_path, f"g{i}.jpg", color=(80 * i, 0, 0)), [(0, 1, 1, 20, 20)]) for i in range(4)]
    write_dataset(tmp_path / "in", good[:3], good[3:], NAMES, "ark")
    index = tmp_path / "in" / "train-index.tsv"
    lines = index.read_text().splitlines()
    broken = lines[0].split("\t")[0]
    open(broken, "wb").write(b"\xff\xd8 this is not a jpeg")
    lines.append(lines[1].replace(lines[1].split("\t")[0], str(tmp_path / "nowhere.jpg")))
    index.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.INFO):
        train, _ = read(tmp_path / "in")
    assert len(train.samples) == 2
    assert dict(train.stats.skipped) == {"unreadable image": 1, "missing image": 1}
    assert "train: 2 images of 4 listed (skipped: missing image 1, unreadable image 1)" in caplog.text
    assert "dropped boxes: none" in caplog.text


@pytest.mark.parametrize("which", ["train", "val"])
def test_empty_split_is_a_dataset_error(tmp_path, which):
    item = Item(image(tmp_path), [(0, 1, 1, 20, 20)])
    write_dataset(tmp_path / "in", [item], [item], NAMES, "ark")
    (tmp_path / "in" / f"{which}-index.tsv").write_text("\n")
    with pytest.raises(DatasetError, match=f"the {which} set is empty") as err:
        read(tmp_path / "in")
    assert err.value.code == 300002


def test_split_of_only_unreadable_images_is_empty(tmp_path):
    item = Item(image(tmp_path), [(0, 1, 1, 20, 20)])
    write_dataset(tmp_path / "in", [item], [item], NAMES, "ark")
    asset = (tmp_path / "in" / "val-index.tsv").read_text().split("\t")[0]
    open(asset, "wb").write(b"")
    with pytest.raises(DatasetError, match="the train set is empty .*1 unreadable image"):
        read(tmp_path / "in")


def test_index_and_annotation_file_errors(tmp_path):
    item = Item(image(tmp_path), [(0, 1, 1, 20, 20)])
    write_dataset(tmp_path / "in", [item], [item], NAMES, "ark")
    index = tmp_path / "in" / "train-index.tsv"
    with pytest.raises(DatasetError, match="train index file not found"):
        read_split("train", str(tmp_path / "none.tsv"), NAMES, "ark")
    asset, anno = index.read_text().strip().split("\t")
    index.write_text(asset + "\n")
    with pytest.raises(DatasetError, match=r"train-index.tsv line 1: expected"):
        read_split("train", str(index), NAMES, "ark")
    index.write_text(f"{asset}\t{anno}.missing\n")
    with pytest.raises(DatasetError, match=r"line 1: annotation file not found"):
        read_split("train", str(index), NAMES, "ark")


def test_empty_class_names_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="class_names"):
        read_dataset("a", "b", [], "ark:raw")


# ---------------------------------------------------------------- export_format

@pytest.mark.parametrize("value, expected", [("ark:raw", "ark"), ("det-ark:raw", "ark"), ("voc:raw", "voc"),
                                             ("det-voc:raw", "voc"), ("coco:raw", "coco"), ("seg-coco:raw", "coco"),
                                             ("", "voc"), (None, "voc"), ("VOC:raw", "voc"), ("none:raw", "")])
def test_annotation_format(value, expected):
    assert annotation_format(value) == expected


def test_files_win_over_export_format_with_a_warning(tmp_path, caplog):
    item = Item(image(tmp_path), [(1, 10, 20, 29, 59)])
    write_dataset(tmp_path / "in", [item], [item], NAMES, "voc")
    with caplog.at_level(logging.WARNING):
        split = read_split("train", str(tmp_path / "in" / "train-index.tsv"), NAMES, "ark:raw")
    np.testing.assert_array_equal(split.samples[0].boxes, [[10, 20, 30, 60]])
    assert "export_format says ark but the annotation files are voc" in caplog.text


def test_empty_export_format_reads_voc(tmp_path):
    split = one_split(tmp_path, [(1, 10, 20, 29, 59)], fmt="voc")
    again = read_split("train", str(tmp_path / "in" / "train-index.tsv"), NAMES, "")
    np.testing.assert_array_equal(again.samples[0].boxes, split.samples[0].boxes)


# ---------------------------------------------------------------- YOLO export

def test_export_writes_only_under_its_root_with_real_suffixes(tmp_path):
    items = [Item(image(tmp_path, "a.jpg"), [(0, 1, 1, 20, 20)]),
             Item(image(tmp_path, "b.png", color=(1, 2, 3)), [(1, 5, 5, 30, 30)])]
    write_dataset(tmp_path / "in", items, items[:1], NAMES, "ark", asset_ext="unknown")
    before = sorted(str(p) for p in (tmp_path / "in").rglob("*"))
    os.chmod(tmp_path / "in", 0o555)
    try:
        splits = read(tmp_path / "in")
        data_yaml = export_yolo(str(tmp_path / "out" / "yolo_dataset"), splits, NAMES)
    finally:
        os.chmod(tmp_path / "in", 0o755)
    assert sorted(str(p) for p in (tmp_path / "in").rglob("*")) == before
    data = yaml.safe_load(open(data_yaml))
    assert os.path.isabs(data["path"]) and os.path.isabs(data["train"]) and os.path.isabs(data["val"])
    assert data["names"] == {0: "dog", 1: "cat"} and data["nc"] == 2
    train_images = sorted(os.listdir(data["train"]))
    assert sorted(os.path.splitext(n)[1] for n in train_images) == [".jpg", ".png"]
    for name in train_images:
        link = os.path.join(data["train"], name)
        assert os.path.islink(link) and os.readlink(link).endswith(".unknown")
        label = os.path.join(data["path"], "labels", "train", os.path.splitext(name)[0] + ".txt")
        assert os.path.isfile(label)
    # a second export replaces the first, it does not add to it
    export_yolo(str(tmp_path / "out" / "yolo_dataset"), [splits[0], splits[0].__class__("val", [], splits[1].stats)],
                NAMES)
    assert os.listdir(data["val"]) == []


def test_coco_val_names_come_from_the_shared_json():
    assert coco_val_names()[:3] == ["person", "bicycle", "car"] and len(coco_val_names()) == 80
