"""The label audit on planted mistakes (issue 29): copies of voc2007 (all its images) and of a seeded draw of
highway's valid split get known mistakes (benchmarks/planted.py), `start.py audit`'s pass (read_labelled with the
set's coco_names.txt as the class map, one forward, mining/audit.py) ranks its findings, and each type is scored
at K = the number planted against a random ranking and, for the types found on a labelled box, the ranking of the
labelled boxes by 1 - their best IoU with any prediction (at the audit's low confidence). Speed: the audit's
images/s (reading the labels, the forward, the findings, writing audit.json/.csv) ÷ entropy mining's on the same
images with the same model.

    .venv/bin/python -m benchmarks.audit                 # both sets on CPU (a few minutes on 2 cores)
    .venv/bin/python -m benchmarks.audit --highway-images 40 --skip-speed   # smoke run

Writes benchmarks/results/audit-latest.json (--json) and the generated section of docs/audit.md (--markdown).
"""
import datetime
import functools
import json
import logging
import os
import shlex
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks import planted as pl  # noqa: E402
from executor.runtime import prepare_process_env  # noqa: E402

log = logging.getLogger("benchmarks.audit")
SEED = 29
HIGHWAY_IMAGES = 300
FALSE_ALARMS = 12  # the best-ranked findings that hit nothing, kept for inspection


def parse_args(argv=None):
    from benchmarks import SHARED as shared, benchmark_parser

    p = benchmark_parser("audit", __doc__)
    p.add_argument("--voc", default=os.path.join(shared, "data", "voc2007"))
    p.add_argument("--highway", default=os.path.join(shared, "data", "highway"))
    p.add_argument("--highway-images", type=int, default=HIGHWAY_IMAGES,
                   help=f"a seeded draw of this many of highway's valid images (default {HIGHWAY_IMAGES})")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--speed-reps", type=int, default=2, help="timed audit and entropy runs per set, alternating")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results", "audit-latest.json"))
    p.add_argument("--markdown", default=os.path.join(REPO, "docs", "audit.md"),
                   help="the doc whose generated section is rewritten ('' for none)")
    return p.parse_args(argv)


# ---------------------------------------------------------------- the sets, read and written as files

def voc_images(root: str) -> list[pl.Image]:
    """Every image of a VOC folder with its boxes in the readers' frame ([xmin, ymin, xmax + 1, ymax + 1])."""
    from benchmarks.gt import image_size

    images = []
    for name in sorted(n for n in os.listdir(os.path.join(root, "JPEGImages")) if n.lower().endswith(".jpg")):
        path = os.path.join(root, "JPEGImages", name)
        height, width = image_size(path)
        xml = ET.parse(os.path.join(root, "Annotations", os.path.splitext(name)[0] + ".xml")).getroot()
        boxes = [pl.Box(obj.findtext("name").strip(), voc_box(obj.find("bndbox"))) for obj in xml.iter("object")]
        images.append(pl.Image(name, path, width, height, boxes))
    return images


def voc_box(corners) -> tuple:
    """A VOC bndbox (inclusive corners) in the readers' frame."""
    x1, y1, x2, y2 = (float(corners.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax"))
    return x1, y1, x2 + 1, y2 + 1


def highway_images(root: str, count: int, seed: int) -> list[pl.Image]:
    """A seeded draw of `count` images of highway's valid split with their YOLO boxes in pixels (class: the id)."""
    import numpy as np

    from benchmarks.gt import image_size, parse_yolo_txt

    folder = os.path.join(root, "valid", "images")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".jpg", ".jpeg", ".png")))
    drawn = sorted(np.random.default_rng(seed).choice(names, min(count, len(names)), replace=False).tolist())
    images = []
    for name in drawn:
        path = os.path.join(folder, name)
        height, width = image_size(path)
        label = os.path.join(root, "valid", "labels", os.path.splitext(name)[0] + ".txt")
        boxes = [pl.Box(own, tuple(box)) for own, box in
                 (parse_yolo_txt(label, width, height) if os.path.isfile(label) else [])]
        images.append(pl.Image(name, path, width, height, boxes))
    return images


