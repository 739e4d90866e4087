"""Mining speed against the hardware limit, measured inside one process so that ratios survive a noisy host.

- P0 `forward_throughput`: the model's raw batched forward (`detector.net`) on images decoded,
  letterboxed, converted to float and moved to the device beforehand; only the forward is timed.
- P1/P2 `mine_timed`: `executor.pipeline.tasks.mine` (threaded decode + letterbox, batching, the scorer) on the
  same images with the same settings, timed end to end, with a breakdown of where the time went.
- P3 `UltralyticsPredict`: what a user would script instead, `YOLO(w).predict(stream=True)`.
- P4 `peak_rss_ratio` and P5 `first_progress`: `start.py` in platform mode in child processes.
- P6 `onnx_vs_torch`: `executor.pipeline.tasks.infer` with backend onnx vs torch.
- P7 `decode_throughput`: decode + letterbox in one thread, OpenCV (the CPU path) against torchvision's
  decode_jpeg + letterbox_tensor (executor/engine/gpu_decode.py) on the CPU and, on CUDA, the batched nvJPEG path.
- P8 `cpu_workers_ratio`: `executor.pipeline.tasks.mine` with 2 CPU worker processes ÷ 1, one thread each.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from executor.engine.images import same_shape_chunks
from executor.engine.loop import decode
from executor.pipeline.job import Job
from executor.pipeline.passes import Models
from executor.pipeline.plan import make_plan, weights_for
from executor.pipeline.tasks import infer, mine
from executor.protocol.settings import build_settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mining_config(weights: str, algorithm: str, gpu_id: str = "", **extra) -> dict:
    """A mining config.yaml: the template defaults (batch 16, 4 decode threads, conf 0.25, img_size 640) with
    the given changes."""
    return {"model_params_path": [weights], "mining_algorithm": algorithm, "gpu_id": gpu_id, **extra}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- P0: the model alone

def decoded_canvases(keys, detector) -> list[np.ndarray]:
    """The network inputs the mining loop makes of `keys` for `detector` (its decode, its letterbox)."""
    decoded = [decode(key, detector.letterbox) for key in keys]
    unreadable = [d.error for d in decoded if d.error]
    if unreadable:
        raise RuntimeError(f"{len(unreadable)} unreadable benchmark images; first: {unreadable[0]}")
    return [d.canvas for d in decoded]


def to_input(canvases: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """Exactly what TorchDetector.forward feeds the network: float [0, 1], NCHW (channels_last on CPU)."""
    x = torch.from_numpy(np.stack(canvases)).to(device).permute(0, 3, 1, 2).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cpu" else x


@torch.inference_mode()
def forward_throughput(detector, canvases: list[np.ndarray], batch: int, images: int, start: int = 0,
                       net=None) -> dict:
    """Images/s of `detector.net` (or `net`, e.g. its `class_net`) alone over `images` images taken cyclically
    from `canvases` from `start` on, in batches of at most `batch` canvases of one shape. Input preparation is
    outside the timed region."""
    device, net = detector.device, net or detector.net
    taken = [canvases[(start + j) % len(canvases)] for j in range(images)]
    seconds = 0.0
    for chunk in same_shape_chunks(taken, batch):
        x = to_input([taken[k] for k in chunk], device)
        sync(device)
        t0 = time.perf_counter()
        net(x)
        sync(device)
        seconds += time.perf_counter() - t0
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds}


def warm_up(detector, canvases, batch: int, times: int = 3) -> None:
    """`times` batches of every canvas shape (a backend may prepare its kernels per input shape)."""
    for shape in {c.shape for c in canvases}:
        forward_throughput(detector, [c for c in canvases if c.shape == shape], batch, batch * times)


# ---------------------------------------------------------------- P1/P2: the real mining path, with a breakdown

class Clock:
    """Accumulates wall time per label; `wrap` returns a timed version of a callable."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, label: str, fn, synchronize: bool = False, exclusive_of: str | None = None):
        """`fn`, timed under `label`; with `exclusive_of`, less the time that label gains during the call."""
        def timed(*args, **kwargs):
            inner = self.seconds[exclusive_of] if exclusive_of else 0.0
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if synchronize:
                    sync(self.device)
                elapsed = time.perf_counter() - t0
                if exclusive_of:
                    elapsed -= self.seconds[exclusive_of] - inner
                self.seconds[label] += elapsed
                self.calls[label] += 1
        return timed


