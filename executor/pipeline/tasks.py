"""The tasks behind one registry: platform mode, the local CLI, the API and the simulator all call `run` with a plan
(executor/pipeline/plan.py), made at their edge.

Mining is score → gather → select → write → report: workers score shards of the candidate list
(executor/pipeline/scoring.py, shards.py, workers.py), each shard written when done, with a side file of what
selection and the report need (embeddings, predicted boxes) taken from the same forward; the gather is a streamed
merge of the shards, checked; `selection: diverse` reorders it (mining/selection.py, on the shortlist's
embeddings only); the result is written once, atomically; then the report (executor/report/), whose failure
never fails the task. Inference is the same with the detector's boxes as records.

Each task returns its result as values: mining a Ranking (pipeline/ranking.py), infer an InferResult; a job that
names no result file gets every entry back instead of a file, so in-process callers (the CLI's exports, the API,
the simulator) never read back what the run wrote.
"""

import datetime
import logging
import time
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

from executor.pipeline.job import Job, result_names
from executor.pipeline.passes import Models
from executor.pipeline.plan import Plan
from executor.pipeline.ranking import MiningContext, Ranking, write_mining  # gather → select → write → report
from executor.pipeline.scoring import interrupted, score_shards, shards_folder
from executor.pipeline.shards import Detected, ShardStore, named_records
from executor.pipeline.workers import clear
from executor.protocol.monitor import Progress, span
from executor.protocol.writers import write_infer_result, write_instances_result
from executor.shared import SEGMENTATION

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the tasks

@dataclass
class InferResult:
    """What infer returns: the infer-result.json written ('' when the job names none) and, when none is, every
    image in index order under its result name, with its decoded size (what the labelling-tool exports need)."""
    path: str
    images: list[Detected]

    def __iter__(self) -> Iterator[Detected]:
        return iter(self.images)


def write_infer(job: Job, store: ShardStore, count: int, context) -> InferResult:
    """infer-result.json: ymir's detection form, or for a segmentation model the COCO result (ymir-protocol §5.4)
    whose categories are the model's classes (the model is already loaded unless other processes scored); or,
    for a job that names no file, the detections as values."""
    names = result_names(job)
    if not job.infer_result:
        return InferResult("", list(named_records(store, count, names)))
    if context.plan.settings["infer"].object_type == SEGMENTATION:
        write_instances_result(job.infer_result, lambda: platform_records(store, count, names),
                               model_class_names(context.plan, context.models))
    else:
        write_infer_result(job.infer_result, platform_records(store, count, names), job.infer_list_key)
    return InferResult(job.infer_result, [])


def platform_records(store: ShardStore, count: int, names: Mapping[str, str]) -> Iterator[tuple[str, list | dict]]:
    """(result name, record) of every image in index order, as infer-result.json has them: an unreadable image
    with no boxes."""
    for found in named_records(store, count, names):
        yield found.key, [] if found.record is None else found.record


def model_class_names(plan: Plan, models: Models) -> list[str]:
    """The infer model's class names in model order (config class_names when given), from the model loaded for
    the run (loaded here when other processes scored)."""
    return list(models.detector(plan.settings["infer"], plan.weights["infer"]).names)


def scan(plan: Plan, progress: Progress, models: Models) -> dict:
    """One pass over the candidates for the plan's tasks (mining and/or infer): shards, then each result written."""
    job, tasks = plan.job, plan.tasks
    if "infer" in tasks:
        result_names(job)  # a name clash fails before any image is read
    start = time.monotonic()
    started_at = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    try:
        merged = score_shards(plan, progress, models)
    except BaseException:
        clear(shards_folder(job))  # finished shards stay for a rerun; a folder left empty goes
        raise
    if merged is None:
        return {task: None for task in tasks}
    stores, shards, scored = merged
    count = len(shards)
    context = MiningContext(plan, models, start, started_at)
    writers = {"mining": write_mining, "infer": write_infer}
    try:
        written = {task: writers[task](job, stores[task], count, context) for task in tasks}
    except KeyboardInterrupt:
        raise interrupted(stores, shards) from None
    if not job.keep_shards:
        for store in stores.values():
            store.remove(count)
    clear(shards_folder(job))
    log.info("%s", throughput(tasks, len(job.candidates), scored, time.monotonic() - start))
    return written


def throughput(tasks: Sequence[str], total: int, scored: int, seconds: float) -> str:
    """The line that ends a run: its rate counts the images this run scored, not shards reused from an earlier
    run."""
    reused = total - scored
    return (f"{' + '.join(tasks)} of {total} images in {seconds:.1f} s ({scored / max(seconds, 1e-9):.1f} images/s"
            + (f": {scored} scored in this run, {reused} reused from an earlier run's shards)" if reused else ")"))


def mine(plan: Plan, progress: Progress, models: Models) -> Ranking | None:
    """Score every candidate and rank them, best first: result.tsv written when the job names it; returns the
    Ranking (None on a non-merging rank)."""
    return scan(plan.only("mining"), progress, models)["mining"]


def infer(plan: Plan, progress: Progress, models: Models) -> InferResult | None:
    """Boxes of every candidate in index order (unreadable: none), written to infer-result.json when the job names
    it; returns the InferResult (None on a non-merging rank)."""
    return scan(plan.only("infer"), progress, models)["infer"]


def train(plan: Plan, progress: Progress, models: Models):
    """Train, write the model stages and result.yaml; returns the best stage's metrics on the val split
    (executor.engine.evaluation.Metrics)."""
    from executor.pipeline.training import run_training  # imports Ultralytics' trainer: only when training

    return run_training(plan.job, plan.settings["training"], progress)


TASKS = {"training": train, "mining": mine, "infer": infer}


def run(plan: Plan, progress: Progress = lambda fraction: None, models: Models | None = None) -> dict:
    """Run the plan's tasks in order; each gets an equal share of the progress range, but mining and infer share
    one pass over the images whenever they can. Returns each task's result by name. `models`: where the run keeps
    the models it loads (a caller's, to ask them afterwards; a fake's in tests)."""
    models = models if models is not None else Models()
    tasks = plan.tasks
    if list(tasks) == ["mining", "infer"] and plan.one_pass:
        results = scan(plan, progress, models)
    else:
        results = {}
        for number, name in enumerate(tasks):
            lo, hi = number / len(tasks), (number + 1) / len(tasks)
            results[name] = TASKS[name](plan, span(progress, lo, hi), models)
    progress(1.0)
    return results
