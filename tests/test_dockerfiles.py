"""Static checks of the image recipe (dockerfiles/Dockerfile) against what the platform needs.

ymir-protocol §2/§3/§8: the platform reads /img-man/*-template.yaml and /img-man/manifest.yaml with
`docker run --rm IMAGE cat ...`, then runs the image with no command (its CMD), as a non-root uid, /in
read-only and no network. One Dockerfile builds both variants, CPU and CUDA, from build args (VARIANTS);
most checks run once per variant on the file rendered with that variant's build args. These tests read the
Dockerfile; building and running an image is dockerfiles/check.sh (too slow for CI).
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
DOCKERFILE = "dockerfiles/Dockerfile"
# The build args of each variant (on top of the Dockerfile's defaults): the CPU variant is the defaults.
# The README and the Dockerfile's header document the same commands (test_documented_builds_...).
VARIANTS = {
    "cpu": {},
    "cuda": {"VARIANT": "cuda", "BASE_IMAGE": "nvidia/cuda:13.0.2-runtime-ubuntu24.04", "TORCH_INDEX_URL": ""},
}
# The only build args in which the variants may differ.
VARIANT_ARGS = {"VARIANT", "BASE_IMAGE", "TORCH_INDEX_URL"}
NVIDIA_ENV = {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}
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


def arg_defaults(instructions):
    """ARG name -> default value (None: declared with no default anywhere)."""
    defaults = {}
    for word, args in instructions:
        if word == "ARG":
            name, eq, value = args.partition("=")
            if eq or name not in defaults:
                defaults[name] = value if eq else defaults.get(name)
    return defaults


def build_args(instructions, variant):
    """The value of every ARG in a build of the variant: its build args over the Dockerfile's defaults."""
    values = {name: value or "" for name, value in arg_defaults(instructions).items()}
    values.update(VARIANTS[variant])
    return values


VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def render(instructions, values):
    """The instructions with the build args substituted where Docker substitutes them itself (not in RUN,
    whose shell reads them from its environment)."""
    def substitute(match):
        name = match.group(1) or match.group(2)
        return values[name] if name in values else match.group(0)
    return [(word, VAR.sub(substitute, args) if word in ("FROM", "COPY", "LABEL", "ENV", "WORKDIR") else args)
            for word, args in instructions]


def key_values(instructions, instruction: str) -> dict:
    """The key=value pairs of every `instruction` (LABEL, ENV) among `instructions` (values unquoted)."""
    found = {}
    for word, args in instructions:
        if word == instruction:
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                found[key] = value
    return found


def labels_of(instructions):
    return key_values(instructions, "LABEL")


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
    return key_values(stage, "ENV")


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


@pytest.fixture(scope="module")
def raw():
    """The Dockerfile as written (build args not substituted)."""
    text = read(DOCKERFILE)
    instructions = parse(text)
    return {"text": text, "instructions": instructions, "stages": stages(instructions)}


def rendered(variant):
    text = read(DOCKERFILE)
    values = build_args(parse(text), variant)
    instructions = render(parse(text), values)
    all_stages = stages(instructions)
    return {"variant": variant, "args": values, "text": text, "instructions": instructions,
            "stages": all_stages, "final": all_stages[-1][1], "image": lineage(all_stages)}


@pytest.fixture(params=sorted(VARIANTS), scope="module")
def dockerfile(request):
    """The Dockerfile rendered with one variant's build args."""
    return rendered(request.param)


def test_base_image_is_a_build_argument(raw, dockerfile):
    first = raw["instructions"][0]
    assert first[0] == "ARG" and first[1].startswith("BASE_IMAGE="), "the file must start with ARG BASE_IMAGE=..."
    base = dockerfile["args"]["BASE_IMAGE"]
    if dockerfile["variant"] == "cuda":
        assert base.startswith("nvidia/cuda:") and "-runtime-" in base, base
    else:
        assert re.match(r"^(debian|python):[\w.-]*slim", base), base
    # Every stage starts from the argument (or an earlier stage), so a local base can stand in.
    names = []
    for (written, _), (base, _) in zip(raw["stages"], dockerfile["stages"]):
        assert written.split()[0] in ("${BASE_IMAGE}", "scratch") or base.split()[0] in names, written
        names.append(stage_name(base))
    # FROM can only use the args declared before the first FROM.
    header = []
    for word, args in raw["instructions"]:
        if word == "FROM":
            break
        header.append(args.partition("=")[0])
    for written, _ in raw["stages"]:
        for match in VAR.finditer(written):
            assert (match.group(1) or match.group(2)) in header, f"FROM {written}: not a global ARG"


