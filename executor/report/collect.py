"""The mining report's data, collected from a run: the images shown and the numbers (scores, classes, the run's
metadata), kept by ReportCollector while result.tsv is written, and the same numbers as JSON. Everything comes
in as values (the ranking's entries, then the boxes and class counts the pipeline read for it): nothing here
reads the pipeline's files.
"""

import math
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np


@dataclass
class ReportImage:
    """One image shown on the page. `rank` is 1-based in result.tsv order and `score` the score written there;
    `raw_score` is the algorithm's own score when selection reordered it (else None). Boxes are the model's
    predictions in original pixels (may be empty); `classes` are class indices into ReportData.class_names."""
    path: str
    rank: int
    score: float
    raw_score: float | None
    xyxy: np.ndarray
    classes: np.ndarray
    conf: np.ndarray

    def __post_init__(self):
        self.xyxy = np.asarray(self.xyxy, dtype=np.float64).reshape(-1, 4)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        self.conf = np.asarray(self.conf, dtype=np.float64).reshape(-1)
        if not len(self.xyxy) == len(self.classes) == len(self.conf):
            raise ValueError(f"ReportImage {self.path}: {len(self.xyxy)} boxes, {len(self.classes)} classes, "
                             f"{len(self.conf)} confidences")


@dataclass
class ReportData:
    """Everything the report shows. `run` holds model (path), model_sha256, algorithm, params (dict), seed,
    selection, pool_size, seconds, images_per_s, versions {quarry, torch, ultralytics, python} and started_at
    (other keys are shown too). `scores` is every readable image's written score in rank order. `top` holds
    the thumbnails (the top N); `selected` is how many images the user selects (start.py mine --topk K), which
    may be more than are shown, or None where nobody says (platform mode: the platform's top_k is never told), and
    then the top N are the selection. The plots' cut follows the selection (`cut`). Class counts are predicted
    boxes per class over the selection and over the whole pool. `duplicate_groups` holds (kept path,
    [pushed-down copies]) when selection "diverse" ran; `projection` a (K, 2) PCA of the shown images'
    embeddings with `projection_selected` (K,) marking the selected ones."""
    run: dict
    unreadable: list[tuple[str, str]]
    scores: np.ndarray
    class_names: list[str]
    class_counts_top: np.ndarray
    class_counts_pool: np.ndarray
    top: list[ReportImage]
    middle: list[ReportImage]
    bottom: list[ReportImage]
    duplicate_groups: list[tuple[str, list[str]]] = ()
    projection: np.ndarray | None = None
    projection_selected: np.ndarray | None = None
    # "written": `scores` are result.tsv's (non-increasing); "raw": the algorithm's own scores in result.tsv's
    # order, when selection reordered it (the written score is then a priority that says nothing about the image)
    score_kind: str = "written"
    projection_note: str = ""  # which images the projection shows (default: "of the shown images")
    duplicate_ranks: dict = None  # path → rank in result.tsv of the images in duplicate_groups (when known)
    selected: int | None = None   # start.py mine --topk: the images selected (None: the top N shown are)
    # selection diverse: {"threshold", "bin_edges", "counts" (each image's nearest photo-hash similarity to an
    # image above it), "flagged", "readable", "warning" ("" unless many are flagged)}
    near_duplicates: dict | None = None

    def __post_init__(self):
        self.duplicate_ranks = dict(self.duplicate_ranks or {})
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.class_counts_top = np.asarray(self.class_counts_top, dtype=np.int64).reshape(-1)
        self.class_counts_pool = np.asarray(self.class_counts_pool, dtype=np.int64).reshape(-1)
        count = len(self.class_names)
        if len(self.class_counts_top) != count or len(self.class_counts_pool) != count:
            raise ValueError(f"class counts have {len(self.class_counts_top)} (top) and {len(self.class_counts_pool)} "
                             f"(pool) entries for {count} class names")
        if self.projection is not None:
            self.projection = np.asarray(self.projection, dtype=np.float64).reshape(-1, 2)
            selected = (np.zeros(len(self.projection), dtype=bool) if self.projection_selected is None
                        else np.asarray(self.projection_selected, dtype=bool).reshape(-1))
            if len(selected) != len(self.projection):
                raise ValueError(f"projection has {len(self.projection)} points, projection_selected {len(selected)}")
            self.projection_selected = selected

    @property
    def top_n(self) -> int:
        return max((item.rank for item in self.top), default=0)

    @property
    def cut(self) -> int:
        """The images above the cut of the plots and the class comparison: the selection, else the top N."""
        return self.top_n if self.selected is None else int(self.selected)


