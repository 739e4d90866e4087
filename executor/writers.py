"""Every result file the executor writes, each written atomically (temp file + rename in the same dir)."""
import json
import math
import os
import tempfile
from typing import Iterable, Mapping, Sequence

UNREADABLE_SCORE = -1.0  # sentinel for images that could not be read: below every real score (all are >= 0)


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` to `path` so that readers see either the old file or the whole new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def format_score(score: float) -> str:
    return repr(float(score))


def mining_lines(scored: Iterable[tuple[str, float]]) -> list[str]:
    """`path<TAB>score` lines, best first; ties keep input order so equal scores stay deterministic."""
    rows = list(scored)
    for path, score in rows:
        if not math.isfinite(score):
            raise ValueError(f"non-finite mining score {score} for {path}")
    rows.sort(key=lambda row: -row[1])
    return [f"{path}\t{format_score(score)}\n" for path, score in rows]


def write_mining_result(path: str, scored: Iterable[tuple[str, float]]) -> None:
    atomic_write_text(path, "".join(mining_lines(scored)))


def box_record(xyxy: Sequence[float], class_name: str, score: float) -> dict:
    """One detection in ymir's form: integer top-left x, y and width, height in original pixels."""
    x1, y1, x2, y2 = (int(round(float(v))) for v in xyxy)
    return {"box": {"x": x1, "y": y1, "w": max(0, x2 - x1), "h": max(0, y2 - y1)},
            "class_name": class_name, "score": round(float(score), 6)}


def write_infer_result(path: str, per_image: Mapping[str, list[dict]], list_key: str = "boxes") -> None:
    """`per_image` maps each candidate basename to its box records (possibly empty); `list_key` is
    `boxes` for protocol >= 1.1.0 and `annotations` below (see config.Env.infer_list_key)."""
    payload = {"detection": {name: {list_key: boxes} for name, boxes in per_image.items()}}
    atomic_write_text(path, json.dumps(payload, indent=None, separators=(",", ":")) + "\n")
