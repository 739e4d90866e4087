"""Selection benchmark: does `selection: diverse` remove redundancy without losing what the score finds?

    python -m benchmarks.selection [--quick] [--highway 300] [--json benchmarks/results/selection.json]

On CPU with the real yolov8n, through the executor's own pass (executor.tasks.Pass: one forward per image, the
embedding taken from it by the detector's tap), then the selection step of a mining run:

1. planted duplicates: coco-val plus, for every fourth image, three near-copies made with OpenCV (re-encoded at
   JPEG quality 40 and resized to 80%; cropped to the central 90%; brightness +25 and re-encoded), i.e. 52
   groups of four; how many group members beyond the first the top 20% holds (score vs diverse), and the
   similarity of each copy kind to its original against the nearest distinct image (what dedup_similarity
   must separate);
2. redundancy: mean over the top 20% of each image's highest cosine similarity to another top-20% image,
   score vs diverse, on coco-val, voc2007 and a sample of ../shared/data/highway;
3. quality: error capture Q1 (20% of images) and Q2 (20% of objects) of benchmarks/quality.py for entropy and
   cald, score vs diverse, on coco-val and voc2007;
4. cost: the selection step of executor.tasks (plan + streamed write) on a 10,000-image pool of shard files
   with cached embeddings, against the mining time of such a pool; the embedding's share of mining time
   (pooling time measured inside the forward, and an A/B of the pass with and without embeddings); the
   report's cost on a 1,000-image pool.

Prints one table; --json writes every number.
"""
import argparse
import json
import logging
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from executor.runtime import prepare_process_env  # noqa: E402

log = logging.getLogger("benchmarks.selection")
SHARED = os.path.join(os.path.dirname(REPO), "shared")
BUDGET = 0.2
COPY_KINDS = ("jpeg40+resize80", "crop90", "brightness+25")


# ---------------------------------------------------------------- pools

def planted_pool(images: list[str], folder: str, every: int = 4) -> tuple[list[str], np.ndarray, list[str]]:
    """`images` plus three near-copies of every `every`-th one, written to `folder`. Returns (paths, group id per
    path: -1 for images without copies, kind per path: '' for originals)."""
    import cv2

    paths, groups, kinds = list(images), [-1] * len(images), [""] * len(images)
    for n, path in enumerate(images):
        if n % every:
            continue
        groups[n] = n
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        h, w = image.shape[:2]
        stem = os.path.splitext(os.path.basename(path))[0]
        small = cv2.resize(image, (int(w * 0.8), int(h * 0.8)), interpolation=cv2.INTER_AREA)
        crop = image[int(h * 0.05):int(h * 0.95), int(w * 0.05):int(w * 0.95)]
        bright = np.clip(image.astype(np.int16) + 25, 0, 255).astype(np.uint8)
        for kind, copy, quality in zip(COPY_KINDS, (small, crop, bright), (40, 95, 90)):
            target = os.path.join(folder, f"{stem}-{kind}.jpg")
            cv2.imwrite(target, copy, [cv2.IMWRITE_JPEG_QUALITY, quality])
            paths.append(target)
            groups.append(n)
            kinds.append(kind)
    return paths, np.array(groups), kinds


def highway_sample(count: int, seed: int = 0) -> list[str]:
    root = os.path.join(SHARED, "data", "highway")
    found = sorted(os.path.join(d, name) for d, _, names in os.walk(root) for name in names
                   if name.lower().endswith((".jpg", ".jpeg", ".png")))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(found, size=min(count, len(found)), replace=False).tolist())


# ---------------------------------------------------------------- one pass: scores, embeddings, boxes

