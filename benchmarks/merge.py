"""Gather and merge of mining shards at internet scale, on synthetic pools (scores only, realistic paths).

    python -m benchmarks.merge [--sizes 100000,1000000,10000000] [--shard-size 2048]

For each pool size: shard files are written as workers write them (not timed), then one child process runs
the gather → merge → write of executor.pipeline (streamed k-way merge into result.tsv) and reports its wall time
and peak RSS. Prints one JSON line per size.
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


def synthetic_keys(count: int) -> list[str]:
    rng = random.Random(0)
    return [f"/in/assets/{h[-2:]}/{h}.jpg" for h in (f"{rng.getrandbits(160):040x}" for _ in range(count))]


def list_mb(count: int) -> float:
    """What the candidate list itself costs a run in memory at this pool size (measured on 10,000 paths)."""
    import tracemalloc

    tracemalloc.start()
    keys = synthetic_keys(10000)
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del keys
    return size / 10000 * count / 2**20


def write_shards(folder: str, count: int, shard_size: int):
    from executor.pipeline.shards import ShardStore, plan

    keys = synthetic_keys(count)
    rng = random.Random(1)
    store = ShardStore(folder, "mining", {"benchmark": count})
    shards = plan(keys, shard_size)
    for shard in shards:
        store.write_scores(shard, {key: rng.random() * 10 for key in shard.keys}, {})
    return keys


def merge_child(folder: str, count: int, shard_size: int, out: str) -> None:
    """The timed part, in its own process so its peak RSS is its own."""
    from executor.pipeline.ranking import ranking_entries
    from executor.pipeline.shards import ShardStore
    from executor.protocol.writers import write_ranked

    start = time.perf_counter()
    store = ShardStore(folder, "mining", {"benchmark": count})
    entries = ranking_entries(store, -(-count // shard_size), None, count)
    write_ranked(out, ((found.key, found.score) for found in entries))
    merge_seconds = time.perf_counter() - start
    peak_mb = peak_rss_mb()
    print(json.dumps({"merge_s": round(merge_seconds, 2), "peak_rss_mb": round(peak_mb, 1)}))


def peak_rss_mb() -> float:
    """VmHWM of this process (ru_maxrss of an exec'd child may report its parent's peak at fork time)."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(count: int, shard_size: int) -> dict:
    folder = tempfile.mkdtemp(prefix="quarry-merge-")
    try:
        started = time.perf_counter()
        write_shards(os.path.join(folder, "shards"), count, shard_size)
        written = time.perf_counter() - started
        out = os.path.join(folder, "result.tsv")
        child = subprocess.run([sys.executable, "-m", "benchmarks.merge", "--child", os.path.join(folder, "shards"),
                                str(count), str(shard_size), out], capture_output=True, text=True, check=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        with open(out, encoding="utf-8") as handle:
            lines = sum(1 for _ in handle)
        if lines != count:
            raise RuntimeError(f"result.tsv has {lines} lines for {count} images")
        return {"pool": count, "shards": -(-count // shard_size), "shard_write_s": round(written, 1), **result,
                "candidate_list_mb": round(list_mb(count), 1),
                "us_per_image": round(result["merge_s"] / count * 1e6, 2)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000,10000000")
    parser.add_argument("--shard-size", type=int, default=2048)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        folder, count, shard_size, out = args.child
        merge_child(folder, int(count), int(shard_size), out)
        return 0
    for size in (int(s) for s in args.sizes.split(",")):
        print(json.dumps(measure(size, args.shard_size)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
