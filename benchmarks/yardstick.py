"""The yardstick mining speed is judged against: the model's best forward on the canvases mining makes.

    python -m benchmarks.yardstick --weights W --images DIR_OR_LIST [--img-size 640] [--batches 1,2,4,8,16]

Run in a process of its own (`python -m benchmarks` starts one), where nothing else runs: the canvases are decoded
and letterboxed first, in the main thread (no decode thread is alive while the model runs); the model is the one
mining loads (executor.engine.loading.load_detector: fused, channels_last on CPU); each batch size forwards every
canvas, batched by shape as the mining loop batches them, after a warm-up, `reps` times; the best batch size's
best repetition is the yardstick. Prints one JSON object.
"""
import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

BATCHES = (1, 2, 4, 8, 16)


def best_forward(weights: str, keys: list[str], img_size: int, batches=BATCHES, reps: int = 3,
                 gpu_id: str = "") -> dict:
    """Images/s of the forward alone per batch size (best of `reps` passes over all canvases) and the best."""
    import torch

    from benchmarks.speed import decoded_canvases, forward_throughput, sync
    from executor.engine.loading import load_detector

    detector = load_detector(weights, "torch", gpu_id, img_size, conf_thres=0.25, iou_thres=0.45, max_det=100)
    canvases = decoded_canvases(keys, detector)
    rates = {}
    for batch in batches:
        forward_throughput(detector, canvases, batch, min(len(canvases), 2 * batch))  # warm-up of this size
        sync(detector.device)
        rates[batch] = max(forward_throughput(detector, canvases, batch, len(canvases))["images_per_s"]
                           for _ in range(reps))
    best = max(rates, key=rates.get)
    return {"images_per_s": rates[best], "batch": best, "by_batch": rates, "images": len(canvases),
            "reps": reps, "threads": torch.get_num_threads(), "img_size": detector.img_size,
            "shapes": len({c.shape for c in canvases})}


def measure(weights: str, keys: list[str], img_size: int, batches=BATCHES, reps: int = 3, gpu_id: str = "",
            timeout: float = 1800) -> dict:
    """best_forward in a fresh child process (what `python -m benchmarks` reports as P0)."""
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as listing:
        listing.write("".join(f"{k}\n" for k in keys))
    try:
        started = time.time()
        out = subprocess.run([sys.executable, "-m", "benchmarks.yardstick", "--weights", weights, "--images",
                              listing.name, "--img-size", str(img_size), "--batches", ",".join(map(str, batches)),
                              "--reps", str(reps), "--gpu-id", gpu_id], cwd=REPO, capture_output=True, text=True,
                             timeout=timeout, check=True).stdout
        found = json.loads(out.strip().splitlines()[-1])
        found["process_seconds"] = time.time() - started
        return found
    finally:
        os.unlink(listing.name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.yardstick", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--images", required=True, help="a folder of images or a .txt list of paths")
    p.add_argument("--img-size", type=int, default=640)
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--gpu-id", default="")
    args = p.parse_args(argv)
    if os.path.isdir(args.images):
        keys = sorted(os.path.join(args.images, n) for n in os.listdir(args.images)
                      if n.lower().endswith((".jpg", ".jpeg", ".png")))
    else:
        with open(args.images, encoding="utf-8") as handle:
            keys = [line.strip() for line in handle if line.strip()]
    from executor.runtime import prepare_process_env

    prepare_process_env()
    found = best_forward(args.weights, keys, args.img_size, tuple(int(b) for b in args.batches.split(",")),
                         args.reps, args.gpu_id)
    print(json.dumps({**found, "by_batch": {str(k): v for k, v in found["by_batch"].items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