@contextmanager
def instrumented(detector, scorer_class, clock: Clock):
    """Time the network, the predictions (forward + NMS + maps), the scorer, and the scorers' helpers, by
    wrapping them in this process only (the detector's network, methods of the detector's and the scorer's
    classes, module globals of mining/; all restored afterwards)."""
    import mining.aldd
    import mining.cald
    import mining.entropy
    import mining.errors

    patches = []

    def patch(owner, name, label, **timing):
        original = getattr(owner, name)
        in_dict = name in vars(owner)
        setattr(owner, name, clock.wrap(label, original, **timing))
        patches.append((owner, name, original, in_dict))

    for name in ("net", "class_net"):  # the whole network; the class branch alone (ALDD's maps)
        if getattr(detector, name, None) is not None:
            patch(detector, name, "network", synchronize=True)  # shared by the copies with_postprocess makes
    # on the classes: executor.pipeline.tasks.mine builds its own scorer and mines with a copy of the detector
    # (Models.detector: with_postprocess); every prediction is a forward (a batch's, made by the pass or the
    # scorer, or one of CALD's views) read by detections (NMS) or maps
    cls = type(detector)
    for name in ("forward", "detections", "maps"):
        patch(cls, name, "predict")
    patch(cls, "predict_views", "view_letterbox", exclusive_of="predict")  # letterboxing CALD's views
    patch(scorer_class, "score", "score", exclusive_of="predict")  # the scorer's own work
    for module, name, label in ((mining.cald, "make_views", "cald_views"), (mining.cald, "cald_score", "cald_math"),
                                (mining.aldd, "aldd_scores", "aldd_math"),
                                (mining.entropy, "image_entropy", "entropy_math"),
                                (mining.errors, "image_features", "errors_math"),
                                (mining.errors.ErrorModel, "score", "errors_math")):
        patch(module, name, label)
    try:
        yield clock
    finally:
        for owner, name, original, in_dict in reversed(patches):
            if in_dict:
                setattr(owner, name, original)
            else:  # was inherited (a method of a base class): drop the override
                delattr(owner, name)


def breakdown(total: float, clock: Clock) -> dict:
    """Seconds by stage; the stages partition the wall time of mine()."""
    s = clock.seconds
    network = s.get("network", 0.0)
    predict = s.get("predict", 0.0)
    math = sum(s.get(k, 0.0) for k in ("cald_math", "aldd_math", "entropy_math", "errors_math"))
    views = s.get("cald_views", 0.0) + s.get("view_letterbox", 0.0)
    scorer = s.get("score", 0.0)  # less the predictions it asked for
    return {
        "network": network,
        "input_and_postprocess": predict - network,     # uint8 -> float, NMS, boxes to numpy, class maps
        "cald_views": views,                             # augmenting and letterboxing CALD's views
        "score_math": math,                              # entropy / errors / ALDD / CALD formulas
        "scorer_other": scorer - views - math,           # glue in the scorer (matching views, the contract check)
        "loop_and_decode_wait": total - scorer - predict,  # batching loop, waiting for decode threads, progress
        "forward_passes": clock.calls.get("network", 0),
    }


TASK_OF = {"mine": "mining", "infer": "infer"}  # the task function → its name in a plan


def shipped(task, keys, detector, config: dict, progress=lambda fraction: None, read=lambda job: None) -> tuple:
    """executor.pipeline.tasks.mine or infer on `keys` with `config`, given `detector` already loaded (as one run's
    Models cache holds it: the task takes it with its own settings' NMS), writing into a temporary folder.
    Returns read(job), called once the task is done (its result files are still there), and the seconds the
    task took."""
    models = Models({detector.weights: detector})
    with tempfile.TemporaryDirectory(prefix="quarry-bench-job-") as folder:
        job = Job(candidates=list(keys), work_dir=folder, mining_result=os.path.join(folder, "result.tsv"),
                  infer_result=os.path.join(folder, "infer-result.json"))
        t0 = time.perf_counter()
        task(make_plan([TASK_OF[task.__name__]], job, config), progress, models)
        seconds = time.perf_counter() - t0
        out = read(job)
    if list(models.loaded.values()) != [detector]:
        raise RuntimeError(f"{task.__name__} loaded another model instead of reusing {detector.weights}")
    return out, seconds


