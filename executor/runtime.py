"""Process environment for running offline, as any uid, with no writable HOME (called by start.py only).

Must run before ultralytics, matplotlib or torch hub are imported: they read these variables at import.
"""
import os
import shutil
import tempfile

CACHE_VARS = ("YOLO_CONFIG_DIR", "MPLCONFIGDIR", "TORCH_HOME", "XDG_CACHE_HOME")


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
    for var in CACHE_VARS:
        os.environ.setdefault(var, os.path.join(root, var.lower()))
        os.makedirs(os.environ[var], exist_ok=True)
    if not writable(os.environ.get("HOME", "")):
        os.environ["HOME"] = root  # the platform runs us as a uid with no passwd entry and no home
    place_font(os.environ["YOLO_CONFIG_DIR"])
    return root


def place_font(config_dir: str) -> None:
    """Ultralytics' train/val checks for Arial.ttf and downloads it when missing: give it a local TTF."""
    target = os.path.join(config_dir, "Ultralytics", "Arial.ttf")
    if os.path.exists(target):
        return
    try:
        import matplotlib  # a dependency of ultralytics; ships DejaVuSans

        source = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
    except ImportError:
        return
    if os.path.isfile(source):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(source, target)

