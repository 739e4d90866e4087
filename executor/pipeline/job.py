"""One job: its index, folders and result files, as plain arguments (platform mode and the local CLI alike),
and the files written beside the result.
"""

import os
from dataclasses import dataclass
from typing import Sequence

from executor.errors import DatasetError


@dataclass(frozen=True)
class Job:
    """What a run reads and writes besides its config: plain paths (start.py builds it from env.yaml or flags)."""
    candidates: Sequence[str] = ()          # image paths to mine or infer, in index order
    models_dir: str = ""                    # model_params_path / pretrained_model_params are relative to it
    mining_result: str = ""                 # result.tsv ('': none, the ranking is returned as values)
    infer_result: str = ""                  # infer-result.json ('': none, the detections are returned as values)
    infer_list_key: str | tuple = "boxes"   # the per-image list name(s) of infer-result.json
    training_index: str = ""
    val_index: str = ""
    models_out: str = ""                    # model stages, attachments
    training_result: str = ""               # result.yaml
    tensorboard_dir: str = ""
    label_audit: str = ""                   # training: the label audit's json (and .csv beside it); '' none
    work_dir: str = ""                      # the YOLO dataset, Ultralytics' run dir, the stage book
    weights_dirs: Sequence[str] = ()        # bundled pretrained weights (<model>.pt)
    multi_stage_result: bool = True         # protocol >= 1.0.0 result.yaml
    names: Sequence[str] = ()               # result key per candidate: infer-result.json's (default: unique
    #                                         basenames) and the key of random's and CALD's per-image seed (default:
    #                                         the candidate path)
    shards_dir: str = ""                    # finished shards, shared by every worker (default: work_dir/shards)
    mining_scores: str = ""                 # selection diverse: path<TAB>raw score (default: beside mining_result)
    report_html: str = ""                   # the mining report (default: mining-report.html beside mining_result;
    #                                         its numbers go to the same name with .json)
    labeled: Sequence[str] = ()             # selection diverse: already-labelled images (their near-copies go down)
    selected: int = 0                       # start.py mine --topk: how many the user selects (the report's cut, its
    #                                         thumbnails, at most report_top_n, and the entries the ranking returns);
    #                                         0: not told (the platform's top_k)
    keep_ranking: bool = False              # the ranking returns every entry even with result.tsv written (the
    #                                         CLI's Label Studio tasks carry each image's rank and score)
    keep_shards: bool = False               # leave the finished shards after the merge, so a rerun with other
    #                                         selection or report settings re-selects without scoring again
    outer: tuple[int, int, int] | None = None  # (RANK, WORLD_SIZE, LOCAL_RANK) of an outer torchrun with several
    #                                         ranks (the entry points read it: executor.runtime.outer_ranks)


def training_job(folder: str, training_index: str, val_index: str) -> Job:
    """A training outside the platform in `folder` (the simulator's rounds, the audit's folds): the model stages
    and result.yaml in models/, tensorboard/, the YOLO dataset and Ultralytics' run in work/."""
    models = os.path.join(folder, "models")
    return Job(training_index=training_index, val_index=val_index, models_out=models,
               training_result=os.path.join(models, "result.yaml"), tensorboard_dir=os.path.join(folder, "tensorboard"),
               work_dir=os.path.join(folder, "work"))


MINING_SCORES_NAME = "mining-scores.tsv"
REPORT_NAME = "mining-report.html"


def beside_result(job: Job, name: str) -> str:
    """`name` beside result.tsv; '' for a job that writes none (its caller takes the ranking as values)."""
    return os.path.join(os.path.dirname(os.path.abspath(job.mining_result)), name) if job.mining_result else ""


def mining_scores_path(job: Job) -> str:
    return job.mining_scores or beside_result(job, MINING_SCORES_NAME)


def report_paths(job: Job) -> tuple[str, str]:
    html_path = job.report_html or beside_result(job, REPORT_NAME)
    return html_path, os.path.splitext(html_path)[0] + ".json" if html_path else ""


def result_names(job: Job) -> dict[str, str]:
    """The infer-result key of every candidate: job.names when given, else its basename, which must be unique."""
    names = dict(zip(job.candidates, job.names)) if job.names else {k: os.path.basename(k) for k in job.candidates}
    seen: dict[str, str] = {}
    for key, name in names.items():
        if name in seen:
            raise DatasetError(f"candidates {seen[name]} and {key} share the name {name!r} that infer-result.json "
                               "keys images by; rename one of them")
        seen[name] = key
    return names