def mined_scores(job) -> list[float]:
    """The scores result.tsv gives the job's candidates, in candidate order."""
    with open(job.mining_result, encoding="utf-8") as handle:
        scores = dict((key, float(score)) for key, score in (line.rstrip("\n").split("\t") for line in handle))
    return [scores[key] for key in job.candidates]


def inferred_boxes(job) -> int:
    """How many boxes infer-result.json holds."""
    with open(job.infer_result, encoding="utf-8") as handle:
        return sum(len(entry[job.infer_list_key]) for entry in json.load(handle)["detection"].values())


def mine_timed(keys, detector, config: dict) -> dict:
    """executor.pipeline.tasks.mine on `keys`, timed end to end: scores, images/s and a time breakdown."""
    from mining import SCORERS

    clock = Clock(detector.device)
    updates = []
    with instrumented(detector, SCORERS[config["mining_algorithm"]], clock):
        scores, total = shipped(mine, keys, detector, config, updates.append, mined_scores)
    return {"algorithm": config["mining_algorithm"], "images": len(keys), "seconds": total,
            "images_per_s": len(keys) / total, "progress_updates": len(updates), "scores": scores,
            "breakdown": breakdown(total, clock)}


def marginal_ratio(keys, detector, config: dict, small: int, large: int, pairs: int, batch: int) -> dict:
    """Mining's marginal rate, the slope of `executor.pipeline.tasks.mine`'s wall time between a `small`- and a
    `large`-image pool (the per-run costs, settings to result file, cancel), ÷ P0 on the extra images'
    canvases, in `pairs` pairs (who goes first alternating); medians over the pairs."""
    extra = decoded_canvases(keys[small:large], detector)
    # ALDD's maps without the report's boxes come from the head's class branch alone: its own network too
    own_network = getattr(detector, "class_net", None) if config["mining_algorithm"] == "aldd" and \
        config.get("report") is False else None
    slopes, p0s, owns = [], [], []
    for i in range(pairs):
        seconds = {}
        for n in ((small, large) if i % 2 == 0 else (large, small)):
            seconds[n] = mine_timed(keys[:n], detector, config)["seconds"]
        slopes.append((large - small) / max(seconds[large] - seconds[small], 1e-9))
        p0s.append(forward_throughput(detector, extra, batch, len(extra))["images_per_s"])
        if own_network is not None:  # ALDD's maps skip the head's box branch
            owns.append(forward_throughput(detector, extra, batch, len(extra), net=own_network)["images_per_s"])
    ratios = [a / b for a, b in zip(slopes, p0s)]
    out = {"small": small, "large": large, "pairs": pairs, "images_per_s": float(np.median(slopes)),
           "p0_paired": float(np.median(p0s)), "pair_ratios": ratios, "ratio": float(np.median(ratios))}
    if owns:
        out["p0_classes"] = float(np.median(owns))
        out["own_network_ratio"] = float(np.median([a / b for a, b in zip(slopes, owns)]))
    return out