def test_build_args_are_declared_where_they_are_used(raw):
    # An ARG not declared in the stage that uses it renders as '' in COPY, LABEL, ENV: no error, a wrong image.
    defaults = arg_defaults(raw["instructions"])
    for base, stage in raw["stages"]:
        declared = set()
        for word, args in stage:
            if word == "ARG":
                declared.add(args.partition("=")[0])
            elif word in ("COPY", "LABEL", "ENV", "WORKDIR"):
                for match in VAR.finditer(args):
                    name = match.group(1) or match.group(2)
                    if name in defaults:
                        assert name in declared, f"{word} {args[:60]}: ARG {name} is not declared in FROM {base}"


def test_cuda_base_matches_the_pinned_torch_build():
    default = VARIANTS["cuda"]["BASE_IMAGE"]
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


def test_templates_and_manifest_go_to_img_man(raw, dockerfile):
    # The folder is the build arg TEMPLATES (default templates/), so that another task type's templates and
    # manifest can be built into an image of their own.
    assert dockerfile["args"]["TEMPLATES"] == "templates"
    written = [sources for _, sources, dest in copies(raw["stages"][-1][1]) if dest.rstrip("/") == "/img-man"]
    assert written and all(s.startswith("${TEMPLATES}/") for srcs in written for s in srcs), written
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


def test_the_executor_reads_its_family_from_img_man(dockerfile):
    # The build arg TEMPLATES decides what goes to /img-man; QUARRY_TEMPLATES makes the executor read its defaults
    # and its family (the manifest's object_type) from those very files (executor.protocol.templates.active_templates_dir).
    from executor.protocol.templates import TEMPLATES_VAR

    assert env_of(dockerfile["image"]).get(TEMPLATES_VAR) == "/img-man"


def test_object_type_label_is_a_build_arg_checked_against_the_manifest(raw, dockerfile, tmp_path):
    assert dockerfile["args"]["OBJECT_TYPE"] == "2"
    assert labels_of(dockerfile["instructions"])["io.ymir.object-type"] == "2"
    assert 'io.ymir.object-type="${OBJECT_TYPE}"' in raw["text"]
    # The build fails when OBJECT_TYPE is not the object_type of the manifest copied to /img-man: run the
    # Dockerfile's grep on the real manifest with the default and with another value.
    runs = [args for word, args in raw["stages"][-1][1] if word == "RUN" and "/img-man/manifest.yaml" in args]
    assert len(runs) == 1, "one RUN of the final stage must check /img-man/manifest.yaml"
    match = re.search(r'grep -Eq "([^"]+)" /img-man/manifest\.yaml', runs[0])
    assert match and "${OBJECT_TYPE}" in match.group(1), runs[0]
    for value, agrees in (("2", True), ("3", False), ("22", False)):
        pattern = match.group(1).replace("${OBJECT_TYPE}", value)
        found = subprocess.run(["grep", "-Eq", pattern, os.path.join(ROOT, "templates/manifest.yaml")]).returncode
        assert (found == 0) == agrees, f"OBJECT_TYPE={value}: grep -Eq {pattern!r} exits {found}"


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
    # The NVIDIA container runtime reads these (the CUDA base sets them too; set again for a CUDA build on
    # another base); the CPU image sets neither.
    nvidia = {key: value for key, value in env.items() if key.startswith("NVIDIA_")}
    assert nvidia == (NVIDIA_ENV if dockerfile["variant"] == "cuda" else {})
    words = [word for word, _ in dockerfile["image"]]
    assert "USER" not in words, "the platform picks the uid (--user); the image must not depend on one"
    assert "VOLUME" not in words


def test_torch_sources_are_build_arguments(dockerfile):
    args = dockerfile["args"]
    assert "TORCH_INDEX_URL" in args and "PIP_OFFLINE" in args
    if dockerfile["variant"] == "cpu":
        assert "/cpu" in args["TORCH_INDEX_URL"], "the CPU image takes torch from a CPU-only wheel index"
    else:
        assert args["TORCH_INDEX_URL"] == "", "the CUDA image takes PyPI's torch (the CUDA build)"
    # The local wheel directory is the named build context `wheels` (an empty stage by default), only
    # bind-mounted into the pip steps: no COPY of it, so no wheel file lands in a layer.
    assert ("scratch AS wheels", []) in [(base, stage) for base, stage in dockerfile["stages"]]
    pips = [a for w, a in dockerfile["image"] if w == "RUN" and "pip install" in a]
    assert pips and all(a.startswith("--mount=type=bind,from=wheels,target=/tmp/wheels ") for a in pips)
    all_copies = copies(sum((stage for _, stage in dockerfile["stages"]), []))
    assert not any("--from=wheels" in flags for flags, _, _ in all_copies)
    assert "WHEELS_ID" in args


