"""Static checks of the image recipes (dockerfiles/*.dockerfile) against what the platform needs.

ymir-protocol §2/§3/§8: the platform reads /img-man/*-template.yaml and /img-man/manifest.yaml with
`docker run --rm IMAGE cat ...`, then runs the image with no command (its CMD), as a non-root uid, /in
read-only and no network. These tests read the Dockerfiles; building and running an image is
dockerfiles/check.sh (too slow for CI).
"""
import fnmatch
import json
import os
import re
import shlex
import subprocess
from importlib import metadata

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILES = {"cpu": "dockerfiles/cpu.dockerfile", "cuda": "dockerfiles/cuda.dockerfile"}
WEIGHTS_DIR = "/opt/quarry/weights"


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as handle:
        return handle.read()


def parse(text):
    """Dockerfile -> [(INSTRUCTION, arguments)], continuation lines joined and comments dropped."""
    instructions, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # comment lines inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            instructions.append((word.upper(), rest.strip()))
        current = ""
    assert not current, "a Dockerfile ends inside a continued line"
    return instructions


def stages(instructions):
    """[(FROM arguments, [instructions of the stage])]; instructions before the first FROM are dropped."""
    result = []
    for word, args in instructions:
        if word == "FROM":
            result.append((args, []))
        elif result:
            result[-1][1].append((word, args))
    return result


def stage_name(base):
    parts = base.split()
    return parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None


def lineage(all_stages, index=-1):
    """The instructions of a stage and of the stages it is built FROM, oldest first."""
    base, own = all_stages[index]
    parent = base.split()[0]
    for i, (other, _) in enumerate(all_stages[: index % len(all_stages)]):
        if stage_name(other) == parent:
            return lineage(all_stages, i) + own
    return own


def env_of(stage):
    """ENV key=value pairs of a stage (values unquoted)."""
    env = {}
    for word, args in stage:
        if word == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def copies(stage):
    """COPY instructions of a stage as (flags, sources, destination)."""
    result = []
    for word, args in stage:
        if word == "COPY":
            parts = shlex.split(args)
            flags = [p for p in parts if p.startswith("--")]
            paths = [p for p in parts if not p.startswith("--")]
            result.append((flags, paths[:-1], paths[-1]))
    return result


def requirement_pins():
    pins = {}
    for line in read("requirements.txt").splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


@pytest.fixture(params=sorted(DOCKERFILES), scope="module")
def dockerfile(request):
    text = read(DOCKERFILES[request.param])
    instructions = parse(text)
    all_stages = stages(instructions)
    return {"variant": request.param, "text": text, "instructions": instructions,
            "stages": all_stages, "final": all_stages[-1][1], "image": lineage(all_stages)}


def test_base_image_is_a_build_argument(dockerfile):
    first = dockerfile["instructions"][0]
    assert first[0] == "ARG" and first[1].startswith("BASE_IMAGE="), "the file must start with ARG BASE_IMAGE=..."
    default = first[1].split("=", 1)[1]
    if dockerfile["variant"] == "cuda":
        assert default.startswith("nvidia/cuda:") and "-runtime-" in default, default
    else:
        assert re.match(r"^(debian|python):[\w.-]*slim", default), default
    # Every stage starts from the argument (or an earlier stage), so a local base can stand in.
    names = []
    for base, _ in dockerfile["stages"]:
        assert base.split()[0] in ["${BASE_IMAGE}", "scratch"] + names, base
        names.append(stage_name(base))


def test_cuda_base_matches_the_pinned_torch_build():
    default = parse(read(DOCKERFILES["cuda"]))[0][1].split("=", 1)[1]
    cuda = re.match(r"nvidia/cuda:(\d+)\.(\d+)", default)
    assert cuda, default
    pinned = requirement_pins()["torch"]
    try:
        installed, requires = metadata.version("torch"), metadata.requires("torch") or []
    except metadata.PackageNotFoundError:
        pytest.skip("torch is not installed here")
    if installed.split("+")[0] != pinned:
        pytest.skip(f"installed torch {installed} is not the pinned {pinned}")
    # PyPI's Linux torch names its CUDA as cuda-toolkit==X.Y.Z (or nvidia-cuda-runtime-cuXX==X.Y.Z).
    wanted = None
    for requirement in requires:
        match = re.match(r"(?:cuda-toolkit|nvidia-cuda-runtime-cu\d+)\b[^=]*==(\d+)\.(\d+)", requirement)
        if match:
            wanted = match.groups()
            break
    if wanted is None:
        pytest.skip(f"installed torch {installed} names no CUDA runtime (a CPU build)")
    assert cuda.groups() == wanted, f"base CUDA {'.'.join(cuda.groups())} != torch's CUDA {'.'.join(wanted)}"