def write_voc(images: list[pl.Image], folder: str) -> str:
    """VOC xml files and a ymir index of them (the original images); returns the index."""
    os.makedirs(os.path.join(folder, "Annotations"))
    lines = []
    for image in images:
        root = ET.Element("annotation")
        for box in image.boxes:
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = box.cls
            corners = ET.SubElement(obj, "bndbox")
            x1, y1, x2, y2 = box.xyxy
            for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (x1, y1, x2 - 1, y2 - 1)):
                ET.SubElement(corners, tag).text = str(int(round(value)))
        xml = os.path.join(folder, "Annotations", os.path.splitext(image.key)[0] + ".xml")
        ET.ElementTree(root).write(xml)
        lines.append(f"{image.path}\t{xml}\n")
    index = os.path.join(folder, "index.tsv")
    with open(index, "w", encoding="utf-8") as handle:
        handle.writelines(lines)
    return index


def write_yolo(images: list[pl.Image], folder: str, names: list[str]) -> str:
    """images/ (links to the originals), labels/ and a data.yaml naming the classes; returns the data.yaml."""
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(folder, sub))
    for image in images:
        os.symlink(image.path, os.path.join(folder, "images", image.key))
        rows = []
        for box in image.boxes:
            x1, y1, x2, y2 = box.xyxy
            rows.append(f"{box.cls} {(x1 + x2) / 2 / image.width:.6f} {(y1 + y2) / 2 / image.height:.6f} "
                        f"{(x2 - x1) / image.width:.6f} {(y2 - y1) / image.height:.6f}\n")
        with open(os.path.join(folder, "labels", os.path.splitext(image.key)[0] + ".txt"), "w") as handle:
            handle.writelines(rows)
    spec = os.path.join(folder, "data.yaml")
    with open(spec, "w", encoding="utf-8") as handle:
        handle.write("val: images\nnames:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(names)))
    return spec


def highway_names(root: str) -> list[str]:
    from executor.protocol.labelled import yaml_names
    from executor.protocol.yaml_file import read_yaml_mapping

    spec = os.path.join(root, "data.yaml")
    return yaml_names(read_yaml_mapping(spec, "data.yaml"), spec)


# ---------------------------------------------------------------- one set: the audit, the baselines, the speed

class Pass:
    """The audit's pass over a written set, timed as `start.py audit` runs it (read; forward and findings in shards,
    executor/pipeline/audit_shards.py; the files), with the benchmark's loaded model."""

    def __init__(self, spec: str, class_map: str, models: dict, folder: str):
        from executor.pipeline.audit_shards import AuditPass, run_audit
        from executor.pipeline.label_audit import write_audit
        from executor.protocol.labelled import read_labelled
        from mining.audit import CONFIDENT_CONF, SUPPORT_CONF

        detector = models["audit"]
        start = time.perf_counter()
        self.samples, source = read_labelled(spec, detector.names, "val", class_map)
        run = AuditPass(detector.weights, models["settings"], tuple(self.samples), CONFIDENT_CONF, SUPPORT_CONF,
                        os.path.join(folder, "shards"), load=lambda weights, settings: detector)
        self.audit = run_audit(run, detector.names, lambda f: None)
        write_audit(self.audit, {"data": {"source": source}}, os.path.join(folder, "audit.json"),
                    os.path.join(folder, "audit.csv"))
        self.seconds = time.perf_counter() - start
        self.detector, self.batch = detector, models["batch"]

    @functools.cached_property
    def predictions(self) -> list:
        """What the pass's model predicts on each sample (untimed: the IoU baseline reads it)."""
        from executor.engine.evaluation import predict_candidates
        from mining.audit import SUPPORT_CONF

        return predict_candidates(self.detector, self.samples, SUPPORT_CONF, self.batch, lambda f: None)

    def found(self) -> list[pl.Found]:
        out = []
        for item in self.audit.findings:
            f = item.finding
            other = f.evidence.box if f.kind == pl.DUPLICATE and f.evidence is not None else None
            out.append(pl.Found(f.kind, os.path.basename(item.image), f.score, tuple(f.box), other))
        return out

    def box_best_iou(self) -> tuple[list[tuple[str, tuple]], list[float]]:
        """Every labelled box (key, xyxy) and its best IoU with any prediction the pass kept."""
        from mining.boxes import box_iou

        boxes, best = [], []
        for sample, det in zip(self.samples, self.predictions):
            overlap = box_iou(det.xyxy, sample.boxes)
            for g, box in enumerate(sample.boxes):
                boxes.append((os.path.basename(sample.image), tuple(float(v) for v in box)))
                best.append(float(overlap[:, g].max()) if len(det.xyxy) else 0.0)
        return boxes, best


def score(run: Pass, planted: list[pl.Planted]) -> dict:
    """Per type and overall: the audit at K, the random ranking, and (box types) the IoU ranking."""
    found = run.found()
    hit = pl.hits(found, planted)
    boxes, best = run.box_best_iou()
    images = len(run.samples)
    out = {"types": {}}
    for kind in pl.TYPES:
        own = [p for p in planted if p.kind == kind]
        mine = [n for n, f in enumerate(found) if f.kind == kind]
        candidates = images if kind == pl.MISSING else len(boxes)
        row = {"planted": len(own), "candidates": candidates,
               "audit": pl.at_k([found[n].score for n in mine], [hit[n] for n in mine], len(own)),
               "random": len(own) / candidates if candidates else float("nan")}
        if kind in pl.BOX_TYPES:
            row["iou"] = pl.iou_baseline(boxes, best, planted, kind)
        out["types"][kind] = row
    candidates = images + len(boxes)
    out["overall"] = {"planted": len(planted), "candidates": candidates,
                      "audit": pl.at_k([f.score for f in found], hit, len(planted)),
                      "random": len(planted) / candidates}
    out["false_alarms"] = false_alarms(run, hit, planted)
    return out


def false_alarms(run: Pass, hit: list[bool], planted: list[pl.Planted]) -> list[dict]:
    """The best-ranked findings that hit no planted mistake: the image (its original file), type, score, fix, and
    the type of a planted mistake it lies on when it found one under another type."""
    from executor.pipeline.label_audit import fix_text

    out = []
    for rank, (item, is_hit) in enumerate(zip(run.audit.findings, hit), 1):
        if is_hit:
            continue
        f = item.finding
        key = os.path.basename(item.image)
        on = [p.kind for p in planted if p.key == key and pl.iou(p.xyxy, f.box) >= pl.MISSING_IOU]
        out.append({"rank": rank, "image": os.path.realpath(item.image), "type": f.kind, "score": round(f.score, 4),
                    "planted_as": on[0] if on else None,
                    "class": run.audit.name(f.cls), "box": [round(v, 1) for v in f.box],
                    "evidence": None if f.evidence is None else {
                        "class": run.audit.name(f.evidence.cls), "iou": round(f.evidence.iou, 3),
                        "confidence": None if f.evidence.conf is None else round(f.evidence.conf, 3)},
                    "fix": fix_text(run.audit, item)})
        if len(out) == FALSE_ALARMS:
            break
    return out


def entropy_seconds(paths: list[str], detector) -> float:
    from benchmarks import speed

    return speed.mine_timed(paths, detector, speed.mining_config(detector.weights, "entropy"))["seconds"]


def one_set(name: str, images: list[pl.Image], write, class_map: str, models, args) -> dict:
    """Plant, write, audit (timed), score; then the speed against entropy mining on the same images."""
    altered, planted = pl.plant(images, args.seed)
    with tempfile.TemporaryDirectory(prefix=f"quarry-audit-{name}-") as folder:
        spec = write(altered, os.path.join(folder, "data"))
        run = Pass(spec, class_map, models, folder)
        result = {"images": len(images), "boxes_before": sum(len(i.boxes) for i in images),
                  "boxes": sum(len(s.boxes) for s in run.samples),
                  "planted": {kind: sum(p.kind == kind for p in planted) for kind in pl.TYPES},
                  "class_map": class_map, **score(run, planted)}
        log.info("%s: %d images, %d boxes, %d planted; audit %.1f s", name, len(images), result["boxes"], len(planted),
                 run.seconds)
        if not args.skip_speed:
            result["speed"] = timed([s.image for s in run.samples],
                                    lambda: Pass(spec, class_map, models, folder),
                                    models["mining"], args.speed_reps)
    return result


def timed(paths: list[str], again, mining, reps: int) -> dict:
    """Audit and entropy seconds, alternating who goes first (the untimed first audit pass warmed both up)."""
    entropy_seconds(paths[:8], mining)  # warm-up of the mining path
    audit_s, entropy_s = [], []
    for rep in range(reps):
        steps = [lambda: audit_s.append(again().seconds), lambda: entropy_s.append(entropy_seconds(paths, mining))]
        for step in (steps if rep % 2 else steps[::-1]):
            step()
    audit_rate, entropy_rate = len(paths) * reps / sum(audit_s), len(paths) * reps / sum(entropy_s)
    return {"images": len(paths), "reps": reps, "audit_seconds": audit_s, "entropy_seconds": entropy_s,
            "audit_images_per_s": audit_rate, "entropy_images_per_s": entropy_rate, "ratio": audit_rate / entropy_rate}


def load_models(weights: str) -> dict:
    """The audit's detector (start.py audit's) and mining's (as a mining run loads it), same settings, CPU."""
    from executor.engine.device import batch_size
    from executor.pipeline.error_fit import labelled_pass_detector
    from executor.pipeline.passes import Models
    from executor.pipeline.plan import weights_for
    from executor.protocol.settings import build_settings
    from executor.runtime import cpu_threads
    from benchmarks import speed

    settings = build_settings("mining", speed.mining_config(weights, "entropy"))
    settings = settings.replace(cpu_threads=cpu_threads(settings.cpu_threads))
    audit = labelled_pass_detector(weights, settings)
    mining = Models().detector(settings, weights_for(settings, ""))
    return {"audit": audit, "mining": mining, "batch": batch_size(settings.batch_size_per_gpu, False),
            "img_size": audit.img_size, "settings": settings}


def main(argv=None) -> int:
    from benchmarks import audit_report, log_to_stderr
    from executor.protocol.writers import atomic_write_text

    args = parse_args(argv)
    prepare_process_env()
    log_to_stderr()
    started = time.time()
    models = load_models(args.weights)
    results = {"command": ("python -m benchmarks.audit " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
                           ).strip(),
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "weights": os.path.relpath(args.weights, REPO), "img_size": models["img_size"], "seed": args.seed,
               "rate": pl.RATE, "cpu_count": os.cpu_count(), "sets": {}}
    results["sets"]["voc2007"] = one_set("voc2007", voc_images(args.voc), write_voc,
                                         os.path.join(args.voc, "coco_names.txt"), models, args)
    names = highway_names(args.highway)
    results["sets"]["highway"] = one_set(
        "highway", highway_images(args.highway, args.highway_images, args.seed),
        lambda images, folder: write_yolo(images, folder, names), os.path.join(args.highway, "coco_names.txt"),
        models, args)
    results["wall_seconds"] = time.time() - started
    results["targets"] = audit_report.targets(results)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    atomic_write_text(args.json, json.dumps(results, indent=1, default=float) + "\n")
    print(audit_report.table(results))
    if args.markdown:
        audit_report.update_doc(args.markdown, audit_report.markdown(results, os.path.relpath(args.json, REPO)))
        log.info("wrote %s", args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