def test_labels_name_version_protocols_and_variant(raw, dockerfile):
    written = " ".join(args for word, args in raw["instructions"] if word == "LABEL")
    assert 'org.opencontainers.image.version="${QUARRY_VERSION}"' in written
    labels = labels_of(dockerfile["instructions"])
    assert "1.1.0" in labels["io.ymir.protocol-versions"].split(",")
    assert labels["quarry.variant"] == dockerfile["variant"]
    description = labels["org.opencontainers.image.description"]
    assert f"{dockerfile['variant']} image" in description and dockerfile["args"]["BASE_IMAGE"] in description


def test_variants_differ_only_in_the_variant_args(raw):
    assert set(VARIANTS) == {"cpu", "cuda"}
    defaults = build_args(raw["instructions"], "cpu")
    assert VARIANTS["cpu"] == {} and defaults["VARIANT"] == "cpu", "a build with no args is the CPU variant"
    cpu, cuda = rendered("cpu"), rendered("cuda")
    assert {k for k in cpu["args"] if cpu["args"][k] != cuda["args"][k]} == VARIANT_ARGS
    # The same instructions, apart from those that read a variant arg: the base of deps, the pick of the
    # variant stage, the labels.
    assert [w for w, _ in cpu["instructions"]] == [w for w, _ in cuda["instructions"]]
    changed = [(w, a) for (w, a), (_, c), (_, g) in zip(raw["instructions"], cpu["instructions"],
                                                      cuda["instructions"]) if c != g]
    assert changed, "the variants build the same image"
    for word, args in changed:
        names = {m.group(1) or m.group(2) for m in VAR.finditer(args)}
        assert word in ("FROM", "LABEL") and names & VARIANT_ARGS, f"{word} {args[:60]} differs between the variants"
    # The variant stages: one per variant, and the image starts from the one VARIANT names.
    variant_stages = sorted(n[len("variant-"):] for n in (stage_name(b) for b, _ in raw["stages"])
                            if n and n.startswith("variant-"))
    assert variant_stages == sorted(VARIANTS)
    assert raw["stages"][-1][0] == "variant-${VARIANT}"
    # In the image: the NVIDIA variables, the labels that name the variant, nothing else.
    env_cpu, env_cuda = env_of(cpu["image"]), env_of(cuda["image"])
    assert {k: v for k, v in env_cuda.items() if env_cpu.get(k) != v} == NVIDIA_ENV
    assert not set(env_cpu) - set(env_cuda)
    labels_cpu, labels_cuda = labels_of(cpu["instructions"]), labels_of(cuda["instructions"])
    assert {k for k in labels_cpu if labels_cpu[k] != labels_cuda.get(k)} == {
        "quarry.variant", "org.opencontainers.image.description"}


def documented_builds(text):
    """{variant: build args} of the `docker build -f dockerfiles/Dockerfile ... -t quarry:...<variant> .`
    commands in a text (comment markers and line continuations removed), QUARRY_VERSION left out."""
    lines = [re.sub(r"^\s*#\s?", "", line) for line in text.splitlines()]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    builds = {}
    for line in joined.splitlines():
        command = re.split(r"\bdocker build\s", line, maxsplit=1)  # not `docker buildx build`: examples
        if len(command) < 2 or "dockerfiles/Dockerfile" not in line:
            continue
        words = shlex.split(command[1].split("#")[0])
        tag = words[words.index("-t") + 1]
        args = dict(words[i + 1].partition("=")[::2] for i, w in enumerate(words) if w == "--build-arg")
        args.pop("QUARRY_VERSION", None)
        variant = next(v for v in VARIANTS if tag.endswith(v))
        assert variant not in builds, f"two build commands for {variant}"
        builds[variant] = args
    return builds


@pytest.mark.parametrize("rel", ["README.md", DOCKERFILE])
def test_documented_builds_are_the_variants(rel):
    assert documented_builds(read(rel)) == VARIANTS


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
