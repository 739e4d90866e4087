#!/usr/bin/env bash
# Build the CPU image (dockerfiles/Dockerfile, VARIANT=cpu) on a machine with no Docker engine and no
# registry, then use it as the platform does.
#
#   bash dockerfiles/check.sh             build, import check, mining + infer smoke
#   bash dockerfiles/check.sh --no-build  the same with the image built before
#   FAMILY=segmentation bash dockerfiles/check.sh   the instance-segmentation image (TEMPLATES=templates/
#                                         segmentation, OBJECT_TYPE=4): mining + infer with a yolov8n-seg model,
#                                         the infer result a COCO result with RLE masks
#
# How (ymir-protocol §2, §3): podman + runc through ../shared/tools/podman-local.sh, base image
# localhost/debian:bookworm; pip installs from a local wheel directory only (PIP_OFFLINE=1), downloaded once
# on the host into $CACHE/wheels (host Python must be 3.11, as in the image) and bind-mounted into the pip
# steps (--build-context wheels=...); weights/yolov8n.pt from
# ../shared/weights is baked in. Then: `run --rm IMAGE cat /img-man/...` must give YAML mappings; a mining
# job and an infer job run with no command (CMD), `--user 1000:1000 --network=none`, /in read-only (10
# coco-val images as a ymir 2.x export) and /out writable; their outputs are checked, and `podman diff`
# must show nothing written outside /tmp. Takes minutes: not part of CI (.ci/run).
#
# Environment: FAMILY (detection | segmentation), IMAGE (localhost/quarry:cpu-check, or :seg-check),
# SHARED (../shared), CACHE (/tmp/quarry-build-cache), CANDIDATES (10), KEEP=1 keeps the sample /in and /out dirs.
# Exit status: 0 all passed; 1 a check failed; 3 the image built and imports, but the smoke could not run
# because the code has no platform mode yet (/app/start.py missing).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=${SHARED:-$(cd "$REPO/../shared" && pwd)}
FAMILY=${FAMILY:-detection}
case "$FAMILY" in
  detection) TEMPLATES=templates; OBJECT_TYPE=2; IMAGE=${IMAGE:-localhost/quarry:cpu-check} ;;
  segmentation) TEMPLATES=templates/segmentation; OBJECT_TYPE=4; IMAGE=${IMAGE:-localhost/quarry:seg-check} ;;
  *) echo "FAMILY=$FAMILY: expected detection or segmentation" >&2; exit 2 ;;
esac
CACHE=${CACHE:-/tmp/quarry-build-cache}
CANDIDATES=${CANDIDATES:-10}
PODMAN_LOCAL="$SHARED/tools/podman-local.sh"
BUILD=1
[[ "${1:-}" == "--no-build" ]] && BUILD=0

