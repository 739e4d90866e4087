#!/usr/bin/env bash
# The one prepared GPU check for a lent device machine (../.library/device): ~8 minutes, numbers under $OUT.
# Not run by CI. The device image has python3 3.12 with torch, torchvision, onnxruntime, opencv, scipy, yaml;
# carry what it lacks as wheels for Python 3.12, made here beforehand (an ignored folder, named in `carry`):
#   pip download -d .device-wheels --no-deps --python-version 3.12 --only-binary=:all: \
#       ultralytics-opencv-headless==8.4.190 ultralytics-thop pycocotools==2.0.11 tensorboardX==2.6.5 polars
# then: run(command="bash benchmarks/device.sh", carry=[".device-wheels"], timeout_s=540)
set -uo pipefail
OUT=${OUT:-/tmp/quarry-device}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps .device-wheels/*.whl 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
python3 -c "import torch, ultralytics; print(torch.__version__, ultralytics.__version__, torch.cuda.get_device_name(0))" \
    >> "$OUT/gpu.txt"
# GPU tests: the whole-batch NMS path against the per-image one on real outputs, nvJPEG against OpenCV, and the
# other CUDA-only tests
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/engine/test_detector.py tests/mining/test_aldd.py \
    tests/engine/test_gpu_decode.py \
    > "$OUT/tests.txt" 2>&1
# the benchmark on the GPU: P0 (raw batched forward) and every algorithm paired with it, 2 workers on one GPU
timeout 360 python3 -m benchmarks --device cuda --pool-repeat 20 --skip quality,voc,p4 \
    --json "$OUT/latest-cuda.json" --markdown "" > "$OUT/benchmark.txt" 2>&1
tail -40 "$OUT/benchmark.txt"
