# Quarry executor image for NVIDIA GPUs. Build from the repository root:
#
#   docker build -f dockerfiles/cuda.dockerfile -t quarry:cuda .
#
# The base is a CUDA *runtime* image whose CUDA (13.0) matches the pinned torch build: PyPI's torch 2.14.1
# wheel for Linux x86_64 is built for CUDA 13.0 (it depends on cuda-toolkit==13.0.*). The base also sets the
# NVIDIA_* variables the NVIDIA container runtime reads; they are set again below so that a build on another
# base (a local check) keeps them. The host needs a driver that supports CUDA 13.0.
#
# Build arguments (all optional):
#   BASE_IMAGE       any Debian/Ubuntu image; Python comes from its apt (a local build on a machine with no
#                    registry passes localhost/debian:bookworm, see dockerfiles/check.sh)
#   TORCH_INDEX_URL  where torch/torchvision (versions read from requirements.txt) come from; '' (default) =
#                    the ordinary index, PyPI, whose torch is the CUDA 13.0 build
#                    (https://download.pytorch.org/whl/cu130 is the same build from PyTorch's own index)
#   PIP_OFFLINE      1 = pip uses the local wheel directory only (no index at all)
#   WHEELS_ID        any name of the local wheel set; change it when the set changes (podman's cache)
#   WEIGHTS_URL      optional URL of a default weights file (e.g. yolov8n.pt) fetched at build time;
#   WEIGHTS_SHA256   its sha256 (checked when given). An offline builder uses a local weights/ dir instead.
#   QUARRY_VERSION   the version written into the image labels
# Build contexts (optional):
#   weights/         (a directory in the repository root, gitignored) every *.pt / *.onnx in it is baked
#                    into /opt/quarry/weights, where training and mining look for default pretrained weights
#   wheels           a local wheel directory, given as a named build context:
#                      docker buildx build --build-context wheels=/path/to/wheels ...   (podman build: same flag)
#                    torch and torchvision are then installed from it with no index (offline), and the
#                    rest of requirements.txt may come from it too (all of it with PIP_OFFLINE=1); the
#                    directory is only bind-mounted into the pip steps, none of its files is in the image
#
# The platform runs the image with no command (CMD), as a non-root uid, /in read-only, no network, and the
# GPUs it allocated renumbered from 0 (config.yaml gpu_id).
ARG BASE_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04

# An empty stage: `--build-context wheels=DIR` replaces it with a local wheel directory. It is bind-mounted
# into the pip steps only, so wheel files never end up in a layer of the image.
FROM scratch AS wheels

