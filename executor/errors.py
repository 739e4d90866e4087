"""Error types carrying the ymir executor error codes, and the one place exceptions map to codes.

Raise the subclass that says what is wrong (ConfigError for a bad key, DatasetError for a bad index or
annotation, ...) with a message naming the file, line or key at fault. `error_code` turns any exception
into the code written to monitor.txt, so nothing else needs to know the numbers.
"""

CONTAINER_ERROR = 160004  # what ymir itself records for a failure without a specific code


class QuarryError(Exception):
    code = CONTAINER_ERROR


class ConfigError(QuarryError):
    code = 300001


class DatasetError(QuarryError):
    code = 300002


class ImageError(QuarryError):
    code = 300003


class ModelError(QuarryError):
    code = 300004


class CudaError(QuarryError):
    code = 300101


class NoGpuError(QuarryError):
    code = 300102


class OutOfMemory(QuarryError):
    code = 300103


class NanError(QuarryError):
    code = 300201


def error_code(exc: BaseException) -> int:
    """The ymir error code for an exception, including framework errors we don't raise ourselves."""
    if isinstance(exc, QuarryError):
        return exc.code
    text = f"{type(exc).__name__}: {exc}"
    if "OutOfMemoryError" in type(exc).__name__ or "CUDA out of memory" in text:
        return OutOfMemory.code
    if "CUDA driver" in text or "no kernel image is available" in text:
        return CudaError.code
    return CONTAINER_ERROR


def one_line(exc: BaseException) -> str:
    """The message shown in monitor.txt: the exception's text on a single line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, QuarryError) else f"{type(exc).__name__}: {text}"
