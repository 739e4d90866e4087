"""The process and its environment: running offline, as any uid, with no writable HOME (prepare_process_env:
start.py, the Python API, benchmarks), the CPUs and threads this process may use, and the ranks a launcher
(torchrun, our own worker spawn) gave it. engine/ and pipeline/ read no environment variable themselves.

prepare_process_env must run before torch, ultralytics or matplotlib are imported: they read these variables at
import.
"""
import os
import shutil
import tempfile

CACHE_VARS = ("YOLO_CONFIG_DIR", "MPLCONFIGDIR", "TORCH_HOME", "XDG_CACHE_HOME")
USER_THREADS_VAR = "QUARRY_OMP_NUM_THREADS"  # OMP_NUM_THREADS as the user set it, before any import changed it


def writable(path: str) -> bool:
    return bool(path) and os.path.isdir(path) and os.access(path, os.W_OK)


def prepare_process_env() -> str:
    """Point every cache and settings directory at a writable temp dir; forbid network and auto-installs.

    Returns the scratch root. Variables the caller already set (e.g. in a Dockerfile) are kept."""
    root = os.path.join(tempfile.gettempdir(), f"quarry-{os.getuid()}")
    os.makedirs(root, mode=0o700, exist_ok=True)
    os.environ.setdefault("YOLO_OFFLINE", "1")      # otherwise importing ultralytics probes the network
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")  # some code paths otherwise pip-install packages
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("ULTRALYTICS_SAFE_LOAD", "1")  # weights_only unpickling: a checkpoint cannot run code
    # OpenMP threads sleep instead of spinning while they wait: beside other work on the same CPUs, spinning
    # threads of an oversubscribed pool stall every parallel region (benchmarks/threads.py measures it)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # importing ultralytics sets OMP_NUM_THREADS=1 for the process: keep what the user asked for (children
    # spawned later inherit this, not Ultralytics' value)
    os.environ.setdefault(USER_THREADS_VAR, os.environ.get("OMP_NUM_THREADS", ""))
    for var in CACHE_VARS:
        os.environ.setdefault(var, os.path.join(root, var.lower()))
        os.makedirs(os.environ[var], exist_ok=True)
    if not writable(os.environ.get("HOME", "")):
        os.environ["HOME"] = root  # the platform runs us as a uid with no passwd entry and no home
    place_font(os.environ["YOLO_CONFIG_DIR"])
    return root


def place_font(config_dir: str) -> None:
    """Ultralytics' train/val checks for Arial.ttf, and its plots (training's pictures) for Arial.Unicode.ttf when a
    class name is not ASCII, and downloads them when missing: give it a local TTF under both names."""
    targets = [os.path.join(config_dir, "Ultralytics", name) for name in ("Arial.ttf", "Arial.Unicode.ttf")]
    if all(os.path.exists(target) for target in targets):
        return
    try:
        import matplotlib  # a dependency of ultralytics; ships DejaVuSans

        source = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
    except ImportError:
        return
    if os.path.isfile(source):
        os.makedirs(os.path.dirname(targets[0]), exist_ok=True)
        for target in targets:
            if not os.path.exists(target):
                shutil.copyfile(source, target)



def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> float | None:
    """The container's CPU quota in CPUs (cgroup v2 cpu.max, or v1 cfs quota / period); None when unlimited."""
    try:
        with open(os.path.join(root, "cpu.max"), encoding="ascii") as handle:
            quota, period = handle.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us"), encoding="ascii") as handle:
            quota = int(handle.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us"), encoding="ascii") as handle:
            period = int(handle.read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """CPUs this process may really use: its affinity mask (taskset, docker --cpuset-cpus), capped by a cgroup
    quota (docker --cpus, Kubernetes limits), at least 1."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_limit()
    if quota is not None:
        count = min(count, max(1, int(quota)))
    return max(1, count)


def cpu_threads(requested: int = 0) -> int:
    """Threads for the model on CPU: `requested` (config cpu_threads / --threads) if > 0, else OMP_NUM_THREADS
    if set, else every usable CPU."""
    if requested > 0:
        return requested
    try:
        from_env = int(os.environ.get(USER_THREADS_VAR, os.environ.get("OMP_NUM_THREADS", "0")) or 0)
    except ValueError:
        from_env = 0
    return from_env if from_env > 0 else usable_cpus()


# ---------------------------------------------------------------- ranks given by a launcher

def outer_ranks() -> tuple[int, int, int] | None:
    """(RANK, WORLD_SIZE, LOCAL_RANK) when this process was started by an outer torchrun with several ranks (the
    entry points put it in the Job); LOCAL_RANK says which of this node's devices is this rank's."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return int(os.environ.get("RANK", "0") or 0), world, int(os.environ.get("LOCAL_RANK", "0") or 0)


def worker_rank() -> tuple[int, int]:
    """(LOCAL_RANK, LOCAL_WORLD_SIZE) of a worker we spawned (workers.py): set by the launcher, always present."""
    return int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