def pca_2d(embeddings: np.ndarray) -> np.ndarray:
    """(K, D) embeddings onto their first two principal components, (K, 2) float64, by plain numpy SVD of the
    centred data. Deterministic: each component's sign makes its largest-magnitude loading positive. Fewer
    than two non-trivial components (K < 3, D < 2, identical rows) leave zero columns."""
    data = np.asarray(embeddings, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"pca_2d wants (K, D) embeddings, got shape {data.shape}")
    out = np.zeros((data.shape[0], 2), dtype=np.float64)
    if data.shape[0] == 0 or data.shape[1] == 0:
        return out
    centred = data - data.mean(axis=0, keepdims=True)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    tolerance = max(data.shape) * np.finfo(np.float64).eps * (s[0] if len(s) else 0.0)
    for k in range(min(2, len(s))):
        if s[k] <= tolerance:
            break
        sign = 1.0 if vt[k, np.argmax(np.abs(vt[k]))] >= 0 else -1.0
        out[:, k] = sign * u[:, k] * s[k]
    return out


# ---------------------------------------------------------------------------------------------- numbers

def jsonable(value: Any) -> Any:
    """JSON-safe copy: numpy scalars / arrays to Python, non-finite floats to None, unknown objects to str."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def score_histogram(scores: np.ndarray, top_n: int) -> dict:
    """Bins over every readable score, and how many of each bin's images are in the top N; `cut_score` is the
    lowest score in the top N (the score of rank N when the scores are the written, non-increasing ones)."""
    if len(scores) == 0:
        return {"bin_edges": [], "counts": [], "top_counts": [], "top_n": top_n, "cut_score": None}
    bins = int(np.clip(np.ceil(np.sqrt(len(scores))), 10, 60))
    counts, edges = np.histogram(scores, bins=bins)
    top_n = min(top_n, len(scores))
    top_counts, _ = np.histogram(scores[:top_n], bins=edges)
    return {"bin_edges": edges.tolist(), "counts": counts.tolist(), "top_counts": top_counts.tolist(),
            "top_n": top_n, "cut_score": float(scores[:top_n].min()) if top_n else None}


def class_summary(class_names: Sequence[str], classes: np.ndarray) -> dict[str, int]:
    names, counts = np.unique(classes, return_counts=True)
    pairs = sorted(((class_name_of(class_names, c), int(n)) for c, n in zip(names, counts)), key=lambda p: (-p[1], p[0]))
    return dict(pairs)


def class_name_of(class_names: Sequence[str], index: int) -> str:
    index = int(index)
    return str(class_names[index]) if 0 <= index < len(class_names) else f"class {index}"


def _item_record(item: ReportImage, class_names: Sequence[str]) -> dict:
    return {"path": item.path, "rank": int(item.rank), "score": float(item.score),
            "raw_score": None if item.raw_score is None else float(item.raw_score),
            "box_count": int(len(item.xyxy)), "classes": class_summary(class_names, item.classes)}


def report_json(data: ReportData) -> dict:
    """The numbers of the page (no images): what mining-report.json holds."""
    scores = data.scores
    summary = {"count": int(len(scores))}
    if len(scores):
        summary.update(min=float(scores.min()), max=float(scores.max()), mean=float(scores.mean()),
                       median=float(np.median(scores)))
    payload = {
        "run": jsonable(data.run),
        "unreadable": [{"path": str(p), "reason": str(r)} for p, r in data.unreadable],
        "scores": summary,
        "score_kind": data.score_kind,
        "selected": data.selected,
        "histogram": score_histogram(scores, data.cut),
        "top": [_item_record(item, data.class_names) for item in data.top],
        "middle": [_item_record(item, data.class_names) for item in data.middle],
        "bottom": [_item_record(item, data.class_names) for item in data.bottom],
        "class_counts": {"class_names": [str(n) for n in data.class_names],
                         "top": data.class_counts_top.tolist(), "pool": data.class_counts_pool.tolist()},
        "duplicate_groups": [{"kept": str(kept), "copies": [str(c) for c in copies],
                              **({"kept_rank": data.duplicate_ranks.get(kept),
                                  "copy_ranks": [data.duplicate_ranks.get(c) for c in copies]}
                                 if data.duplicate_ranks else {})}
                             for kept, copies in data.duplicate_groups],
        "near_duplicates": data.near_duplicates,
        "projection": None if data.projection is None else {
            "points": data.projection.tolist(), "selected": data.projection_selected.tolist()},
    }
    return jsonable(payload)


# ---------------------------------------------------------------------------------------------- from a run

class Shown(NamedTuple):
    """An image the report shows, as the pipeline found it: its key and predicted boxes (original pixels)."""
    key: str
    xyxy: np.ndarray
    classes: np.ndarray
    conf: np.ndarray


class ReportCollector:
    """Watches the ranking's entries as result.tsv is written (executor.pipeline.ranking.Entry: the key, the
    written and the raw score, where it came from) and keeps what the report needs, in memory flat in the pool
    size apart from 8 bytes per image (its score) plus 8 (where it came from) and the unreadable list: the top N
    entries; afterwards it names the images shown (the top N, the middle and bottom samples: `shown`) and the
    selection (`selected`, start.py mine --topk; None: the top N), whose boxes and class counts the pipeline then
    hands to `report_data`. A failure in here is kept (self.error), never raised into the writing of result.tsv."""
    MIDDLE = 6
    BOTTOM = 6

    def __init__(self, top_n: int, raw: bool, track=(), selected: int | None = None):
        import array

        self.top_n, self.raw, self.selected = int(top_n), raw, selected
        self.track, self.ranks = set(track), {}  # paths whose rank the report names (duplicate groups)
        self.scores = array.array("d")   # written (or, with raw, the raw) score per readable line, in order
        self.where = array.array("q")    # shard << 32 | line
        self.top: list = []
        self.unreadable: list[tuple[str, str]] = []
        self.error: Exception | None = None

    def watch(self, entries):
        for found in entries:
            if self.error is None:
                try:
                    self._add(found)
                except Exception as exc:  # noqa: BLE001 — the report must never break result.tsv
                    self.error = exc
            yield found

    def _add(self, found) -> None:
        if found.reason:
            self.unreadable.append((found.key, found.reason))
            return
        if len(self.scores) < self.top_n:
            self.top.append(found)
        if found.key in self.track:
            self.ranks[found.key] = len(self.scores) + 1
        self.scores.append(found.raw if self.raw else found.score)
        self.where.append(found.shard << 32 | found.line)

    def _checked(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"collecting the report failed: {type(self.error).__name__}: {self.error}")

    def _samples(self) -> tuple[list[int], list[int]]:
        n, top = len(self.scores), min(self.top_n, len(self.scores))
        rest = n - top
        bottom = list(range(max(top, n - self.BOTTOM), n))
        middle_count = min(self.MIDDLE, max(0, rest - len(bottom)))
        start = top + (rest - len(bottom) - middle_count) // 2
        return list(range(start, start + middle_count)), bottom

    def shown(self) -> list[tuple[int, int]]:
        """(shard, line) of every image the report shows: the top N, then the middle and bottom samples."""
        self._checked()
        middle, bottom = self._samples()
        return [(found.shard, found.line) for found in self.top] + [divmod(self.where[r], 1 << 32)
                                                                   for r in middle + bottom]

    def selection(self) -> np.ndarray:
        """shard << 32 | line of every selected image (the cut)."""
        cut = self.top_n if self.selected is None else self.selected
        return np.frombuffer(self.where, dtype=np.int64)[:cut] if len(self.where) else np.zeros(0, np.int64)

    def report_data(self, run: dict, shown: Mapping[tuple[int, int], Shown], class_names: Sequence[str],
                    class_counts_top: np.ndarray, class_counts_pool: np.ndarray, **extra) -> ReportData:
        """The ReportData of the watched entries; `shown`: each image of `shown()`, with the model's `class_names`
        and the predicted boxes per class over the selection and over the pool (all empty without a model)."""
        self._checked()
        middle, bottom = self._samples()

        def item(at: tuple[int, int], rank: int, score: float, raw: float | None) -> ReportImage:
            image = shown[at]
            return ReportImage(image.key, rank, score, raw, image.xyxy, image.classes, image.conf)

        scores = np.frombuffer(self.scores, dtype=np.float64) if len(self.scores) else np.zeros(0)
        top = [item((found.shard, found.line), n + 1, found.score, found.raw if self.raw else None)
               for n, found in enumerate(self.top)]

        def sample(rank: int) -> ReportImage:
            # the written score of a sample: the raw score when not reordered; else the priority, (N - r) / N
            written = float(scores[rank]) if not self.raw else (len(scores) - rank) / len(scores)
            return item(divmod(self.where[rank], 1 << 32), rank + 1, written,
                        float(scores[rank]) if self.raw else None)

        return ReportData(run=run, unreadable=list(self.unreadable), scores=scores.copy(),
                          class_names=list(class_names), class_counts_top=class_counts_top,
                          class_counts_pool=class_counts_pool, top=top, middle=[sample(r) for r in middle],
                          bottom=[sample(r) for r in bottom], score_kind="raw" if self.raw else "written",
                          duplicate_ranks=dict(self.ranks), selected=self.selected, **extra)


def class_counts(classes: np.ndarray, count: int) -> np.ndarray:
    """Boxes per class index 0..count-1 (indices outside are not counted)."""
    classes = np.asarray(classes, dtype=np.int64)
    return np.bincount(classes[(classes >= 0) & (classes < count)], minlength=count)
