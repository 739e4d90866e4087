"""A small, hand-written check of Label Studio's documented import format (no Label Studio here): a tasks JSON
("Basic Label Studio JSON format": a list of tasks, each with `data` holding every `$variable` the labelling
config's object tags read, and `predictions`, each a `result` list of regions in Label Studio's prediction
format) against its labelling config (`<View>` with object tags such as `<Image name value="$var">` and control
tags such as `<RectangleLabels name toName>` with `<Label value>` children).

A region must name a control tag of the config (`from_name`) and the object it labels (`to_name`), have that
control's `type` (its tag name in lower case), labels the control lists, and values inside the image: percent
coordinates in [0, 100] (x + width, y + height included), `original_width` / `original_height` positive
integers, rotations numbers, a score in [0, 1]. `problems` returns what is wrong, empty when the file imports.
"""
import xml.etree.ElementTree as ET

CONTROLS = {"RectangleLabels": "rectanglelabels", "PolygonLabels": "polygonlabels"}
OBJECTS = ("Image",)
EPS = 1e-6


def read_config(xml_text: str) -> tuple[dict, dict]:
    """(object name → its data variable, control name → (type, toName, labels)) of a labelling config."""
    root = ET.fromstring(xml_text)
    if root.tag != "View":
        raise ValueError(f"the config's root is <{root.tag}>, not <View>")
    objects, controls = {}, {}
    for element in root.iter():
        if element.tag in OBJECTS:
            value = element.get("value", "")
            if not element.get("name") or not value.startswith("$"):
                raise ValueError(f"<{element.tag}> needs a name and a value '$variable'")
            objects[element.get("name")] = value[1:]
        elif element.tag in CONTROLS:
            labels = [label.get("value") for label in element.iter("Label")]
            if not element.get("name") or not element.get("toName") or not labels or None in labels:
                raise ValueError(f"<{element.tag}> needs a name, a toName and <Label value> children")
            controls[element.get("name")] = (CONTROLS[element.tag], element.get("toName"), set(labels))
    for name, (_, to_name, _) in controls.items():
        if to_name not in objects:
            raise ValueError(f"control {name!r} labels {to_name!r}, which is no object tag of the config")
    return objects, controls


def number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def in_percent(*values) -> bool:
    return all(number(v) and -EPS <= v <= 100 + EPS for v in values)


def region_problems(where: str, region: dict, controls: dict) -> list[str]:
    found = []
    control = controls.get(region.get("from_name"))
    if control is None:
        return [f"{where}: from_name {region.get('from_name')!r} is no control tag of the config"]
    kind, to_name, labels = control
    if region.get("to_name") != to_name:
        found.append(f"{where}: to_name {region.get('to_name')!r}, the control labels {to_name!r}")
    if region.get("type") != kind:
        found.append(f"{where}: type {region.get('type')!r}, the control is {kind}")
    for key in ("original_width", "original_height"):
        if not isinstance(region.get(key), int) or isinstance(region.get(key), bool) or region[key] <= 0:
            found.append(f"{where}: {key} {region.get(key)!r} is not a positive integer")
    if "image_rotation" in region and not number(region["image_rotation"]):
        found.append(f"{where}: image_rotation is not a number")
    if "score" in region and not (number(region["score"]) and 0 <= region["score"] <= 1):
        found.append(f"{where}: score {region['score']!r} is not in [0, 1]")
    value = region.get("value")
    if not isinstance(value, dict):
        return found + [f"{where}: no value object"]
    given = value.get(kind)
    if not isinstance(given, list) or not given or any(label not in labels for label in given):
        found.append(f"{where}: value.{kind} {given!r} is not a non-empty list of the control's labels")
    if kind == "rectanglelabels":
        x, y, w, h = (value.get(k) for k in ("x", "y", "width", "height"))
        if not in_percent(x, y, w, h) or not in_percent(x + w, y + h):
            found.append(f"{where}: the box {x, y, w, h} is not inside the image in percent")
        if "rotation" in value and not number(value["rotation"]):
            found.append(f"{where}: rotation is not a number")
    elif kind == "polygonlabels":
        points = value.get("points")
        if not isinstance(points, list) or len(points) < 3 or not all(
                isinstance(p, list) and len(p) == 2 and in_percent(*p) for p in points):
            found.append(f"{where}: points must be at least 3 [x, y] pairs in percent")
    return found


def problems(tasks, xml_text: str) -> list[str]:
    """What keeps `tasks` (the parsed JSON) from importing into a project with the config `xml_text`."""
    try:
        objects, controls = read_config(xml_text)
    except (ET.ParseError, ValueError) as exc:
        return [f"config: {exc}"]
    if not isinstance(tasks, list):
        return ["the file is not a list of tasks"]
    found = []
    for number_, task in enumerate(tasks):
        where = f"task {number_}"
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            found.append(f"{where}: no data object")
            continue
        for variable in objects.values():
            if not isinstance(data.get(variable), str) or not data[variable]:
                found.append(f"{where}: data.{variable} (read by the config) is missing or not a URL")
        predictions = task.get("predictions", [])
        if not isinstance(predictions, list):
            found.append(f"{where}: predictions is not a list")
            continue
        for k, prediction in enumerate(predictions):
            if not isinstance(prediction, dict) or not isinstance(prediction.get("result"), list):
                found.append(f"{where} prediction {k}: no result list")
                continue
            if "score" in prediction and not number(prediction["score"]):
                found.append(f"{where} prediction {k}: score is not a number")
            if "model_version" in prediction and not isinstance(prediction["model_version"], str):
                found.append(f"{where} prediction {k}: model_version is not a string")
            for r, region in enumerate(prediction["result"]):
                found += region_problems(f"{where} prediction {k} region {r}", region, controls)
    return found