def test_cmd_runs_start_sh_and_there_is_no_entrypoint(dockerfile):
    words = [word for word, _ in dockerfile["instructions"]]
    assert "ENTRYPOINT" not in words, "an ENTRYPOINT would swallow `cat /img-man/...`"
    assert words[-1] == "CMD", "the file must end with CMD"
    assert words.count("CMD") == 1
    cmd = dockerfile["instructions"][-1][1]
    if cmd.startswith("["):
        cmd = " ".join(json.loads(cmd))
    assert cmd == "bash /usr/bin/start.sh"


def test_start_sh_runs_start_py(dockerfile):
    writes = [args for word, args in dockerfile["final"] if word == "RUN" and "/usr/bin/start.sh" in args]
    copied = [c for c in copies(dockerfile["final"]) if c[2] == "/usr/bin/start.sh"]
    assert writes or copied, "/usr/bin/start.sh is neither written nor copied in the final stage"
    if copied:
        text = read(copied[0][1][0])
    else:
        text = writes[0]
    assert "python3 /app/start.py" in text


def test_templates_and_manifest_go_to_img_man(dockerfile):
    img_man = [(sources, dest) for _, sources, dest in copies(dockerfile["final"]) if dest.rstrip("/") == "/img-man"]
    assert img_man, "nothing is copied to /img-man"
    sources = [s for srcs, _ in img_man for s in srcs]
    assert "templates/manifest.yaml" in sources or "templates/" in sources or "templates" in sources
    templates = sorted(n for n in os.listdir(os.path.join(ROOT, "templates")) if n.endswith("-template.yaml"))
    assert templates
    for name in templates:
        path = "templates/" + name
        assert any(s.rstrip("/") == "templates" or s == path or
                   (s.startswith("templates/") and fnmatch.fnmatch(path, s)) for s in sources), (
            f"{path} is not copied to /img-man")
    manifest = read("templates/manifest.yaml")
    assert re.search(r"^object_type:\s*2\s*$", manifest, re.M)


def test_requirements_are_the_one_source_of_versions(dockerfile):
    text_runs = " ".join(args for word, args in dockerfile["instructions"] if word == "RUN")
    copied = [(sources, dest) for _, sources, dest in copies(sum((s for _, s in dockerfile["stages"]), []))
              if "requirements.txt" in sources]
    assert copied, "requirements.txt is not copied into the build"
    assert re.search(r"pip install [^;&]*-r \S*requirements\.txt", text_runs), "no `pip install -r requirements.txt`"
    # No package version is written in the Dockerfile: torch's pins are read from requirements.txt.
    for name in requirement_pins():
        assert not re.search(rf"(?<![\w-]){re.escape(name)}\s*(==|>=|<=|~=)\s*\d", text_runs, re.I), (
            f"{name} is pinned in the Dockerfile; pin it in requirements.txt only")
    assert "requirements.txt" in text_runs and "torch|torchvision" in text_runs


def test_dependencies_are_installed_before_the_code_is_copied(dockerfile):
    # Layer order: a code change must not re-run pip. The image's layers are its stage and the stages
    # it is built FROM; the code comes in last (copied from a stage of its own or from the context).
    image = dockerfile["image"]
    pips = [i for i, (w, a) in enumerate(image) if w == "RUN" and "pip install" in a]
    app = [i for i, (w, a) in enumerate(image)
           if w == "COPY" and shlex.split(a)[-1].rstrip("/") == "/app"]
    assert pips and app and max(pips) < min(app)
    context_root = [i for i, (w, a) in enumerate(image)
                    if w == "COPY" and "--from" not in a and shlex.split(a)[-2:-1] == ["."]]
    assert not context_root or max(pips) < min(context_root)


