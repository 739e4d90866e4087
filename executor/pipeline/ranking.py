"""Mining's gather → select → write step: the merged shards become the Ranking, written to result.tsv.

`selection: score` streams the merge as it is; `selection: diverse` applies the plan of executor/pipeline/diversity.py
to it and gives its priority as the score, with every image's raw score in a side file. The ranking's entries
stream once: into result.tsv (the platform, the CLI), into what the caller keeps (every entry for a job with no
result file: the API, the simulator) and into the report's collector (executor/pipeline/reporting.py).
"""
import collections
import contextlib
import functools
import logging
import operator
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, NamedTuple

from executor.pipeline.diversity import Diverse, plan_diverse
from executor.pipeline.job import Job, mining_scores_path
from executor.pipeline.passes import Models
from executor.pipeline.plan import Plan
from executor.pipeline.reporting import remove_stale_report, report_collector, write_mining_report
from executor.pipeline.shards import Row, ShardStore, some_readable
from executor.protocol.writers import UNREADABLE_SCORE, atomic_writer, format_score, write_ranked

log = logging.getLogger(__name__)


class Entry(NamedTuple):
    """One line of the ranking: the image, the score result.tsv gives it (the selection priority under selection
    diverse; -1 when unreadable), the algorithm's own score, why it is unreadable ('' when read), and where it
    came from (shard, line number) for selection and the report."""
    key: str
    score: float
    raw: float
    reason: str
    shard: int
    line: int


def entry(row: Row, score: float) -> Entry:
    return Entry(row.key, score, row.score, row.reason, row.shard, row.line)


_new_entry = functools.partial(tuple.__new__, Entry)  # Entry._make without its Python-level length check


@dataclass
class Ranking:
    """What mining returns: the result.tsv written ('' when the job names none) and the entries kept in memory,
    best first: all of them when no file is written (in-process callers: the API, the simulator) or the job says
    keep_ranking, else the first Job.selected (the CLI's --topk; the platform keeps none: its pool may be millions
    of images)."""
    path: str
    entries: list[Entry]

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)


def ranking_entries(store: ShardStore, count: int, diverse: Diverse | None, total: int) -> Iterator[Entry]:
    """The ranking streamed best first: the merge itself (selection score), or the diverse plan applied to it;
    all of the `total` images unreadable is NoReadableImages at the end of the stream (some_readable)."""
    return some_readable(ordered_entries(store, count, diverse), total, operator.attrgetter("reason"))


def ordered_entries(store: ShardStore, count: int, diverse: Diverse | None) -> Iterator[Entry]:
    if diverse is None:  # each row as it is, its score written: made by the block, not one call per row
        for found in store.merged_columns(count):
            yield from map(_new_entry, zip(found.key, found.score, found.score, found.reason, found.shard, found.line))
        return
    rank = 0
    for row in diverse.head:
        yield entry(row, diverse.priority(rank))
        rank += 1

    def rest(duplicates: bool) -> Iterator[Row]:
        for row in store.merged_rows(count):
            if row.reason:
                if not duplicates:
                    return
                yield row
            elif (row.shard, row.line) not in diverse.in_head and \
                    bool(diverse.duplicate_lines[row.shard][row.line]) == duplicates:
                yield row

    for row in rest(False):
        yield entry(row, diverse.priority(rank))
        rank += 1
    for row in diverse.head_duplicates:
        yield entry(row, diverse.priority(rank))
        rank += 1
    for row in rest(True):
        if row.reason:
            yield entry(row, UNREADABLE_SCORE)
        else:
            yield entry(row, diverse.priority(rank))
            rank += 1


def serialised(entries: Iterable[Entry], kept: list[Entry], keep: int, raw_scores=None
               ) -> Iterator[tuple[str, float]]:
    """(key, written score) of `entries`, the first `keep` of them also put in `kept` and each raw score written
    to `raw_scores` (selection diverse's file beside result.tsv)."""
    for found in entries:
        if len(kept) < keep:
            kept.append(found)
        if raw_scores is not None:
            raw_scores.write(f"{found.key}\t{format_score(found.raw)}\n")
        yield found.key, found.score


@dataclass
class MiningContext:
    """What the write step of mining needs besides the shards: the settings, the loaded models, when it began."""
    plan: Plan
    models: Models
    started: float      # time.monotonic() when the task began
    started_at: str     # the same moment, UTC, ISO 8601


def write_mining(job: Job, store: ShardStore, count: int, context: MiningContext) -> Ranking:
    """The merged shards, in the selection's order, to result.tsv (streamed, atomic) when the job names it, to the
    raw scores file under selection diverse, and to the report; returns the Ranking."""
    settings, weights = context.plan.settings["mining"], context.plan.weights["mining"]
    diverse = plan_diverse(job, store, count, settings, weights, context.models) \
        if settings.selection == "diverse" else None
    entries: Iterable[Entry] = ranking_entries(store, count, diverse, len(job.candidates))
    collector = report_collector(job, settings, diverse)
    if collector is not None:
        entries = collector.watch(entries)
    kept: list[Entry] = []
    raw_path = mining_scores_path(job) if diverse is not None else ""
    with contextlib.ExitStack() as files:
        raw_scores = files.enter_context(atomic_writer(raw_path)) if raw_path else None
        keep = job.selected if job.mining_result and not job.keep_ranking else len(job.candidates)
        lines = serialised(entries, kept, keep, raw_scores)
        if job.mining_result:
            write_ranked(job.mining_result, lines)
        else:
            collections.deque(lines, maxlen=0)  # the values only
    if raw_path:
        log.info("wrote the raw %s scores, in result.tsv's order, to %s", settings.mining_algorithm, raw_path)
    seconds = time.monotonic() - context.started
    if collector is not None:
        write_mining_report(context.plan, store, count, collector, diverse, seconds, context.started_at)
    else:
        remove_stale_report(job)
    return Ranking(job.mining_result, kept)
