"""Every result file the executor writes, each written atomically (temp file + rename in the same dir)."""
import contextlib
import json
import math
import os
import tempfile
from typing import Callable, Iterable, Iterator, Mapping, Sequence, TextIO

UNREADABLE_SCORE = -1.0  # sentinel for images that could not be read: below every real score (all are >= 0)


@contextlib.contextmanager
def atomic_writer(path: str, binary: bool = False) -> Iterator[TextIO]:
    """A text (or `binary`) handle on a temp file beside `path`, renamed onto it when the block ends without an
    error (and removed when it does not): readers see either the old file or the whole new one. The one way the
    executor writes a file of its own."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as handle:
            yield handle
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` to `path` so that readers see either the old file or the whole new one."""
    with atomic_writer(path) as handle:
        handle.write(text)


def format_score(score: float) -> str:
    return repr(float(score))


def ranked(scored: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """(path, score) best first; ties keep input order so equal scores stay deterministic."""
    rows = list(scored)
    for path, score in rows:
        if not math.isfinite(score):
            raise ValueError(f"non-finite mining score {score} for {path}")
    return sorted(rows, key=lambda row: -row[1])


def mining_lines(scored: Iterable[tuple[str, float]]) -> list[str]:
    """`path<TAB>score` lines, best first."""
    return [f"{path}\t{format_score(score)}\n" for path, score in ranked(scored)]


def write_mining_result(path: str, scored: Iterable[tuple[str, float]]) -> None:
    atomic_write_text(path, "".join(mining_lines(scored)))


def write_ranked(path: str, ranked_rows: Iterable[tuple[str, float]]) -> None:
    """result.tsv from rows already best first (streamed: memory does not grow with the pool)."""
    with atomic_writer(path) as handle:
        for key, score in ranked_rows:
            if not math.isfinite(score):
                raise ValueError(f"non-finite mining score {score} for {key}")
            handle.write(f"{key}\t{format_score(score)}\n")


def box_record(xyxy: Sequence[float], class_name: str, score: float) -> dict:
    """One detection in ymir's form: integer top-left x, y and width, height in original pixels."""
    x1, y1, x2, y2 = (int(round(float(v))) for v in xyxy)
    return {"box": {"x": x1, "y": y1, "w": max(0, x2 - x1), "h": max(0, y2 - y1)},
            "class_name": class_name, "score": round(float(score), 6)}


def write_infer_result(path: str, per_image: Iterable[tuple[str, list[dict]]] | Mapping[str, list[dict]],
                       list_key: str | Sequence[str] = "boxes") -> None:
    """{"detection": {name: {list_key: boxes}}} from (name, box records) pairs, names unique (streamed);
    `list_key` is `boxes` for protocol >= 1.1.0, `annotations` below, or both (see config.Env.infer_list_key)."""
    keys = (list_key,) if isinstance(list_key, str) else tuple(list_key)
    pairs = per_image.items() if isinstance(per_image, Mapping) else per_image
    with atomic_writer(path) as handle:
        handle.write('{"detection":{')
        for number, (name, boxes) in enumerate(pairs):
            entry = json.dumps({key: boxes for key in keys}, separators=(",", ":"))
            handle.write(("," if number else "") + json.dumps(name) + ":" + entry)
        handle.write("}}\n")


def instance_record(xyxy: Sequence[float], class_name: str, score: float, rle: dict) -> dict:
    """One predicted instance: its box [x, y, w, h] (float pixels), class, confidence, mask (COCO RLE at the
    original size) and the mask's area in pixels."""
    from pycocotools import mask as mask_utils

    x1, y1, x2, y2 = (float(v) for v in xyxy)
    area = int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))
    return {"bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)], "class_name": class_name,
            "confidence": round(float(score), 6), "segmentation": rle, "area": area}


def class_ids(class_names: Sequence[str]) -> dict[str, int]:
    """Class name → its index in the model (the first, should a model name two classes alike)."""
    ids: dict[str, int] = {}
    for number, name in enumerate(class_names):
        ids.setdefault(name, number)
    return ids


def coco_categories(class_names: Sequence[str]) -> list[dict]:
    """COCO `categories`: every class of the model in model order, id = class index + 1."""
    return [{"id": number, "name": name, "supercategory": ""} for number, name in enumerate(class_names, 1)]