def profile_mining(keys, detector, config: dict, path: str, top: int = 40) -> str:
    """cProfile of one mine() run; the top functions by cumulative time are written to `path`."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    shipped(mine, keys, detector, config)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(out.getvalue())
    return path


# ---------------------------------------------------------------- P3: Ultralytics predict

class UltralyticsPredict:
    """What a user would script instead of our miner: YOLO(weights).predict(source=<folder>, stream=True).

    Ultralytics reads a folder lazily (decode in the calling thread). Its CPU device set-up leaves torch
    with cpu_count - 1 threads; after a warm-up call (which does that set-up) torch is given every core
    again, as our detector does, so both sides use the same cores."""

    def __init__(self, weights: str, warm_image: str, img_size: int, batch: int, device):
        from ultralytics import YOLO

        self.model = YOLO(weights)
        self.kwargs = dict(imgsz=img_size, batch=batch, conf=0.25, device=device, verbose=False, stream=True)
        for _ in self.model.predict(source=warm_image, **self.kwargs):
            pass
        self.threads_left = torch.get_num_threads()
        if device == "cpu":
            torch.set_num_threads(max(1, os.cpu_count() or 1))

    def run(self, folder: str, count: int) -> dict:
        t0 = time.perf_counter()
        seen = sum(1 for _ in self.model.predict(source=folder, **self.kwargs))
        seconds = time.perf_counter() - t0
        if seen != count:
            raise RuntimeError(f"Ultralytics predicted {seen} images, expected {count}")
        return {"images": seen, "seconds": seconds, "images_per_s": seen / seconds,
                "torch_threads": torch.get_num_threads(), "threads_ultralytics_left": self.threads_left}


# ---------------------------------------------------------------- P6: ONNX Runtime vs PyTorch

def export_onnx(weights: str, folder: str, img_size: int) -> str:
    """The project's ONNX export (any batch, height and width) of `weights`, inside `folder`."""
    from executor.engine.loading import export_onnx as export

    path = os.path.join(folder, "model.onnx")
    export(weights, path, img_size, 0, dynamic=True)
    return path


def infer_timed(keys, detector, config: dict) -> dict:
    boxes, seconds = shipped(infer, keys, detector, config, read=inferred_boxes)
    return {"images": len(keys), "seconds": seconds, "images_per_s": len(keys) / seconds, "boxes": boxes}


def onnx_vs_torch(weights: str, segments, torch_detector, folder: str) -> dict:
    """executor.pipeline.tasks.infer with backend onnx and with backend torch (infer template defaults, CPU), segment by
    segment on the same images (who goes first alternates); the ratio is the median over segments of onnx
    img/s ÷ torch img/s."""
    onnx_path = export_onnx(weights, folder, torch_detector.img_size)
    configs = {name: {"model_params_path": [path], "backend": name, "gpu_id": ""}
               for name, path in (("torch", weights), ("onnx", onnx_path))}
    onnx_settings = build_settings("infer", configs["onnx"])
    onnx_detector = Models().detector(onnx_settings, weights_for(onnx_settings, ""))
    infer_timed(segments[0][:32], onnx_detector, configs["onnx"])  # warm-up
    detectors = {"torch": torch_detector, "onnx": onnx_detector}
    runs = {"torch": [], "onnx": []}
    for i, seg in enumerate(segments):
        for name in (("torch", "onnx") if i % 2 == 0 else ("onnx", "torch")):
            runs[name].append(infer_timed(seg, detectors[name], configs[name]))
    out = {name: {"images_per_s": sum(r["images"] for r in rs) / sum(r["seconds"] for r in rs),
                  "boxes": sum(r["boxes"] for r in rs)} for name, rs in runs.items()}
    out["segment_ratios"] = [o["images_per_s"] / t["images_per_s"] for o, t in zip(runs["onnx"], runs["torch"])]
    out["ratio"] = float(np.median(out["segment_ratios"]))
    out["ratio_pooled"] = out["onnx"]["images_per_s"] / out["torch"]["images_per_s"]
    out["onnx_file_mb"] = os.path.getsize(onnx_path) / 2**20
    return out


# ---------------------------------------------------------------- P7: decoding, per core and on the GPU

