"""Error types carrying the ymir executor error codes, and the one place exceptions map to codes.

Raise the subclass that says what is wrong (ConfigError for a bad key, DatasetError for a bad index or
annotation, ...) with a message naming the file, line or key at fault. `error_code` turns any exception
into the code written to monitor.txt, so nothing else needs to know the numbers.
"""
import traceback

CONTAINER_ERROR = 160004  # what ymir itself records for a failure without a specific code


class QuarryError(Exception):
    """Base of our errors; a subclass names its ymir code in its class line: `class X(QuarryError, code=N)`."""
    code = CONTAINER_ERROR

    def __init_subclass__(cls, code: int | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code


class ConfigError(QuarryError, code=300001):
    """A config or env.yaml key with a bad value, or a file of them that cannot be read."""


class DatasetError(QuarryError, code=300002):
    """A bad index or annotation file, or a split left empty."""


class ImageError(QuarryError, code=300003):
    """An image that cannot be read or decoded."""


class NoReadableImages(ImageError, DatasetError, code=300003):
    """Every image listed is unreadable: the data set is unusable because of its images, so 300003."""


class ModelError(QuarryError, code=300004):
    """Weights that are missing, corrupt or of the wrong kind."""


class CudaError(QuarryError, code=300101):
    """A CUDA driver or runtime failure."""


class NoGpuError(QuarryError, code=300102):
    """A GPU asked for that is not there."""


class OutOfMemory(QuarryError, code=300103):
    """Out of GPU or host memory."""


class NanError(QuarryError, code=300201):
    """Training diverged (the loss is not finite)."""


class Terminated(QuarryError):
    """The process was asked to stop (SIGTERM from `docker stop` or a time limit)."""
    code = CONTAINER_ERROR


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) while shards were scored or merged: how much of the work the shards folder keeps for a
    rerun (`kept` of `shards` shards, `images` images)."""

    def __init__(self, folder: str, kept: int, shards: int, images: int):
        self.folder, self.kept, self.shards, self.images = folder, kept, shards, images
        super().__init__(f"interrupted: {kept} of {shards} shards ({images} images) are finished and kept in {folder}"
                         if kept else "interrupted before any shard was finished: nothing is kept")


# Framework errors we don't raise ourselves, recognised by their text (torch, CUDA, cuDNN, cuBLAS, the OS).
# First match wins; the exception's type name is part of the text.
TEXT_CODES = (
    (OutOfMemory.code, ("OutOfMemoryError", "CUDA out of memory", "out of memory", "CUBLAS_STATUS_ALLOC_FAILED",
                        "DefaultCPUAllocator: can't allocate memory", "MemoryError")),
    (CudaError.code, ("CUDA driver version is insufficient", "NVIDIA driver on your system is too old",
                      "cudaErrorInsufficientDriver", "no kernel image is available", "invalid device function",
                      "CUDA driver", "CUDNN_STATUS_NOT_INITIALIZED", "CUDA error: unknown error")),
    (NoGpuError.code, ("Found no NVIDIA driver", "No CUDA GPUs are available", "invalid device ordinal",
                       "Torch not compiled with CUDA enabled")),
)


def error_code(exc: BaseException) -> int:
    """The ymir error code for an exception, including framework errors we don't raise ourselves."""
    if isinstance(exc, QuarryError):
        return exc.code
    text = f"{type(exc).__name__}: {exc}"
    for code, needles in TEXT_CODES:
        if any(needle in text for needle in needles):
            return code
    return CONTAINER_ERROR


def from_ctrl_c(exc: BaseException) -> bool:
    """A Ctrl-C, or an error a Ctrl-C caused: a KeyboardInterrupt that lands inside a lock's release (a thread pool's
    condition, on exit from its `with`) surfaces as RuntimeError('release unlocked lock') with the interrupt as its
    context; either way the user stopped the run, which is not a failure to report."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def one_line(exc: BaseException) -> str:
    """The message shown in monitor.txt: the exception's text on a single line. Our own errors name the file,
    line or key at fault; for anything else the type and the innermost source line it was raised from follow."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, QuarryError):
        return text
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    where = f" (raised at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {text}{where}"