# ---------------------------------------------------------------- deps: Python and requirements.txt
FROM ${BASE_IMAGE} AS deps
ARG DEBIAN_FRONTEND=noninteractive
# The venv gets its pip from Debian's pip wheel, unpacked rather than installed: python3-venv would pull in
# ca-certificates, whose set-up fails where a build mounts the host's CA bundle (podman-local.sh), and pip
# brings its own CA bundle anyway.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && cd /tmp && apt-get download python3-pip-whl \
 && dpkg-deb -x python3-pip-whl_*.deb /tmp/pip-whl \
 && python3 -m venv --without-pip /opt/venv \
 && pip_whl=$(ls /tmp/pip-whl/usr/share/python-wheels/pip-*.whl) \
 && /opt/venv/bin/python "$pip_whl/pip" install --no-index "$pip_whl" \
 && rm -rf /var/lib/apt/lists/* /tmp/pip-whl /tmp/python3-pip-whl_*.deb
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies before code, so that a code change rebuilds only the last layers.
COPY requirements.txt /opt/quarry/requirements.txt
# WHEELS_ID names the wheel set (check.sh passes a hash of its file list): podman/buildah reuse a cached
# RUN step without looking into the files bind-mounted in it, so a new wheel set must change an argument.
ARG WHEELS_ID=
# torch and torchvision first, at the versions requirements.txt pins (the one source of versions): from the
# local wheel directory if one was given, else from TORCH_INDEX_URL if set, else with the rest below.
ARG TORCH_INDEX_URL=
RUN --mount=type=bind,from=wheels,target=/tmp/wheels set -eu; \
    pins=$(grep -E '^(torch|torchvision)==' /opt/quarry/requirements.txt | tr '\n' ' '); \
    if ls /tmp/wheels/*.whl >/dev/null 2>&1; then \
        echo "torch from the local wheel directory ${WHEELS_ID}: $pins"; \
        pip install --no-index --find-links /tmp/wheels $pins; \
    elif [ -n "$TORCH_INDEX_URL" ]; then \
        echo "torch from $TORCH_INDEX_URL: $pins"; \
        pip install --index-url "$TORCH_INDEX_URL" $pins; \
    fi
# Then everything in requirements.txt (torch too, unless installed above).
ARG PIP_OFFLINE=0
RUN --mount=type=bind,from=wheels,target=/tmp/wheels set -eu; \
    if [ "$PIP_OFFLINE" = 1 ]; then index=--no-index; else index=; fi; \
    pip install $index --find-links /tmp/wheels -r /opt/quarry/requirements.txt; \
    pip check; \
    YOLO_OFFLINE=1 YOLO_CONFIG_DIR=/tmp/yolo python -c "import torch, torchvision, ultralytics, cv2, onnxruntime; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; \
    rm -rf /tmp/yolo

# ---------------------------------------------------------------- weights: default pretrained weights
# From a local weights/ directory (the glob makes it optional) and/or WEIGHTS_URL.
FROM deps AS weights
ARG WEIGHTS_URL=
ARG WEIGHTS_SHA256=
COPY requirements.txt weight[s] /tmp/build/weights/
RUN set -eu; \
    mkdir -p /opt/quarry/weights; \
    find /tmp/build/weights -maxdepth 1 -type f \( -name '*.pt' -o -name '*.onnx' \) -exec cp {} /opt/quarry/weights/ \; ; \
    if [ -n "$WEIGHTS_URL" ]; then \
        dest=/opt/quarry/weights/$(basename "$WEIGHTS_URL"); \
        python -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$WEIGHTS_URL" "$dest"; \
        if [ -n "$WEIGHTS_SHA256" ]; then echo "$WEIGHTS_SHA256  $dest" | sha256sum -c -; fi; \
    fi; \
    chmod -R a+rX /opt/quarry; \
    echo "bundled weights:"; ls -l /opt/quarry/weights

# ---------------------------------------------------------------- code
# The context (filtered by .dockerignore) without the weights directory, byte-compiled here so that
# nothing is written under /app at run time.
FROM deps AS code
COPY . /app
RUN rm -rf /app/weights /app/wheels \
 && python -m compileall -q --invalidation-mode checked-hash /app \
 && chmod -R a+rX /app

# ---------------------------------------------------------------- the image
FROM deps
# Runs as any uid with no writable HOME and no network: every cache and settings file goes to /tmp.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/app \
    QUARRY_WEIGHTS_DIR=/opt/quarry/weights \
    YOLO_OFFLINE=1 \
    YOLO_AUTOINSTALL=0 \
    YOLO_CONFIG_DIR=/tmp/quarry/ultralytics \
    MPLCONFIGDIR=/tmp/quarry/matplotlib \
    TORCH_HOME=/tmp/quarry/torch \
    XDG_CACHE_HOME=/tmp/quarry/cache \
    XDG_CONFIG_HOME=/tmp/quarry/config \
    PIP_NO_CACHE_DIR=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN printf '#!/bin/bash\n# Started by the image CMD: platform mode (reads /in, writes /out).\nexec python3 /app/start.py "$@"\n' > /usr/bin/start.sh \
 && chmod 755 /usr/bin/start.sh
COPY --from=weights /opt/quarry/weights /opt/quarry/weights
# What the platform reads with `docker run --rm IMAGE cat /img-man/<file>` when the image is imported.
COPY templates/*-template.yaml templates/manifest.yaml /img-man/
COPY --from=code /app /app
RUN chmod -R a+rX /img-man
WORKDIR /tmp

ARG QUARRY_VERSION=0.1.0
LABEL org.opencontainers.image.title="quarry" \
      org.opencontainers.image.description="Quarry: active-learning executor (Ultralytics YOLOv8) for YMIR platforms, CUDA 13.0 image" \
      org.opencontainers.image.version="${QUARRY_VERSION}" \
      io.ymir.protocol-versions="0.0.1,1.0.0,1.1.0" \
      io.ymir.object-type="2" \
      quarry.variant="cuda"
CMD bash /usr/bin/start.sh