def test_weights_directory_is_baked_and_named(dockerfile):
    env = env_of(dockerfile["image"])
    assert env.get("QUARRY_WEIGHTS_DIR") == WEIGHTS_DIR
    text = dockerfile["text"]
    assert "weight[s]" in text, "a local weights/ directory must be copied when present (glob keeps it optional)"
    assert f"mkdir -p {WEIGHTS_DIR}" in text
    assert "chmod -R a+rX /opt/quarry" in text, "bundled weights must be world-readable"
    assert any(WEIGHTS_DIR.startswith(dest.rstrip("/")) for _, _, dest in copies(dockerfile["final"]))
    args = [a.split("=")[0] for w, a in dockerfile["instructions"] if w == "ARG"]
    assert "WEIGHTS_URL" in args


def test_runs_as_any_uid_offline(dockerfile):
    env = env_of(dockerfile["image"])
    assert env.get("HOME") == "/tmp"
    for key in ("YOLO_CONFIG_DIR", "MPLCONFIGDIR", "TORCH_HOME", "XDG_CACHE_HOME"):
        assert env.get(key, "").startswith("/tmp/"), f"{key} must be under /tmp, is {env.get(key)!r}"
    assert env.get("YOLO_OFFLINE") == "1"
    assert env.get("YOLO_AUTOINSTALL") == "0"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", "nothing may be written under /app at run time"
    assert "/opt/venv/bin" in env.get("PATH", "")
    words = [word for word, _ in dockerfile["image"]]
    assert "USER" not in words, "the platform picks the uid (--user); the image must not depend on one"
    assert "VOLUME" not in words


def test_torch_sources_are_build_arguments(dockerfile):
    args = dict(a.partition("=")[::2] for w, a in dockerfile["instructions"] if w == "ARG")
    assert "TORCH_INDEX_URL" in args and "PIP_OFFLINE" in args
    if dockerfile["variant"] == "cpu":
        assert "/cpu" in args["TORCH_INDEX_URL"], "the CPU image takes torch from a CPU-only wheel index"
    # The local wheel directory is the named build context `wheels` (an empty stage by default), only
    # bind-mounted into the pip steps: no COPY of it, so no wheel file lands in a layer.
    assert ("scratch AS wheels", []) in [(base, stage) for base, stage in dockerfile["stages"]]
    pips = [a for w, a in dockerfile["image"] if w == "RUN" and "pip install" in a]
    assert pips and all(a.startswith("--mount=type=bind,from=wheels,target=/tmp/wheels ") for a in pips)
    all_copies = copies(sum((stage for _, stage in dockerfile["stages"]), []))
    assert not any("--from=wheels" in flags for flags, _, _ in all_copies)
    assert "WHEELS_ID" in args


def test_labels_name_version_and_protocols(dockerfile):
    labels = " ".join(args for word, args in dockerfile["instructions"] if word == "LABEL")
    assert 'org.opencontainers.image.version="${QUARRY_VERSION}"' in labels
    match = re.search(r'io\.ymir\.protocol-versions="([^"]+)"', labels)
    assert match and "1.1.0" in match.group(1).split(",")


def test_dockerignore_keeps_what_the_build_needs():
    patterns = [line.strip() for line in read(".dockerignore").splitlines()
                if line.strip() and not line.startswith("#")]
    for needed in (".git", ".venv"):
        assert needed in patterns
    for kept in ("requirements.txt", "templates", "weights", "start.py", "executor", "dockerfiles"):
        assert kept not in patterns and kept + "/" not in patterns, f".dockerignore drops {kept}"


def test_weights_dir_is_gitignored():
    lines = [line.strip() for line in read(".gitignore").splitlines()]
    assert any(line.strip("/") == "weights" for line in lines)


def test_check_script_is_valid_and_not_in_ci():
    subprocess.run(["bash", "-n", os.path.join(ROOT, "dockerfiles/check.sh")], check=True)
    ci = "".join(read(rel) for rel in (".ci/run", "scripts/test.sh") if os.path.exists(os.path.join(ROOT, rel)))
    assert "check.sh" not in ci, "dockerfiles/check.sh builds an image: too slow for CI"