def decode_throughput(paths: list[str], size: int, stride: int | None, device: torch.device, chunk: int,
                      segments: int = 4) -> dict:
    """Images/s of decode + letterbox of `paths` in one thread (OpenCV and torch limited to one): the CPU path
    (read_image + letterbox), torchvision's decode_jpeg + letterbox_tensor on the CPU, and on CUDA the batched
    device path `chunk` images a call, with and without the originals copied back to the host. Segment by
    segment, who goes first rotating; each way warmed up on a few images first."""
    import cv2

    from executor.engine.gpu_decode import decode_batch
    from executor.engine.images import letterbox

    def opencv(seg):
        for path in seg:
            if decode(path, lambda image: letterbox(image, size, stride)).error:
                raise RuntimeError(f"unreadable benchmark image {path}")

    def batched(on, originals=True):
        def run(seg):
            for i in range(0, len(seg), chunk):
                decode_batch(seg[i:i + chunk], on, size, stride, originals=originals)
            sync(torch.device(on))
        return run

    ways = {"opencv": opencv, "torchvision_cpu": batched("cpu")}
    if device.type == "cuda":
        ways["nvjpeg"] = batched(str(device))
        ways["nvjpeg_no_originals"] = batched(str(device), originals=False)
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    seconds = {name: 0.0 for name in ways}
    try:
        for way in ways.values():
            way(paths[:4])
        parts = [paths[round(i * len(paths) / segments):round((i + 1) * len(paths) / segments)]
                 for i in range(segments)]
        names = list(ways)
        for i, seg in enumerate(parts):
            for name in names[i % len(names):] + names[:i % len(names)]:
                t0 = time.perf_counter()
                ways[name](seg)
                seconds[name] += time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
    out = {name: {"images": len(paths), "seconds": sec, "images_per_s": len(paths) / sec}
           for name, sec in seconds.items()}
    out["torchvision_cpu_ratio"] = out["torchvision_cpu"]["images_per_s"] / out["opencv"]["images_per_s"]
    if "nvjpeg" in out:
        out["nvjpeg_cores"] = out["nvjpeg"]["images_per_s"] / out["opencv"]["images_per_s"]  # CPU cores it replaces
        out["originals_copy_share"] = 1 - out["nvjpeg"]["images_per_s"] / out["nvjpeg_no_originals"]["images_per_s"]
    out["chunk"] = chunk
    return out


# ---------------------------------------------------------------- P8: CPU worker processes