def mine_pass(paths: list[str], algorithm: str, weights: str, embeddings: bool = True, img_size: int = 640) -> dict:
    """Scores, embeddings and boxes (mining's conf_thres) of `paths` through executor.tasks.Pass, timed."""
    from executor.config import build_settings
    from executor.tasks import Models, Pass, open_scorer
    from mining import SCORERS

    settings = build_settings("mining", {"mining_algorithm": algorithm, "model_params_path": [weights],
                                         "img_size": img_size, "selection": "diverse" if embeddings else "score"})
    detector = Models().detector(settings, "")
    if embeddings:
        detector.enable_embeddings()
    work = Pass({"mining": settings}, scorer=open_scorer(settings),
                mining_detector=detector if SCORERS[algorithm].needs_model else None,
                side={"embeddings": embeddings, "boxes": True}, tap_detector=detector)
    unreadable: dict = {}
    pooled = detector.tap.seconds
    started = time.perf_counter()
    found = work.run(paths, lambda done: None, unreadable)
    seconds = time.perf_counter() - started
    if unreadable:
        raise RuntimeError(f"unreadable benchmark images: {list(unreadable)[:3]}")
    side = found["side"]
    return {"scores": np.array([found["mining"][p] for p in paths]),
            "embeddings": (np.stack([side[p][0] for p in paths]).astype(np.float32) if embeddings else None),
            "detections": [side[p][1] for p in paths], "seconds": seconds,
            "pool_seconds": detector.tap.seconds - pooled, "extra_forward_seconds": work.forward_seconds,
            "images": len(paths)}


def cached_pass(cache: dict, name: str, paths, algorithm, weights) -> dict:
    key = (name, algorithm)
    if key not in cache:
        log.info("%s / %s: %d images", name, algorithm, len(paths))
        cache[key] = mine_pass(paths, algorithm, weights)
        log.info("  %.1f s (%.2f images/s), pooling %.3f s", cache[key]["seconds"],
                 len(paths) / cache[key]["seconds"], cache[key]["pool_seconds"])
    return cache[key]


# ---------------------------------------------------------------- orders and metrics

def orders(scores: np.ndarray, embeddings: np.ndarray, **params) -> dict[str, np.ndarray]:
    """{"score": score order, "diverse": the order of mining.selection.rank_diverse with `params` and the executor's
    score scale} (the executor's own step for pools up to its shortlist: here every image is in it)."""
    from executor.tasks import SCORE_SCALE
    from mining.selection import rank_diverse

    params = {"score_scale": SCORE_SCALE, **params}
    return {"score": np.argsort(-scores, kind="stable"), "diverse": rank_diverse(scores, embeddings, **params).order}


def copies_flagged(scores, embeddings, groups, threshold) -> dict:
    """Planted copies flagged as near-duplicates (all members but each group's best-scored one should be), and
    images flagged that should not be (originals without copies, or a group's best member)."""
    from mining.selection import rank_diverse

    dup = rank_diverse(scores, embeddings, dedup_similarity=threshold, diversity_weight=0.0).is_duplicate
    right = should = wrong = 0
    for g in np.unique(groups[groups >= 0]):
        idx = np.flatnonzero(groups == g)
        best = idx[np.argmax(scores[idx])]
        others = idx[idx != best]
        should += len(others)
        right += int(dup[others].sum())
        wrong += int(dup[best])
    return {"copies_flagged": right, "copies": should, "wrongly_flagged": wrong + int(dup[groups < 0].sum())}


def as_scores(order: np.ndarray) -> np.ndarray:
    """Priorities (N - rank) / N per image of an order (what result.tsv holds under diverse)."""
    n = len(order)
    out = np.empty(n)
    out[order] = (n - np.arange(n)) / n
    return out


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def redundancy(embeddings: np.ndarray, top: np.ndarray) -> float:
    """Mean over `top` of each image's highest cosine similarity to another image of `top`."""
    e = unit(embeddings[top])
    sims = e @ e.T
    np.fill_diagonal(sims, -np.inf)
    return float(sims.max(axis=1).mean())


def extra_members(groups: np.ndarray, top: np.ndarray) -> dict:
    """In `top`: members of planted groups beyond each group's first, and groups with more than one member."""
    ids, counts = np.unique(groups[top][groups[top] >= 0], return_counts=True)
    return {"extra_members": int((counts - 1).sum()), "groups_with_copies": int((counts > 1).sum()),
            "groups_present": int(len(ids))}


