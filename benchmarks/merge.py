"""Gather and merge of mining shards at internet scale, on synthetic pools (scores only, realistic paths).

    python -m benchmarks.merge [--sizes 100000,1000000,10000000] [--shard-size 2048]

For each pool size: a candidate index file and the shard files are written as the platform and the workers write
them (not timed). Then two child processes, each with its own peak RSS (VmHWM):
- merge: the gather → merge → write of executor.pipeline (the streamed merge into result.tsv) alone;
- run: what the parent of a mining run does besides scoring: read the candidate index (Job.candidates), plan the
  shards, check that every shard is complete (the fingerprint of its keys), then the same merge and write.
Prints one JSON line per size: the merge's time and µs per image, each child's peak RSS and its RSS after its
imports (torch, which the pipeline's modules import, is most of it), and what the candidate list would cost as a
list of Python strings.
"""
import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time


def synthetic_keys(count: int):
    rng = random.Random(0)
    return (f"/in/assets/{h[-2:]}/{h}.jpg" for h in (f"{rng.getrandbits(160):040x}" for _ in range(count)))


def list_mb(count: int) -> float:
    """What the candidate list costs as a list of Python strings at this pool size (measured on 10,000 paths)."""
    import tracemalloc

    tracemalloc.start()
    keys = list(synthetic_keys(10000))
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del keys
    return size / 10000 * count / 2**20


def write_pool(folder: str, count: int, shard_size: int) -> str:
    """The candidate index and every shard of a pool of `count` images; returns the index's path."""
    from executor.pipeline.shards import ShardStore, plan
    from executor.protocol.index import read_candidate_index

    index = os.path.join(folder, "candidate-index.tsv")
    with open(index, "w", encoding="utf-8") as handle:
        handle.writelines(f"{key}\n" for key in synthetic_keys(count))
    rng = random.Random(1)
    store = ShardStore(os.path.join(folder, "shards"), "mining", {"benchmark": count})
    for shard in plan(read_candidate_index(index), shard_size):
        store.write_scores(shard, {key: rng.random() * 10 for key in shard.keys}, {})
    return index


def merge_child(folder: str, count: int, shard_size: int, out: str) -> dict:
    """The timed merge alone."""
    from executor.pipeline.ranking import ranking_entries
    from executor.pipeline.shards import ShardStore
    from executor.protocol.writers import write_ranked

    start = time.perf_counter()
    store = ShardStore(os.path.join(folder, "shards"), "mining", {"benchmark": count})
    entries = ranking_entries(store, -(-count // shard_size), None, count)
    write_ranked(out, ((found.key, found.score) for found in entries))
    return {"merge_s": round(time.perf_counter() - start, 2)}


def run_child(folder: str, count: int, shard_size: int, out: str) -> dict:
    """The parent's side of a run: the index, the shard plan and its check, then the merge."""
    from executor.pipeline.job import Job
    from executor.pipeline.scoring import job_shards
    from executor.pipeline.shards import ShardStore
    from executor.protocol.index import read_candidate_index

    start = time.perf_counter()
    job = Job(candidates=read_candidate_index(os.path.join(folder, "candidate-index.tsv")))
    indexed = time.perf_counter()
    shards = job_shards(job, shard_size)
    store = ShardStore(os.path.join(folder, "shards"), "mining", {"benchmark": count})
    if not all(store.complete(shard) for shard in shards):
        raise RuntimeError("a shard of the benchmark's pool is not complete")
    checked = time.perf_counter()
    merged = merge_child(folder, count, shard_size, out)
    return {"index_s": round(indexed - start, 2), "check_s": round(checked - indexed, 2), **merged}


def rss_mb(field: str) -> float:
    """VmHWM (peak) or VmRSS of this process (ru_maxrss of an exec'd child may report its parent's peak at fork
    time)."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(which: str, folder: str, count: int, shard_size: int, out: str) -> dict:
    import executor.pipeline.ranking  # noqa: F401 — the imports of a run, before the RSS they start from
    import executor.pipeline.scoring  # noqa: F401

    started_mb = rss_mb("VmRSS")
    found = {"merge": merge_child, "run": run_child}[which](folder, count, shard_size, out)
    return {**found, "peak_rss_mb": round(rss_mb("VmHWM"), 1), "rss_after_imports_mb": round(started_mb, 1)}


def in_child(which: str, folder: str, count: int, shard_size: int) -> dict:
    out = os.path.join(folder, "result.tsv")
    done = subprocess.run([sys.executable, "-m", "benchmarks.merge", "--child", which, folder, str(count),
                           str(shard_size), out], capture_output=True, text=True, check=True)
    with open(out, encoding="utf-8") as handle:
        lines = sum(1 for _ in handle)
    if lines != count:
        raise RuntimeError(f"result.tsv has {lines} lines for {count} images")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(count: int, shard_size: int) -> dict:
    folder = tempfile.mkdtemp(prefix="quarry-merge-")
    try:
        started = time.perf_counter()
        write_pool(folder, count, shard_size)
        written = time.perf_counter() - started
        merge, run = in_child("merge", folder, count, shard_size), in_child("run", folder, count, shard_size)
        return {"pool": count, "shards": -(-count // shard_size), "pool_write_s": round(written, 1),
                "merge_s": merge["merge_s"], "us_per_image": round(merge["merge_s"] / count * 1e6, 2),
                "merge_peak_rss_mb": merge["peak_rss_mb"], "run_peak_rss_mb": run["peak_rss_mb"],
                "rss_after_imports_mb": run["rss_after_imports_mb"], "run_index_s": run["index_s"],
                "run_check_s": run["check_s"], "run_merge_s": run["merge_s"],
                "candidate_list_as_strings_mb": round(list_mb(count), 1)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000,10000000")
    parser.add_argument("--shard-size", type=int, default=2048)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        which, folder, count, shard_size, out = args.child
        print(json.dumps(child(which, folder, int(count), int(shard_size), out)))
        return 0
    for size in (int(s) for s in args.sizes.split(",")):
        print(json.dumps(measure(size, args.shard_size)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