say() { printf '\n== %s\n' "$*"; }
fail() { printf '\nCHECK FAILED: %s\n' "$*" >&2; exit 1; }
pl() { bash "$PODMAN_LOCAL" "$@"; }
if [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi
"$PY" -c 'import yaml' 2>/dev/null || fail "$PY has no PyYAML (needed to read the templates back)"

WORK=$(mktemp -d /tmp/quarry-check.XXXXXX)
cleanup() {
  for name in quarry-check-mining quarry-check-infer; do podman --runtime runc rm -f "$name" >/dev/null 2>&1 || true; done
  if [[ "${KEEP:-0}" == 1 ]]; then echo "kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

say "podman and the local base image"
pl setup

if [[ $BUILD == 1 ]]; then
  say "wheels for an offline pip (host pip download into $CACHE/wheels)"
  python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || fail "host python3 is not 3.11: its wheels would not fit the image's Python 3.11"
  mkdir -p "$CACHE/wheels"
  python3 -m pip download -q --disable-pip-version-check -d "$CACHE/wheels" -r "$REPO/requirements.txt" \
    2> >(grep -v "is neither a file nor a directory" >&2)
  echo "$(ls "$CACHE/wheels" | wc -l) files, $(du -sh "$CACHE/wheels" | cut -f1)"

  say "default weights into weights/ (gitignored)"
  mkdir -p "$REPO/weights"
  [[ -f "$REPO/weights/yolov8n.pt" ]] || cp "$SHARED/weights/yolov8n.pt" "$REPO/weights/"
  ls -l "$REPO/weights"

  say "build $IMAGE from dockerfiles/Dockerfile, CPU variant"
  version=$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)
  start=$(date +%s)
  wheels_id=$(ls "$CACHE/wheels" | sha1sum | cut -c1-12)
  # The CPU variant's build args (BASE_IMAGE: podman-local.sh passes the local base; TORCH_INDEX_URL: unused,
  # torch comes from the wheel directory).
  if ! pl build -f "$REPO/dockerfiles/Dockerfile" --build-arg VARIANT=cpu --build-context wheels="$CACHE/wheels" \
       --build-arg WHEELS_ID="$wheels_id" --build-arg PIP_OFFLINE=1 --build-arg QUARRY_VERSION="$version" \
       --build-arg TEMPLATES="$TEMPLATES" --build-arg OBJECT_TYPE="$OBJECT_TYPE" \
       -t "$IMAGE" "$REPO" > "$WORK/build.log" 2>&1; then
    tail -40 "$WORK/build.log"
    fail "build failed (log above)"
  fi
  BUILD_S=$(( $(date +%s) - start ))
  grep -E "^torch |^bundled weights|yolov8n" "$WORK/build.log" || true
  echo "build time: ${BUILD_S}s"
fi

podman image exists "$IMAGE" || fail "no image $IMAGE (run without --no-build)"
SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE")
SIZE_H=$(awk -v b="$SIZE" 'BEGIN { printf "%.2f GB", b / 1e9 }')
echo "image size: $SIZE_H ($SIZE bytes)"

say "import as the platform does: run --rm IMAGE cat /img-man/<file>"
config=$(podman image inspect --format '{{json .Config.Entrypoint}} {{json .Config.Cmd}}' "$IMAGE")
echo "entrypoint, cmd: $config"
[[ "$config" == *'"/bin/sh","-c","bash /usr/bin/start.sh"'* || "$config" == *'"bash","/usr/bin/start.sh"'* ]] \
  || fail "CMD is not bash /usr/bin/start.sh"
[[ "$config" == "null "* || "$config" == "[] "* ]] || fail "the image has an ENTRYPOINT"
labels=$(podman image inspect --format '{{index .Labels "quarry.variant"}} {{index .Labels "io.ymir.object-type"}}' "$IMAGE")
echo "labels quarry.variant, io.ymir.object-type: $labels"
[[ "$labels" == "cpu $OBJECT_TYPE" ]] || fail "labels are not quarry.variant=cpu, io.ymir.object-type=$OBJECT_TYPE"
for file in training-template.yaml mining-template.yaml infer-template.yaml manifest.yaml; do
  if pl run --rm "$IMAGE" cat "/img-man/$file" > "$WORK/$file" 2> "$WORK/cat.err"; then
    "$PY" - "$WORK/$file" "$REPO/$TEMPLATES/$file" <<'EOF' || fail "/img-man/$file"
import sys, yaml
got = yaml.safe_load(open(sys.argv[1]))
assert isinstance(got, dict) and got, "not a YAML mapping"
assert got == yaml.safe_load(open(sys.argv[2])), "differs from templates/ in the repository"
print(f"  {sys.argv[1].rsplit('/', 1)[1]}: mapping of {len(got)} keys")
EOF
  elif [[ $file == training-template.yaml && ! -f "$REPO/$TEMPLATES/$file" ]]; then
    echo "  $file: absent (no training template in templates/ yet: the platform offers no training)"
  else
    cat "$WORK/cat.err"; fail "cannot read /img-man/$file"
  fi
done
pl run --rm --user 1000:1000 --network=none "$IMAGE" bash -c \
  'set -e; echo "uid $(id -u): $QUARRY_WEIGHTS_DIR"; ls -l "$QUARRY_WEIGHTS_DIR"; test -r "$QUARRY_WEIGHTS_DIR/yolov8n.pt"
   if touch /app/x 2>/dev/null; then echo "/app is writable"; exit 9; fi' \
  || fail "bundled weights not readable as uid 1000, or /app writable"

say "platform mode present?"
if ! pl run --rm "$IMAGE" test -f /app/start.py; then
  echo "SMOKE NOT RUN: /app/start.py is not in the image (the platform entry point has not landed in the code)."
  echo "Image built and imports: $IMAGE, ${SIZE_H}${BUILD_S:+, built in ${BUILD_S}s}."
  exit 3
fi

say "sample /in: $CANDIDATES coco-val images as a ymir 2.x mining/infer export"
IN="$WORK/in"
mkdir -p "$IN/assets" "$IN/models"
if [[ $FAMILY == segmentation ]]; then  # yolov8n-seg seeded from yolov8n.pt (no COCO -seg checkpoint offline)
  (cd "$REPO" && "$PY" -c 'import sys; from tests.ymir_builders import write_seg_weights; write_seg_weights(sys.argv[1])' \
    "$IN/models/model.pt") || fail "cannot build the yolov8n-seg checkpoint"
else
  cp "$SHARED/weights/yolov8n.pt" "$IN/models/model.pt"
fi
: > "$IN/candidate-index.tsv"
mapfile -t images < <(find "$SHARED/data/coco-val/images" -maxdepth 1 -name '*.jpg' | sort)
for img in "${images[@]:0:$CANDIDATES}"; do
  hash=$(sha1sum "$img" | cut -d' ' -f1)
  mkdir -p "$IN/assets/${hash: -2}"
  cp "$img" "$IN/assets/${hash: -2}/$hash.jpg"
  echo "/in/assets/${hash: -2}/$hash.jpg" >> "$IN/candidate-index.tsv"
done
"$PY" - "$SHARED/data/coco-val/annotations.json" "$IN/config.yaml" "$OBJECT_TYPE" <<'EOF'
import json, sys, yaml
categories = sorted(json.load(open(sys.argv[1]))["categories"], key=lambda c: c["id"])
config = {"task_id": "t0000quarrycheck", "class_names": [c["name"] for c in categories], "gpu_id": "",
          "gpu_count": 0, "object_type": int(sys.argv[3]), "model_params_path": ["/in/models/model.pt"],
          "mining_algorithm": "aldd" if sys.argv[3] == "2" else "cald"}
assert len(config["class_names"]) == 80
yaml.safe_dump(config, open(sys.argv[2], "w"))
EOF
write_env() {  # $1 = mining | infer
  local mining=false infer=false
  [[ $1 == mining ]] && mining=true
  [[ $1 == infer ]] && infer=true
  cat > "$IN/env.yaml" <<EOF
input: {annotations_dir: /in/annotations, assets_dir: /in/assets, candidate_index_file: /in/candidate-index.tsv,
  config_file: /in/config.yaml, models_dir: /in/models, root_dir: /in, training_index_file: '', val_index_file: ''}
manifest_file: /img-man/manifest.yaml
output: {executor_log_file: /out/ymir-executor-out.log, infer_result_file: /out/infer-result.json,
  mining_result_file: /out/result.tsv, models_dir: /out/models, monitor_file: /out/monitor.txt, root_dir: /out,
  tensorboard_dir: /out/tensorboard, training_result_file: /out/models/result.yaml}
protocol_version: 1.1.0
run_infer: $infer
run_mining: $mining
run_training: false
task_id: t0000quarrycheck
EOF
}
chmod -R a+rX "$IN"; chmod 755 "$WORK"
echo "$(wc -l < "$IN/candidate-index.tsv") candidates, $(du -sh "$IN" | cut -f1)"

RESULTS=()
run_job() {  # $1 = mining | infer; runs the image like the platform, output in $WORK/out-$1
  local job=$1 out="$WORK/out-$1" name="quarry-check-$1" start rc
  write_env "$job"
  mkdir -p "$out" && chown 1000:1000 "$out"
  say "$job job: run --user 1000:1000 --network=none -v in:/in:ro -v out:/out IMAGE (no command)"
  start=$(date +%s)
  rc=0
  pl run --name "$name" --user 1000:1000 --network=none --shm-size=16g \
    -v "$IN:/in:ro" -v "$out:/out" "$IMAGE" > "$out/ymir-executor-out.log" 2>&1 || rc=$?
  local took=$(( $(date +%s) - start ))
  tail -n 5 "$out/ymir-executor-out.log"
  echo "exit $rc in ${took}s"
  if [[ $rc != 0 ]]; then
    echo "--- monitor.txt:"; cat "$out/monitor.txt" 2>/dev/null || echo "(none)"
    echo "--- log tail:"; tail -n 30 "$out/ymir-executor-out.log"
    fail "$job job exited $rc"
  fi
  # Nothing may be written outside /tmp (and the mounts): /app, /opt, /img-man stay as built.
  local changed
  changed=$(podman --runtime runc diff "$name" | grep -vE '^[ACD] /(tmp|run|dev|proc|sys|in|out)(/|$)|^[AC] /etc(/(passwd|group|hosts|hostname|resolv\.conf|mtab))?$' || true)
  podman --runtime runc rm "$name" > /dev/null
  [[ -z "$changed" ]] || fail "$job job wrote into the image filesystem: $changed"
  "$PY" - "$job" "$IN" "$out" <<'EOF' || fail "$job outputs"
import json, os, sys
job, indir, out = sys.argv[1:]
candidates = [line.strip() for line in open(os.path.join(indir, "candidate-index.tsv")) if line.strip()]
monitor = open(os.path.join(out, "monitor.txt")).read().splitlines()[0].split("\t")
assert len(monitor) >= 4 and monitor[3] == "2", f"monitor.txt first line {monitor}: state must be 2"
if job == "mining":
    rows = [line.rstrip("\n").split("\t") for line in open(os.path.join(out, "result.tsv")) if line.strip()]
    assert len(rows) == len(candidates), f"{len(rows)} lines for {len(candidates)} candidates"
    assert sorted(r[0] for r in rows) == sorted(candidates), "result.tsv paths differ from candidate-index.tsv"
    scores = [float(r[1]) for r in rows]
    assert scores == sorted(scores, reverse=True), "result.tsv is not sorted by descending score"
    print(f"result.tsv: {len(rows)} lines, scores {scores[0]:.4g} .. {scores[-1]:.4g}, descending; monitor {monitor[:4]}")
elif "images" in (result := json.load(open(os.path.join(out, "infer-result.json")))):  # segmentation: COCO result
    listed = [im["file_name"] for im in result["images"]]
    assert sorted(listed) == sorted(os.path.basename(c) for c in candidates), "images differ from the candidates"
    sizes = {im["id"]: [im["height"], im["width"]] for im in result["images"]}
    annotations = result["annotations"]
    assert annotations, "no instance at all on COCO images"
    for a in annotations:
        assert a["segmentation"]["size"] == sizes[a["image_id"]] and a["segmentation"]["counts"], a
        assert len(a["bbox"]) == 4 and 0 < a["confidence"] <= 1 and a["iscrowd"] == 0, a
    print(f"infer-result.json: COCO result, {len(listed)} images, {len(annotations)} RLE masks; monitor {monitor[:4]}")
else:
    detection = result["detection"]
    names = {os.path.basename(c) for c in candidates}
    assert set(detection) == names, f"infer-result.json keys differ: {sorted(set(detection) ^ names)}"
    boxes = [b for v in detection.values() for b in v["boxes"]]
    for b in boxes:
        assert all(isinstance(b["box"][k], int) for k in "xywh") and isinstance(b["score"], float), b
    assert boxes, "no box at all on COCO images"
    print(f"infer-result.json: {len(detection)} images, {len(boxes)} boxes; monitor {monitor[:4]}")
EOF
  RESULTS+=("$job: passed in ${took}s")
}
run_job mining
run_job infer

say "summary"
echo "image: $IMAGE, ${SIZE_H}${BUILD_S:+, built in ${BUILD_S}s}"
printf '%s\n' "${RESULTS[@]}"
echo "CHECK PASSED"