def cpu_workers_ratio(weights: str, keys: list[str], algorithm: str = "entropy") -> dict:
    """executor.pipeline.tasks.mine on `keys` with 2 CPU worker processes ÷ with 1, one thread each (so the scores are
    bit-identical: result.tsv must be the same bytes), a fresh model in each run, report off. Timed end to end
    (model load, and for 2 workers their start, included) and in the steady state (from the first progress)."""
    shard = max(1, -(-len(keys) // 4))
    runs = {}
    threads = torch.get_num_threads()
    try:
        for workers in (1, 2):
            config = mining_config(weights, algorithm, cpu_processes=workers, cpu_threads=workers, shard_size=shard,
                                   report=False)
            seen = []
            with tempfile.TemporaryDirectory(prefix="quarry-bench-workers-") as folder:
                job = Job(candidates=list(keys), work_dir=folder, mining_result=os.path.join(folder, "result.tsv"))
                t0 = time.perf_counter()
                mine(make_plan(["mining"], job, config),
                     lambda fraction: seen.append((time.perf_counter() - t0, fraction)), Models())
                seconds = time.perf_counter() - t0
                with open(job.mining_result, encoding="utf-8") as handle:
                    result = handle.read()
            moving = [(t, f) for t, f in seen if f > 0]  # from the first image scored to the last progress seen
            steady = None
            if moving:
                (t_first, f_first), (t_last, f_last) = moving[0], max(moving, key=lambda p: (p[1], -p[0]))
                if f_last > f_first and t_last > t_first:
                    steady = (f_last - f_first) * len(keys) / (t_last - t_first)
            runs[workers] = {"images": len(keys), "seconds": seconds, "images_per_s": len(keys) / seconds,
                             "steady_images_per_s": steady, "result": result}
    finally:
        torch.set_num_threads(threads)
    if runs[1].pop("result") != runs[2].pop("result"):
        raise RuntimeError("2 CPU workers wrote another result.tsv than 1 worker with the same threads per process")
    out = {"workers": {str(k): v for k, v in runs.items()}, "algorithm": algorithm, "shard_size": shard,
           "ratio": runs[2]["images_per_s"] / runs[1]["images_per_s"], "identical_result": True}
    if runs[1]["steady_images_per_s"] and runs[2]["steady_images_per_s"]:
        out["steady_ratio"] = runs[2]["steady_images_per_s"] / runs[1]["steady_images_per_s"]
    return out


# ---------------------------------------------------------------- P4/P5: start.py in child processes

@dataclass
class PlatformRun:
    seconds_to_first_write: float | None = None
    seconds_to_first_progress: float | None = None
    seconds_total: float | None = None
    peak_rss_mb: float | None = None
    mining_peak_rss_mb: float | None = None   # largest VmRSS sampled once progress > 0 (the steady state)
    returncode: int | None = None
    result_lines: int = 0
    log_tail: list = field(default_factory=list)


def make_platform_dirs(root: str, weights: str, images: list[str], config: dict) -> str:
    """A minimal ymir /in + /out under `root` whose candidate index lists `images` verbatim (each entry a
    distinct path: repeated pools use symlinks). Returns the env.yaml path."""
    import yaml

    indir, outdir = os.path.join(root, "in"), os.path.join(root, "out")
    os.makedirs(os.path.join(indir, "models"), exist_ok=True)
    os.makedirs(outdir, exist_ok=True)
    model = os.path.join(indir, "models", os.path.basename(weights))
    shutil.copyfile(weights, model)
    index = os.path.join(indir, "candidate-index.tsv")
    with open(index, "w", encoding="utf-8") as handle:
        handle.writelines(os.path.abspath(p) + "\n" for p in images)  # the platform gives absolute paths
    with open(os.path.join(indir, "config.yaml"), "w", encoding="utf-8") as handle:
        yaml.safe_dump({"model_params_path": [model], **config}, handle)
    env = {"task_id": "bench", "run_mining": True, "run_infer": False, "run_training": False,
           "protocol_version": "1.1.0",
           "input": {"root_dir": indir, "assets_dir": indir, "models_dir": os.path.join(indir, "models"),
                     "annotations_dir": indir, "config_file": os.path.join(indir, "config.yaml"),
                     "candidate_index_file": index},
           "output": {"root_dir": outdir, "models_dir": os.path.join(outdir, "models"),
                      "tensorboard_dir": os.path.join(outdir, "tensorboard"),
                      "mining_result_file": os.path.join(outdir, "result.tsv"),
                      "infer_result_file": os.path.join(outdir, "infer-result.json"),
                      "training_result_file": os.path.join(outdir, "models", "result.yaml"),
                      "monitor_file": os.path.join(outdir, "monitor.txt"),
                      "executor_log_file": os.path.join(outdir, "ymir-executor-out.log")}}
    env_path = os.path.join(indir, "env.yaml")
    with open(env_path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(env, handle)
    return env_path


def repeated_pool(images: list[str], times: int, folder: str) -> list[str]:
    """`times` copies of the pool as distinct paths (symlinks), copy after copy."""
    os.makedirs(folder, exist_ok=True)
    out = []
    for r in range(times):
        for path in images:
            link = os.path.join(folder, f"r{r:03d}_{os.path.basename(path)}")
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(path), link)
            out.append(link)
    return out


def link_pool(paths: list[str], folder: str) -> str:
    """A folder holding exactly `paths` (as numbered symlinks, so repeats stay distinct); returns it."""
    os.makedirs(folder, exist_ok=True)
    for i, path in enumerate(paths):
        link = os.path.join(folder, f"{i:06d}_{os.path.basename(path)}")
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(path), link)
    return folder


def vm_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def read_monitor(path: str) -> tuple[float, int] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            fields = handle.readline().split("\t")
        return float(fields[2]), int(fields[3])
    except (OSError, ValueError, IndexError):
        return None


def run_platform(env_path: str, stop_at_first_progress: bool = False, poll: float = 0.005,
                 timeout: float = 3600.0) -> PlatformRun:
    """`python start.py --env env.yaml` in a child process. Polls monitor.txt every `poll` seconds and
    takes the child's peak RSS from wait4(). With `stop_at_first_progress` the child is terminated once a
    line with state 2 and progress > 0 shows (its peak RSS is then not meaningful)."""
    outdir = os.path.join(os.path.dirname(os.path.dirname(env_path)), "out")
    monitor = os.path.join(outdir, "monitor.txt")
    if os.path.exists(monitor):
        os.unlink(monitor)
    run = PlatformRun()
    log_path = os.path.join(outdir, "child.log")
    with open(log_path, "wb") as sink:
        t0 = time.perf_counter()
        child = subprocess.Popen([sys.executable, os.path.join(REPO, "start.py"), "--env", env_path], cwd=REPO,
                                 stdout=sink, stderr=subprocess.STDOUT)
        while True:
            pid, wait_status, usage = os.wait4(child.pid, os.WNOHANG)
            now = time.perf_counter() - t0
            if pid:
                break
            state = read_monitor(monitor)
            if run.seconds_to_first_progress is not None:
                rss = vm_rss_mb(child.pid)
                if rss is not None:
                    run.mining_peak_rss_mb = max(run.mining_peak_rss_mb or 0.0, rss)
            if state and run.seconds_to_first_write is None:
                run.seconds_to_first_write = now
            if state and state[0] > 0 and state[1] == 2 and run.seconds_to_first_progress is None:
                run.seconds_to_first_progress = now
                if stop_at_first_progress:
                    child.terminate()
            if now > timeout:
                child.kill()
            time.sleep(poll)
    run.seconds_total = now
    child.returncode = run.returncode = os.waitstatus_to_exitcode(wait_status)
    run.peak_rss_mb = usage.ru_maxrss / 1024  # Linux reports kilobytes
    result = os.path.join(outdir, "result.tsv")
    if os.path.exists(result):
        with open(result, encoding="utf-8") as handle:
            run.result_lines = sum(1 for _ in handle)
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        run.log_tail = handle.read().splitlines()[-5:]
    return run


def peak_rss_ratio(weights: str, images: list[str], times: int, algorithm: str, batch: int, gpu_id: str,
                   folder: str) -> dict:
    """P4: peak RSS of mining `times` copies of the pool / peak RSS of one copy (same batch size)."""
    config = {"mining_algorithm": algorithm, "batch_size_per_gpu": batch, "gpu_id": gpu_id}
    out = {"algorithm": algorithm, "batch": batch, "pool": len(images), "times": times}
    for label, pool in (("x1", repeated_pool(images, 1, os.path.join(folder, "pool1"))),
                        (f"x{times}", repeated_pool(images, times, os.path.join(folder, f"pool{times}")))):
        run = run_platform(make_platform_dirs(os.path.join(folder, label), weights, pool, config), poll=0.05)
        if run.returncode != 0 or run.result_lines != len(pool):
            raise RuntimeError(f"platform run {label} failed (rc {run.returncode}, {run.result_lines} lines): "
                               + " | ".join(run.log_tail))
        out[label] = {"images": len(pool), "peak_rss_mb": run.peak_rss_mb, "seconds": run.seconds_total,
                      "mining_peak_rss_mb": run.mining_peak_rss_mb, "images_per_s": len(pool) / run.seconds_total}
    out["ratio"] = out[f"x{times}"]["peak_rss_mb"] / out["x1"]["peak_rss_mb"]
    if out["x1"]["mining_peak_rss_mb"] and out[f"x{times}"]["mining_peak_rss_mb"]:
        out["mining_ratio"] = out[f"x{times}"]["mining_peak_rss_mb"] / out["x1"]["mining_peak_rss_mb"]
    return out


def first_progress(weights: str, images: list[str], algorithm: str, gpu_id: str, folder: str, reps: int) -> dict:
    """P5: seconds from spawning `start.py` (platform mode, template defaults) to the first monitor.txt
    line with state 2 and progress > 0; the child is then terminated. Median of `reps` runs."""
    env_path = make_platform_dirs(folder, weights, images, {"mining_algorithm": algorithm, "gpu_id": gpu_id})
    runs = [run_platform(env_path, stop_at_first_progress=True) for _ in range(reps)]
    if any(r.seconds_to_first_progress is None for r in runs):
        bad = next(r for r in runs if r.seconds_to_first_progress is None)
        raise RuntimeError("no progress seen: " + " | ".join(bad.log_tail))
    return {"algorithm": algorithm, "pool": len(images), "reps": reps,
            "seconds": float(np.median([r.seconds_to_first_progress for r in runs])),
            "all_seconds": [r.seconds_to_first_progress for r in runs],
            "first_monitor_write_s": float(np.median([r.seconds_to_first_write for r in runs]))}


def python_import_seconds() -> float:
    """How long `import torch, ultralytics` takes in a fresh interpreter here (context for P5)."""
    code = "import time; t=time.perf_counter(); import torch, ultralytics; print(time.perf_counter()-t)"
    env = dict(os.environ, YOLO_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    try:
        return float(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return float("nan")

