"""`start.py make-in`: a platform /in folder from local files, so `start.py --env IN/env.yaml` (or the docker
image with IN mounted at /in) runs exactly what the platform runs.

IN gets env.yaml (local absolute paths; outputs in OUT, the folder `out` beside IN), config.yaml (the task's
template with --set values over it, model_params_path / pretrained_model_params naming the copied weights),
assets/ (the images, hard-linked when possible, else copied, under their names in the run), models/, the
index files, and for training ark annotations converted from YOLO labels with a fixed 80/20 train/val split.
"""
import hashlib
import os
import shutil

import yaml

from executor.cli.flags import UsageError as RehearsalError, requested_tasks, set_values
from executor.protocol.templates import load_template
from executor.protocol.writers import atomic_write_text

TASK_FLAGS = {"mining": "run_mining", "infer": "run_infer", "training": "run_training"}




def place(source: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def yolo_label_file(image: str, labels_root: str, name: str) -> str:
    """The YOLO label of `image`: LABELS/<name>.txt, or Ultralytics' images/ → labels/ sibling layout."""
    direct = os.path.join(labels_root, os.path.splitext(name)[0] + ".txt")
    if os.path.isfile(direct):
        return direct
    parts = image.split(os.sep)
    if "images" in parts:
        parts[len(parts) - 1 - parts[::-1].index("images")] = "labels"
        sibling = os.path.splitext(os.sep.join(parts))[0] + ".txt"
        if os.path.isfile(sibling):
            return sibling
    return ""


def in_val_split(name: str) -> bool:
    return hashlib.sha1(name.encode()).digest()[0] < 256 // 5  # a fixed fifth, whatever the order


def make_in(args, paths: list[str], names: list[str]) -> str:
    """Write IN (args.out) for args.task; returns the env.yaml path."""
    root = os.path.abspath(args.out)
    if os.path.isdir(root) and os.listdir(root):
        raise RehearsalError(f"--out {args.out} is not empty; choose a new folder")
    out_root = os.path.join(os.path.dirname(root), "out")
    config = {**load_template(args.task), **set_values(args.set, requested_tasks(args), flags={})}
    models = os.path.join(root, "models")
    os.makedirs(models, exist_ok=True)
    if args.weights:
        if not os.path.isfile(args.weights):
            raise RehearsalError(f"--weights {args.weights}: no such file")
        shutil.copyfile(args.weights, os.path.join(models, os.path.basename(args.weights)))
        key = "pretrained_model_params" if args.task == "training" else "model_params_path"
        config[key] = [os.path.basename(args.weights)]
    elif args.task == "infer":
        raise RehearsalError("--weights is required for --task infer")
    assets = [os.path.join(root, "assets", name) for name in names]
    for source, target in zip(paths, assets):
        place(source, target)
    index = {"candidate_index_file": "", "training_index_file": "", "val_index_file": ""}
    if args.task == "training":
        config["class_names"] = [n.strip() for n in (args.names or "").split(",") if n.strip()]
        if not config["class_names"]:
            raise RehearsalError("--names is required for --task training (comma-separated class names)")
        index.update(write_training_index(args, root, paths, names, assets, config["class_names"]))
        config["export_format"] = "ark:raw"
    else:
        index["candidate_index_file"] = os.path.join(root, "candidate-index.tsv")
        atomic_write_text(index["candidate_index_file"], "".join(a + "\n" for a in assets))
    atomic_write_text(os.path.join(root, "config.yaml"), yaml.safe_dump(config, sort_keys=False))
    env = {"task_id": f"rehearsal-{args.task}", "protocol_version": "1.1.0",
           **{flag: task == args.task for task, flag in TASK_FLAGS.items()},
           "input": {"root_dir": root, "assets_dir": os.path.join(root, "assets"), "models_dir": models,
                     "annotations_dir": os.path.join(root, "annotations"),
                     "config_file": os.path.join(root, "config.yaml"), **index},
           "output": {"root_dir": out_root, "models_dir": os.path.join(out_root, "models"),
                      "tensorboard_dir": os.path.join(out_root, "tensorboard"),
                      "training_result_file": os.path.join(out_root, "models", "result.yaml"),
                      "mining_result_file": os.path.join(out_root, "result.tsv"),
                      "infer_result_file": os.path.join(out_root, "infer-result.json"),
                      "monitor_file": os.path.join(out_root, "monitor.txt")}}
    env_path = os.path.join(root, "env.yaml")
    atomic_write_text(env_path, yaml.safe_dump(env, sort_keys=False))
    os.makedirs(out_root, exist_ok=True)
    print(f"wrote {env_path}; rehearse with: python start.py --env {env_path}   (results in {out_root})")
    return env_path


def write_training_index(args, root, paths, names, assets, class_names) -> dict:
    from executor.protocol.dataset import probe_image, yolo_label_to_ark

    if not args.labels:
        raise RehearsalError("--labels is required for --task training (a folder of YOLO txt labels)")
    rows = {"train": [], "val": []}
    for source, name, asset in zip(paths, names, assets):
        label = yolo_label_file(source, args.labels, name)
        probed = probe_image(source)
        if not label or not isinstance(probed, tuple):
            continue  # unlabelled or unreadable: left out, as the platform exports only annotated assets
        annotation = os.path.join(root, "annotations", os.path.splitext(name)[0] + ".txt")
        atomic_write_text(annotation, "".join(yolo_label_to_ark(label, probed[0], probed[1], class_names)))
        rows["val" if in_val_split(name) else "train"].append(f"{asset}\t{annotation}\n")
    if not rows["train"] or not rows["val"]:
        raise RehearsalError(f"--labels {args.labels}: found labels for {len(rows['train'])} train and "
                             f"{len(rows['val'])} val images; both splits need some")
    files = {}
    for split, key in (("train", "training_index_file"), ("val", "val_index_file")):
        files[key] = os.path.join(root, f"{split}-index.tsv")
        atomic_write_text(files[key], "".join(rows[split]))
    return files
