"""Mining throughput on a shared machine: Quarry's thread choice vs the old one, alone and beside a competitor.

    python -m benchmarks.threads [--images 60] [--img-size 640]

Each measured run is `start.py mine` (entropy) on the first N coco-val images, timed by its own log line
(the model load included). Settings: `default` (what ships: threads from OMP_NUM_THREADS / affinity / cgroup
quota, OpenMP threads that sleep while waiting), `before` (every os.cpu_count() CPU for torch, spinning OpenMP
threads, 4 decode threads), `1 thread`. Scenarios: alone, and beside a second mining run with the same
settings scoring a large pool on the same CPUs (two runs of one tool sharing a machine). Prints JSON lines.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
WEIGHTS = os.path.join(SHARED, "weights", "yolov8n.pt")
IMAGES = os.path.join(SHARED, "data", "coco-val", "images")
SETTINGS = {  # name: (flags, environment)
    "default": ([], {}),
    "before": (["--threads", str(os.cpu_count()), "--workers", "4"], {"OMP_WAIT_POLICY": "ACTIVE"}),
    "1 thread": (["--threads", "1"], {}),
}
RATE = re.compile(r"mining of (\d+) images in ([\d.]+) s")


def pool(folder: str, count: int) -> str:
    os.makedirs(folder, exist_ok=True)
    for name in sorted(os.listdir(IMAGES))[:count]:
        os.symlink(os.path.join(IMAGES, name), os.path.join(folder, name))
    return folder


def mine(images: str, out: str, img_size: int, setting: tuple, wait: bool = True):
    flags, environment = setting
    command = [sys.executable, os.path.join(REPO, "start.py"), "mine", "--model", WEIGHTS, "--source", images,
               "--algorithm", "entropy", "--imgsz", str(img_size), "--out", out, *flags]
    env = {**os.environ, **environment}
    if not wait:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    count, seconds = RATE.search(done.stdout + done.stderr).groups()
    return int(count) / float(seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--img-size", type=int, default=640)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="quarry-threads-") as scratch:
        measured = pool(os.path.join(scratch, "measured"), args.images)
        for scenario in ("alone", "beside a competing mining run"):
            for name, setting in SETTINGS.items():
                competitor = None
                if scenario != "alone":  # the whole pool, repeated: it outlasts the measured run
                    listing = os.path.join(scratch, "big.txt")
                    with open(listing, "w", encoding="utf-8") as handle:
                        handle.write("".join(os.path.join(IMAGES, n) + "\n" for n in sorted(os.listdir(IMAGES))))
                    competitor = mine(listing, os.path.join(scratch, "competitor.tsv"), args.img_size,
                                      setting, wait=False)
                    time.sleep(8)  # past its model load
                try:
                    rate = mine(measured, os.path.join(scratch, "measured.tsv"), args.img_size, setting)
                finally:
                    if competitor:
                        competitor.kill()
                        competitor.wait()
                print(json.dumps({"scenario": scenario, "settings": name, "images_per_s": round(rate, 2),
                                  "cpus": os.cpu_count()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