def write_instances_result(path: str, per_image: Callable[[], Iterable[tuple[str, dict | list]]],
                           class_names: Sequence[str]) -> None:
    """The COCO result of instance segmentation (ymir-protocol §5.4) from (name, record) pairs in image order,
    a record being {height, width, instances: [instance_record]} (an unreadable image: [] or None, listed with
    size 0 x 0 and no annotations). `per_image` is called twice (images, then annotations: streamed)."""
    category = class_ids(class_names)
    with atomic_writer(path) as handle:
        handle.write('{"images":[')
        for image_id, (name, record) in enumerate(per_image(), 1):
            size = record if isinstance(record, dict) else {}
            entry = {"id": image_id, "file_name": name, "width": size.get("width", 0), "height": size.get("height", 0)}
            handle.write(("," if image_id > 1 else "") + json.dumps(entry, separators=(",", ":")))
        handle.write('],"categories":' + json.dumps(coco_categories(class_names), separators=(",", ":"))
                     + ',"annotations":[')
        count = 0
        for image_id, (_, record) in enumerate(per_image(), 1):
            for instance in record.get("instances", []) if isinstance(record, dict) else []:
                count += 1
                entry = {"id": count, "image_id": image_id, "category_id": category[instance["class_name"]] + 1,
                         "segmentation": instance["segmentation"], "bbox": instance["bbox"], "area": instance["area"],
                         "iscrowd": 0, "confidence": instance["confidence"]}
                handle.write(("," if count > 1 else "") + json.dumps(entry, separators=(",", ":")))
        handle.write("]}\n")


def _metric(stage: str, key: str, value) -> float:
    number = float(value)
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise ValueError(f"stage {stage}: {key} {value!r} is not a number in [0, 1]")
    return number


def write_training_result(path: str, stages: Mapping[str, Mapping], best_stage_name: str, multi_stage: bool,
                          evaluate_config: Mapping | None = None, attachments: Mapping[str, Sequence[str]] | None = None,
                          legacy_files: Sequence[str] = (), object_type: int = 2) -> None:
    """result.yaml (ymir-protocol §5.2). `stages` maps a stage name to {files, timestamp, mAP[, mAR, tp, fp, fn]}
    with files as basenames under models_dir/<stage>/; instance segmentation (`object_type` 4) stages also need
    maskAP (and may have boxAP), and the best maskAP is written at the top too. Protocol >= 1.0.0
    (`multi_stage`) gets model_stages, best_stage_name, the best mAP, evaluate_config, attachments and
    object_type; older platforms get {model, map} with `legacy_files`, which must then lie directly in models_dir."""
    import yaml

    masks = object_type == 4
    if best_stage_name not in stages:
        raise ValueError(f"best_stage_name {best_stage_name!r} is not one of the stages {sorted(stages)}")
    model_stages = {}
    for name, stage in stages.items():
        if not name.isidentifier():
            raise ValueError(f"stage name {name!r} is not an identifier")
        files = [str(f) for f in stage["files"]]
        if not files or any(os.path.basename(f) != f for f in files):
            raise ValueError(f"stage {name}: files must be basenames, got {files}")
        record = {"stage_name": name, "files": files, "timestamp": int(stage["timestamp"]),
                  "mAP": _metric(name, "mAP", stage["mAP"])}
        if masks:
            if stage.get("maskAP") is None:
                raise ValueError(f"stage {name}: an instance-segmentation stage needs maskAP")
            record["maskAP"] = _metric(name, "maskAP", stage["maskAP"])
            if stage.get("boxAP") is not None:
                record["boxAP"] = _metric(name, "boxAP", stage["boxAP"])
        if stage.get("mAR") is not None:
            record["mAR"] = _metric(name, "mAR", stage["mAR"])
        for key in ("tp", "fp", "fn"):
            if stage.get(key) is not None:
                record[key] = max(0, int(stage[key]))
        model_stages[name] = record
    best_map = model_stages[best_stage_name]["mAP"]
    top = {"maskAP": model_stages[best_stage_name]["maskAP"]} if masks else {}
    if multi_stage:
        payload = {"best_stage_name": best_stage_name, **top, "mAP": best_map, "model_stages": model_stages}
        if evaluate_config:
            payload["evaluate_config"] = {k: float(v) for k, v in evaluate_config.items()}
        if attachments:
            payload["attachments"] = {section: [str(f) for f in files] for section, files in attachments.items() if files}
        payload["object_type"] = int(object_type)
    else:
        if not legacy_files or any(os.path.basename(f) != f for f in legacy_files):
            raise ValueError(f"the legacy result needs model files as basenames, got {list(legacy_files)}")
        payload = {"model": [str(f) for f in legacy_files], "map": best_map, **top}
    atomic_write_text(path, yaml.safe_dump(payload, sort_keys=False))