def copy_similarities(embeddings: np.ndarray, groups: np.ndarray, kinds: list[str]) -> dict:
    """Cosine of each copy kind to its original, and each original's nearest *other* original or copy of
    another group (the distinct-image similarity that must stay below the threshold)."""
    e = unit(embeddings)
    out = {}
    first = {g: i for i, (g, k) in enumerate(zip(groups, kinds)) if g >= 0 and k == ""}
    for kind in COPY_KINDS:
        sims = [float(e[i] @ e[first[g]]) for i, (g, k) in enumerate(zip(groups, kinds)) if k == kind]
        out[kind] = {"min": min(sims), "p10": float(np.percentile(sims, 10)), "median": float(np.median(sims))}
    sims = e @ e.T
    same = (groups[:, None] == groups[None, :]) & (groups[:, None] >= 0)
    sims[same] = -np.inf
    np.fill_diagonal(sims, -np.inf)
    originals = np.array([k == "" for k in kinds])
    nearest = sims[originals].max(axis=1)
    out["distinct_nearest"] = {"max": float(nearest.max()), "p99": float(np.percentile(nearest, 99)),
                               "p90": float(np.percentile(nearest, 90)), "median": float(np.median(nearest))}
    return out


def nearest_distinct(embeddings: np.ndarray) -> dict:
    e = unit(embeddings)
    sims = e @ e.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.max(axis=1)
    return {"max": float(nearest.max()), "p99": float(np.percentile(nearest, 99)),
            "p90": float(np.percentile(nearest, 90)), "median": float(np.median(nearest)),
            "pairs_above": {str(t): int((np.triu(sims, 1) >= t).sum()) for t in (0.9, 0.93, 0.95, 0.97)}}


def errors_of(dataset, detections) -> tuple[np.ndarray, np.ndarray]:
    from benchmarks import quality

    counts = [quality.count_errors(d.xyxy, d.conf, d.cls, truth, dataset.classes)
              for d, truth in zip(detections, dataset.images)]
    return np.array([c.errors for c in counts]), np.array([t.objects for t in dataset.images])


# ---------------------------------------------------------------- cost: the selection step on 10,000 images

def synthetic_store(folder: str, embeddings: np.ndarray, scores: np.ndarray, detections, names, shard_size: int,
                    images: list[str] | None = None):
    """Shard files (scores + side files with embeddings and boxes) of a pool made of the given rows, as workers
    write them; keys are symlinks to `images` (repeated) when given, so the report reads real images."""
    from executor.shards import ShardStore, plan

    keys = [f"/in/assets/{n % 256:02x}/{n:040x}.jpg" for n in range(len(scores))]
    if images:
        os.makedirs(os.path.join(folder, "pool"), exist_ok=True)
        keys = [os.path.join(folder, "pool", f"{n:06d}.jpg") for n in range(len(scores))]
        for n, key in enumerate(keys):
            os.symlink(images[n % len(images)], key)
    store = ShardStore(folder, "mining", {"benchmark": len(keys)}, {"embeddings": "cached", "boxes": True,
                                                                    "class_counts": False})
    store.embedding_dim, store.class_names = embeddings.shape[1], list(names)
    for shard in plan(keys, shard_size):
        rows = range(shard.start, shard.start + len(shard.keys))
        store.write_scores(shard, {k: float(scores[r]) for k, r in zip(shard.keys, rows)}, {},
                           {k: (embeddings[r].astype(np.float16), detections[r]) for k, r in zip(shard.keys, rows)})
    return store, keys


def time_write(store, keys, settings: dict, folder: str, report: bool, weights: str) -> float:
    from executor.tasks import Job, MiningContext, Models, write_mining

    config = {"selection": "diverse", "report": report, "shard_size": 2048, "model_params_path": [weights],
              **settings}
    job = Job(candidates=keys, mining_result=os.path.join(folder, "result.tsv"))
    count = -(-len(keys) // 2048)
    started = time.perf_counter()
    write_mining(job, store, count, MiningContext(config, Models(), time.monotonic(), ""))
    return time.perf_counter() - started


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.selection", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=os.path.join(SHARED, "weights", "yolov8n.pt"))
    p.add_argument("--coco", default=os.path.join(SHARED, "data", "coco-val"))
    p.add_argument("--voc", default=os.path.join(SHARED, "data", "voc2007"))
    p.add_argument("--highway", type=int, default=300, help="highway images sampled (default 300)")
    p.add_argument("--quick", action="store_true", help="40 COCO / 20 VOC / 40 highway images, entropy only")
    p.add_argument("--thresholds", default="0.95,0.96,0.97,0.975,0.98", help="dedup_similarity values to compare")
    p.add_argument("--weights-diversity", default="0.05,0.1,0.15,0.2,0.3,0.5",
                   help="diversity_weight values to compare (at the template's dedup_similarity)")
    p.add_argument("--pools", default="10000,50000", help="pool sizes of the selection-step timing")
    p.add_argument("--cache", default="", help="pickle of the passes: reused when it exists, else written")
    p.add_argument("--json", default="", help="write every number here")
    args = p.parse_args(argv)
    prepare_process_env()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("executor", "ultralytics"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import pickle

    from benchmarks import gt, quality
    from executor.config import build_settings
    from executor.tasks import Models

    template = build_settings("mining", {})
    default = {"dedup_similarity": template.dedup_similarity, "diversity_weight": template.diversity_weight}
    names = Models().detector(build_settings("mining", {"model_params_path": [args.weights]}), "").names
    limit_coco, limit_voc = (40, 20) if args.quick else (None, None)
    coco = gt.load_coco(args.coco, names, limit_coco)
    voc = gt.load_voc(args.voc, names, limit_voc)
    highway = highway_sample(40 if args.quick else args.highway)
    algorithms = ("entropy",) if args.quick else ("entropy", "cald")
    thresholds = [float(t) for t in args.thresholds.split(",")]
    weights = [float(w) for w in args.weights_diversity.split(",")]
    results: dict = {"settings": {"weights": os.path.relpath(args.weights, REPO), "img_size": 640,
                                  "coco": len(coco.paths), "voc": len(voc.paths), "highway": len(highway),
                                  "defaults": default}}
    scratch = tempfile.mkdtemp(prefix="quarry-selection-")
    cache: dict = {}
    if args.cache and os.path.isfile(args.cache):
        with open(args.cache, "rb") as handle:
            cache = pickle.load(handle)
    paths, groups, kinds = planted_pool(coco.paths, scratch)
    passes = {"planted": paths, "coco-val": coco.paths, "voc2007": voc.paths, "highway": highway}
    for name, keys in passes.items():
        for algorithm in (algorithms if name in ("coco-val", "voc2007") else ("entropy",)):
            if (name, algorithm) in cache and cache[name, algorithm]["images"] != len(keys):
                del cache[name, algorithm]
            cached_pass(cache, name, keys, algorithm, args.weights)
    if args.cache:
        with open(args.cache, "wb") as handle:
            pickle.dump({k: {**v, "detections": v["detections"]} for k, v in cache.items()}, handle)

    # 1. planted duplicates
    run = cache["planted", "entropy"]
    k = int(round(BUDGET * len(paths)))
    planted = {"pool": len(paths), "groups": int(len(np.unique(groups[groups >= 0]))), "top": k,
               "similarity": copy_similarities(run["embeddings"], groups, kinds), "by_threshold": {}}
    planted["score"] = extra_members(groups, np.argsort(-run["scores"], kind="stable")[:k])
    for t in thresholds:
        order = orders(run["scores"], run["embeddings"], dedup_similarity=t,
                       diversity_weight=default["diversity_weight"])["diverse"]
        planted["by_threshold"][str(t)] = {**extra_members(groups, order[:k]),
                                           **copies_flagged(run["scores"], run["embeddings"], groups, t)}
    results["planted"] = planted

    # 2. redundancy, 3. quality: thresholds at the default weight, weights at the default threshold
    grid = [(t, default["diversity_weight"]) for t in thresholds] + \
        [(default["dedup_similarity"], w) for w in weights if w != default["diversity_weight"]]
    results["redundancy"], results["quality"], results["nearest_distinct"], results["flagged"] = {}, {}, {}, {}
    for name, dataset in (("coco-val", coco), ("voc2007", voc), ("highway", None)):
        keys = passes[name]
        run = cache[name, "entropy"]
        k = int(round(BUDGET * len(keys)))
        results["nearest_distinct"][name] = nearest_distinct(run["embeddings"])
        from mining.selection import rank_diverse

        results["flagged"][name] = {str(t): int(rank_diverse(run["scores"], run["embeddings"], dedup_similarity=t,
                                                             diversity_weight=0.0).is_duplicate.sum())
                                    for t in thresholds}
        row = {"score": redundancy(run["embeddings"], np.argsort(-run["scores"], kind="stable")[:k]),
               "random (20 draws)": float(np.mean([redundancy(run["embeddings"],
                                                              np.random.default_rng(i).permutation(len(keys))[:k])
                                                   for i in range(20)])),
               "k-center (w=1)": redundancy(run["embeddings"], orders(run["scores"], run["embeddings"],
                                                                      dedup_similarity=default["dedup_similarity"],
                                                                      diversity_weight=1.0)["diverse"][:k])}
        for t, w in grid:
            o = orders(run["scores"], run["embeddings"], dedup_similarity=t, diversity_weight=w)
            row[f"t={t} w={w}"] = redundancy(run["embeddings"], o["diverse"][:k])
        results["redundancy"][name] = row
        if dataset is None:
            continue
        errors, objects = errors_of(dataset, run["detections"])
        for algorithm in algorithms:
            scores = cache[name, algorithm]["scores"]
            q = {"score": {"q1": quality.capture_images(scores, errors),
                           "q2": quality.capture_objects(scores, errors, objects)}}
            for t, w in grid:
                o = orders(scores, run["embeddings"], dedup_similarity=t, diversity_weight=w)
                s = as_scores(o["diverse"])
                q[f"t={t} w={w}"] = {"q1": quality.capture_images(s, errors),
                                     "q2": quality.capture_objects(s, errors, objects)}
            results["quality"][f"{name}/{algorithm}"] = q

    # 4. cost
    ent = cache["coco-val", "entropy"]
    per_image = ent["seconds"] / ent["images"]
    results["embedding"] = {"pool_seconds": ent["pool_seconds"], "pass_seconds": ent["seconds"],
                            "share": ent["pool_seconds"] / ent["seconds"], "dim": int(ent["embeddings"].shape[1])}
    ab = coco.paths[:64]
    timed = [mine_pass(ab, "entropy", args.weights, embeddings=flag)["seconds"] for flag in (False, True, False, True)]
    results["embedding"]["ab_64_images"] = {"off_s": timed[0::2], "on_s": timed[1::2]}
    rng = np.random.default_rng(0)
    results["cost"] = {"mining_images_per_s": 1 / per_image, "pools": {}}
    for pool in [int(x) for x in args.pools.split(",")]:
        reps = -(-pool // len(coco.paths))
        cost = {"mining_seconds_estimate": per_image * pool}
        for variant in ("repeated", "distinct"):
            if variant == "repeated":  # the coco images repeated (exact copies apart from float16 rounding)
                emb = np.tile(ent["embeddings"], (reps, 1))[:pool]
            else:  # no duplicates at all: the kept set is the whole shortlist (the slowest case)
                emb = unit(rng.standard_normal((pool, ent["embeddings"].shape[1])))
            scores = np.tile(ent["scores"], reps)[:pool] + rng.random(pool) * 1e-3
            folder = tempfile.mkdtemp(dir=scratch)
            store, keys = synthetic_store(folder, emb, scores, (ent["detections"] * reps)[:pool], names, 2048)
            plain = time_write(store, keys, {"selection": "score"}, folder, False, args.weights)
            total = time_write(store, keys, {}, folder, False, args.weights)
            cost[variant] = {"selection_s": total - plain, "write_with_selection_s": total, "plain_write_s": plain,
                             "share_of_mining": (total - plain) / cost["mining_seconds_estimate"]}
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        results["cost"]["pools"][str(pool)] = cost
    # the report on a pool of 1,000 images (report cost = write with report minus write without)
    folder = tempfile.mkdtemp(dir=scratch)
    r1k = -(-1000 // len(coco.paths))
    emb1k = np.tile(ent["embeddings"], (r1k, 1))[:1000]
    store, keys = synthetic_store(folder, emb1k, np.tile(ent["scores"], r1k)[:1000] + rng.random(1000) * 1e-3,
                                  (ent["detections"] * r1k)[:1000], names, 2048, coco.paths)
    without = time_write(store, keys, {"selection": "score"}, folder, False, args.weights)
    with_report = time_write(store, keys, {"selection": "score"}, folder, True, args.weights)
    diverse_report = time_write(store, keys, {}, folder, True, args.weights) - \
        time_write(store, keys, {}, folder, False, args.weights)
    results["cost"]["report_1000"] = {"report_s": with_report - without, "mining_seconds_estimate": per_image * 1000,
                                      "share": (with_report - without) / (per_image * 1000),
                                      "diverse_report_s": diverse_report}

    print(table(results))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1, default=float)
    import shutil

    shutil.rmtree(scratch, ignore_errors=True)
    return 0


def table(r: dict) -> str:
    d = r["settings"]["defaults"]
    lines = [f"template defaults: dedup_similarity {d['dedup_similarity']}, diversity_weight {d['diversity_weight']}"]
    p = r["planted"]
    lines.append(f"planted duplicates: {p['pool']} images, {p['groups']} groups of 4, top 20% = {p['top']} images")
    lines.append(f"  score:            {p['score']['extra_members']} extra group members in the top, "
                 f"{p['score']['groups_with_copies']} groups with more than one")
    for t, v in p["by_threshold"].items():
        lines.append(f"  diverse t={t:5s}: {v['extra_members']} extra, {v['groups_with_copies']} groups with more than "
                     f"one; copies flagged {v['copies_flagged']}/{v['copies']}, wrongly flagged {v['wrongly_flagged']}")
    for kind, v in p["similarity"].items():
        lines.append(f"  cos {kind:18s} " + " ".join(f"{a} {b:.4f}" for a, b in v.items()))
    lines.append("nearest other image (cosine) and images flagged as near-duplicates per threshold:")
    for name, v in r["nearest_distinct"].items():
        lines.append(f"  {name:9s} median {v['median']:.3f} p90 {v['p90']:.3f} p99 {v['p99']:.3f} max {v['max']:.3f}; "
                     f"flagged {r['flagged'][name]}")
    lines.append("redundancy of the top 20% (mean max cosine to another top image; lower = more varied):")
    for name, row in r["redundancy"].items():
        lines.append(f"  {name:9s} " + "  ".join(f"{k} {v:.4f}" for k, v in row.items()))
    lines.append("quality Q1 / Q2 (and the change from score order):")
    for name, row in r["quality"].items():
        base = row["score"]
        lines.append(f"  {name:16s} score {base['q1']:.3f}/{base['q2']:.3f}  " + "  ".join(
            f"{k} {v['q1'] - base['q1']:+.3f}/{v['q2'] - base['q2']:+.3f}" for k, v in row.items() if k != "score"))
    e = r["embedding"]
    lines.append(f"embedding: D={e['dim']}, pooling {e['pool_seconds']:.3f} s of a {e['pass_seconds']:.1f} s pass "
                 f"({e['share']:.2%}); A/B on 64 images, seconds: without {e['ab_64_images']['off_s']} with "
                 f"{e['ab_64_images']['on_s']}")
    c = r["cost"]
    for pool, v in c["pools"].items():
        lines.append(f"selection step, {pool} images (mining ~{v['mining_seconds_estimate']:.0f} s at "
                     f"{c['mining_images_per_s']:.2f} images/s): repeated images {v['repeated']['selection_s']:.2f} s "
                     f"({v['repeated']['share_of_mining']:.3%}), all distinct {v['distinct']['selection_s']:.2f} s "
                     f"({v['distinct']['share_of_mining']:.3%}) beyond the plain write "
                     f"({v['distinct']['plain_write_s']:.2f} s)")
    rep = c["report_1000"]
    lines.append(f"report, 1000 images: {rep['report_s']:.2f} s ({rep['share']:.2%} of "
                 f"~{rep['mining_seconds_estimate']:.0f} s "
                 f"of mining); with selection diverse (duplicate groups, projection) {rep['diverse_report_s']:.2f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
