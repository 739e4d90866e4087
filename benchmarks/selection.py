"""Selection benchmark: does `selection: diverse` remove redundancy without losing what the score finds?

    python -m benchmarks.selection [--quick] [--json benchmarks/results/selection.json] [--pairs-png FILE]

On CPU with the real yolov8n, through the executor's own pass (executor.pipeline.passes.Pass: one forward per image, the
embedding pooled from that forward, the photo hash and thumbnail from the decoded original), then the
selection step of a mining run:

1. planted duplicates: for every fourth coco-val image, and for every eighth of the 1,704 highway train photos,
   four near-copies made with OpenCV (re-encoded at JPEG quality 40 and resized to 80%; a crop of 85-95% of
   each side at a random place, seeded; gamma 0.8 plus Gaussian noise; mirrored); per kind, how many copies the
   de-duplication flags (recall), how many originals it flags (false alarms), and how many group members beyond
   the first the top 20% holds (score vs diverse);
2. a real pool of one domain: how many of the 1,704 highway train photos are flagged at each threshold (the
   originals only), the byte-identical pairs among them, and a picture of 20 flagged pairs (--pairs-png) to judge
   by eye;
3. redundancy: mean over the top 20% of each image's highest cosine similarity to another top-20% image,
   score vs diverse, on coco-val, voc2007 and highway;
4. quality: error capture Q1 (20% of images) and Q2 (20% of objects) of benchmarks/quality.py for entropy and
   cald, score vs diverse, on coco-val and voc2007;
5. re-selection: the highway pool mined once (shards kept), then mined again with other selection settings:
   the second run's seconds and the forwards it ran (none);
6. cost: the selection step of executor.pipeline.ranking (plan + streamed write) on 10,000- and 50,000-image pools of
   shard files, against the mining time of such a pool; the embedding's share of mining time; the report's
   cost on a 1,000-image pool.

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
COPY_KINDS = ("jpeg40+resize80", "crop85-95", "gamma+noise", "mirrored")


# ---------------------------------------------------------------- pools

def planted_pool(images: list[str], folder: str, every: int, seed: int = 0
                 ) -> tuple[list[str], np.ndarray, list[str]]:
    """`images` plus four near-copies (COPY_KINDS) of every `every`-th one, written to `folder`. Returns (paths,
    group id per path: -1 for images without copies, kind per path: '' for originals)."""
    import cv2

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    paths, groups, kinds = list(images), [-1] * len(images), [""] * len(images)
    for n, path in enumerate(images):
        if n % every:
            continue
        groups[n] = n
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        h, w = image.shape[:2]
        stem = os.path.splitext(os.path.basename(path))[0]
        small = cv2.resize(image, (int(w * 0.8), int(h * 0.8)), interpolation=cv2.INTER_AREA)
        ch, cw = int(h * rng.uniform(0.85, 0.95)), int(w * rng.uniform(0.85, 0.95))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        noisy = np.clip(255 * (image / 255.0) ** 0.8 + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
        for kind, copy, quality in zip(COPY_KINDS, (small, image[y:y + ch, x:x + cw], noisy, image[:, ::-1]),
                                       (40, 95, 90, 95)):
            target = os.path.join(folder, f"{stem}-{kind}.jpg")
            cv2.imwrite(target, copy, [cv2.IMWRITE_JPEG_QUALITY, quality])
            paths.append(target)
            groups.append(n)
            kinds.append(kind)
    return paths, np.array(groups), kinds


def highway_train() -> list[str]:
    root = os.path.join(SHARED, "data", "highway", "train", "images")
    return sorted(os.path.join(root, name) for name in os.listdir(root)
                  if name.lower().endswith((".jpg", ".jpeg", ".png")))


# ---------------------------------------------------------------- one pass: scores, embeddings, boxes

def mine_pass(paths: list[str], algorithm: str, weights: str, embeddings: bool = True, img_size: int = 640) -> dict:
    """Scores, embeddings and boxes (mining's conf_thres) of `paths` through executor.pipeline.passes.Pass, timed."""
    from executor.pipeline.passes import Models, Pass, open_scorer
    from executor.pipeline.plan import weights_for
    from executor.protocol.settings import build_settings
    from mining import SCORERS

    settings = build_settings("mining", {"mining_algorithm": algorithm, "model_params_path": [weights],
                                         "img_size": img_size, "selection": "diverse" if embeddings else "score"})
    detector = Models().detector(settings, weights_for(settings, ""))
    if embeddings:
        detector.enable_embeddings()
    work = Pass({"mining": settings}, scorer=open_scorer(settings),
                mining_detector=detector if SCORERS[algorithm].needs_model else None,
                side={"embeddings": embeddings, "hashes": embeddings, "boxes": True}, side_detector=detector)
    unreadable: dict = {}
    started = time.perf_counter()
    found = work.run(paths, lambda done: None, unreadable)
    seconds = time.perf_counter() - started
    if unreadable:
        raise RuntimeError(f"unreadable benchmark images: {list(unreadable)[:3]}")
    side = found["side"]
    return {"scores": np.array([found["mining"][p] for p in paths]),
            "embeddings": (np.stack([side[p][0] for p in paths]).astype(np.float32) if embeddings else None),
            "hashes": np.stack([side[p][2][0] for p in paths]) if embeddings else None,
            "thumbnails": np.stack([side[p][2][1] for p in paths]) if embeddings else None,
            "detections": [side[p][1] for p in paths], "seconds": seconds,
            "pool_seconds": work.pool_seconds, "extra_forward_seconds": work.forward_seconds,
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

def orders(run: dict, scores: np.ndarray | None = None, **params) -> dict[str, np.ndarray]:
    """{"score": score order, "diverse": the order of mining.selection.rank_diverse with `params` and the executor's
    score scale} of a pass (the executor's own step for pools up to its shortlist: here every image is in it)."""
    scores = run["scores"] if scores is None else scores
    return {"score": np.argsort(-scores, kind="stable"), "diverse": diverse(run, scores, **params).order}


def diverse(run: dict, scores: np.ndarray | None = None, rows=None, **params):
    """rank_diverse of a pass (or of its `rows`) as the executor calls it: hashes, thumbnails, the score scale."""
    from executor.pipeline.diversity import SCORE_SCALE
    from mining.selection import rank_diverse

    rows = np.arange(len(run["scores"])) if rows is None else np.asarray(rows)
    scores = run["scores"] if scores is None else scores
    return rank_diverse(scores[rows], run["embeddings"][rows], hashes=run["hashes"][rows],
                        thumbnails=run["thumbnails"][rows], **{"score_scale": SCORE_SCALE, **params})


def copies_flagged(run, groups, kinds, threshold) -> dict:
    """Per copy kind, the planted copies flagged as near-duplicates (all members but each group's best-scored one
    should be; counted for the copies that are not their group's best), and the originals flagged that should
    not be (originals without copies, or a group's best member)."""
    dup = diverse(run, dedup_similarity=threshold, diversity_weight=0.0).is_duplicate
    scores, kinds = run["scores"], np.array(kinds)
    should = np.zeros(len(scores), bool)
    for g in np.unique(groups[groups >= 0]):
        idx = np.flatnonzero(groups == g)
        should[idx[idx != idx[np.argmax(scores[idx])]]] = True
    by_kind = {kind: [int(dup[should & (kinds == kind)].sum()), int((should & (kinds == kind)).sum())]
               for kind in ("",) + COPY_KINDS}
    right, total = sum(v[0] for v in by_kind.values()), sum(v[1] for v in by_kind.values())
    return {"copies_flagged": right, "copies": total, "recall": right / max(total, 1), "by_kind": by_kind,
            "wrongly_flagged": int((dup & ~should).sum())}


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


def copy_similarities(run: dict, groups: np.ndarray, kinds: list[str]) -> dict:
    """Per copy kind, the photo-hash similarity of each copy to its original (what dedup_similarity must reach)
    and, for the originals, the nearest other original (what it must stay above)."""
    from mining.duplicates import signs, similarity

    h = signs(run["hashes"])
    out = {}
    first = {g: i for i, (g, k) in enumerate(zip(groups, kinds)) if g >= 0 and k == ""}
    for kind in COPY_KINDS:
        sims = [float(similarity(h[i:i + 1], h[first[g]:first[g] + 1])[0, 0])
                for i, (g, k) in enumerate(zip(groups, kinds)) if k == kind]
        out[kind] = {"min": min(sims), "p10": float(np.percentile(sims, 10)), "median": float(np.median(sims))}
    originals = np.flatnonzero(np.array([k == "" for k in kinds]))
    nearest = nearest_other(h[originals])
    out["distinct_nearest"] = {"max": float(nearest.max()), "p99": float(np.percentile(nearest, 99)),
                               "p90": float(np.percentile(nearest, 90)), "median": float(np.median(nearest))}
    return out


def nearest_other(h: np.ndarray, block: int = 512) -> np.ndarray:
    """Each row's highest photo-hash similarity to another row (signs rows), in blocks."""
    from mining.duplicates import similarity

    out = np.empty(len(h))
    for b0 in range(0, len(h), block):
        sims = similarity(h[b0:b0 + block], h)
        sims[np.arange(len(sims)), np.arange(b0, b0 + len(sims))] = -np.inf
        out[b0:b0 + block] = sims.max(axis=1)
    return out


def errors_of(dataset, detections) -> tuple[np.ndarray, np.ndarray]:
    from benchmarks import quality

    counts = [quality.count_errors(d.xyxy, d.conf, d.cls, truth, dataset.classes)
              for d, truth in zip(detections, dataset.images)]
    return np.array([c.errors for c in counts]), np.array([t.objects for t in dataset.images])


# ---------------------------------------------------------------- cost: the selection step on 10,000 images

def synthetic_store(folder: str, embeddings: np.ndarray, hashes: np.ndarray, thumbnails: np.ndarray, scores: np.ndarray,
                    detections, names, shard_size: int, images: list[str] | None = None):
    """Shard files (scores + side files with embeddings, photo hashes and boxes) of a pool made of the given rows, as workers
    write them; keys are symlinks to `images` (repeated) when given, so the report reads real images."""
    from executor.pipeline.shards import ShardStore, plan

    keys = [f"/in/assets/{n % 256:02x}/{n:040x}.jpg" for n in range(len(scores))]
    if images:
        os.makedirs(os.path.join(folder, "pool"), exist_ok=True)
        keys = [os.path.join(folder, "pool", f"{n:06d}.jpg") for n in range(len(scores))]
        for n, key in enumerate(keys):
            os.symlink(images[n % len(images)], key)
    store = ShardStore(folder, "mining", {"benchmark": len(keys)}, {"embeddings": "cached", "hashes": "cached",
                                                                    "boxes": True, "class_counts": False})
    store.embedding_dim, store.class_names = embeddings.shape[1], list(names)
    for shard in plan(keys, shard_size):
        rows = range(shard.start, shard.start + len(shard.keys))
        store.write_scores(shard, {k: float(scores[r]) for k, r in zip(shard.keys, rows)}, {},
                           {k: (embeddings[r].astype(np.float16), detections[r], (hashes[r], thumbnails[r]))
                            for k, r in zip(shard.keys, rows)})
    return store, keys


def time_write(store, keys, settings: dict, folder: str, report: bool, weights: str) -> float:
    from executor.pipeline.job import Job
    from executor.pipeline.passes import Models
    from executor.pipeline.plan import make_plan
    from executor.pipeline.ranking import MiningContext, write_mining

    config = {"selection": "diverse", "report": report, "shard_size": 2048, "model_params_path": [weights],
              **settings}
    job = Job(candidates=keys, mining_result=os.path.join(folder, "result.tsv"))
    count = -(-len(keys) // 2048)
    started = time.perf_counter()
    plan = make_plan(["mining"], job, config)
    write_mining(job, store, count, MiningContext(plan, Models(), time.monotonic(), ""))
    return time.perf_counter() - started


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    from benchmarks import log_to_stderr

    p = argparse.ArgumentParser(prog="python -m benchmarks.selection", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=os.path.join(SHARED, "weights", "yolov8n.pt"))
    p.add_argument("--coco", default=os.path.join(SHARED, "data", "coco-val"))
    p.add_argument("--voc", default=os.path.join(SHARED, "data", "voc2007"))
    p.add_argument("--quick", action="store_true", help="40 COCO / 20 VOC / 200 highway images, entropy only")
    p.add_argument("--thresholds", default="0.8,0.85,0.9", help="dedup_similarity values to compare")
    p.add_argument("--weights-diversity", default="0.05,0.15,0.3,0.5",
                   help="diversity_weight values to compare (at the template's dedup_similarity)")
    p.add_argument("--pools", default="10000,50000", help="pool sizes of the selection-step timing")
    p.add_argument("--cache", default="", help="pickle of the passes: reused when it exists, else written")
    p.add_argument("--json", default="", help="write every number here")
    p.add_argument("--pairs-png", default="", help="draw 20 flagged highway pairs here, to judge by eye")
    args = p.parse_args(argv)
    prepare_process_env()
    log_to_stderr(("executor", "ultralytics"))

    import pickle
    import shutil

    from benchmarks import gt, quality
    from executor.pipeline.passes import Models
    from executor.protocol.settings import build_settings

    template = build_settings("mining", {})
    default = {"dedup_similarity": template.dedup_similarity, "diversity_weight": template.diversity_weight}
    names = Models().detector(build_settings("mining", {}), args.weights).names
    limit_coco, limit_voc, limit_highway = (40, 20, 200) if args.quick else (None, None, None)
    coco = gt.load_coco(args.coco, names, limit_coco)
    voc = gt.load_voc(args.voc, names, limit_voc)
    highway = highway_train()[:limit_highway]
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
    planted = {"coco-val": planted_pool(coco.paths, os.path.join(scratch, "coco"), every=4),
               "highway": planted_pool(highway, os.path.join(scratch, "highway"), every=8)}
    passes = {"planted coco-val": planted["coco-val"][0], "coco-val": coco.paths, "voc2007": voc.paths,
              "planted highway": planted["highway"][0]}
    for name, keys in passes.items():
        for algorithm in (algorithms if name in ("coco-val", "voc2007") else ("entropy",)):
            if (name, algorithm) in cache and cache[name, algorithm]["images"] != len(keys):
                del cache[name, algorithm]
            cached_pass(cache, name, keys, algorithm, args.weights)
    if args.cache:
        with open(args.cache, "wb") as handle:
            pickle.dump(cache, handle)

    # 1. planted duplicates, on coco-val and on highway (does the threshold carry over?)
    results["planted"] = {}
    for name, (paths, groups, kinds) in planted.items():
        run = cache[f"planted {name}", "entropy"]
        k = int(round(BUDGET * len(paths)))
        order = orders(run, dedup_similarity=default["dedup_similarity"],
                       diversity_weight=default["diversity_weight"])
        results["planted"][name] = {
            "pool": len(paths), "groups": int(len(np.unique(groups[groups >= 0]))), "top": k,
            "similarity": copy_similarities(run, groups, kinds),
            "score": extra_members(groups, order["score"][:k]), "diverse": extra_members(groups, order["diverse"][:k]),
            "by_threshold": {str(t): copies_flagged(run, groups, kinds, t) for t in thresholds}}

    # 2. a real pool of one domain: the highway train photos alone
    run = cache["planted highway", "entropy"]
    originals = np.arange(len(highway))
    flagged = {str(t): diverse(run, rows=originals, dedup_similarity=t, diversity_weight=0.0) for t in thresholds}
    at_default = flagged[str(default["dedup_similarity"])]
    identical = identical_pairs(highway)
    results["highway_pool"] = {
        "images": len(highway), "flagged": {t: int(r.is_duplicate.sum()) for t, r in flagged.items()},
        "byte_identical_pairs": len(identical),
        "byte_identical_flagged": int(sum(at_default.is_duplicate[a] or at_default.is_duplicate[b]
                                          for a, b in identical)),
        "flagged_pairs": [[os.path.basename(highway[i]), os.path.basename(highway[int(at_default.duplicate_of[i])])]
                          for i in np.flatnonzero(at_default.duplicate_of >= 0)]}
    if args.pairs_png:
        draw_pairs(args.pairs_png, [(highway[i], highway[int(at_default.duplicate_of[i])])
                                    for i in np.flatnonzero(at_default.duplicate_of >= 0)])

    # 3. redundancy, 4. quality: thresholds at the default weight, weights at the default threshold
    grid = [(t, default["diversity_weight"]) for t in thresholds] + \
        [(default["dedup_similarity"], w) for w in weights if w != default["diversity_weight"]]
    results["redundancy"], results["quality"] = {}, {}
    highway_run = {key: (value[:len(highway)] if isinstance(value, np.ndarray) else value)
                   for key, value in run.items()}
    for name, dataset in (("coco-val", coco), ("voc2007", voc), ("highway", None)):
        run = highway_run if dataset is None else cache[name, "entropy"]
        count = len(run["scores"])
        k = int(round(BUDGET * count))
        k_center = orders(run, dedup_similarity=default["dedup_similarity"], diversity_weight=1.0)["diverse"]
        row = {"score": redundancy(run["embeddings"], np.argsort(-run["scores"], kind="stable")[:k]),
               "random (20 draws)": float(np.mean([redundancy(run["embeddings"],
                                                              np.random.default_rng(i).permutation(count)[:k])
                                                   for i in range(20)])),
               "k-center (w=1)": redundancy(run["embeddings"], k_center[:k])}
        for t, w in grid:
            row[f"t={t} w={w}"] = redundancy(run["embeddings"],
                                             orders(run, dedup_similarity=t, diversity_weight=w)["diverse"][:k])
        results["redundancy"][name] = row
        if dataset is None:
            continue
        errors, objects = errors_of(dataset, run["detections"])
        for algorithm in algorithms:
            scores = cache[name, algorithm]["scores"]
            q = {"score": {"q1": quality.capture_images(scores, errors),
                           "q2": quality.capture_objects(scores, errors, objects)}}
            for t, w in grid:
                s = as_scores(orders(run, scores, dedup_similarity=t, diversity_weight=w)["diverse"])
                q[f"t={t} w={w}"] = {"q1": quality.capture_images(s, errors),
                                     "q2": quality.capture_objects(s, errors, objects)}
            results["quality"][f"{name}/{algorithm}"] = q

    # 5. re-selection of a scored pool with other selection settings
    results["reselection"] = reselection(highway, args.weights, os.path.join(scratch, "reselect"))

    # 6. cost
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
            tile = lambda a: np.concatenate([a] * reps)[:pool]  # noqa: E731
            if variant == "repeated":  # the coco images repeated: exact copies (apart from float16 rounding)
                emb, hashes, thumbs = tile(ent["embeddings"]), tile(ent["hashes"]), tile(ent["thumbnails"])
            else:  # no duplicates at all: the kept set is the whole shortlist (the slowest case)
                emb = unit(rng.standard_normal((pool, ent["embeddings"].shape[1])))
                hashes = rng.integers(0, 256, (pool,) + ent["hashes"].shape[1:], dtype=np.uint8)
                thumbs = rng.integers(0, 256, (pool,) + ent["thumbnails"].shape[1:], dtype=np.uint8)
            scores = np.tile(ent["scores"], reps)[:pool] + rng.random(pool) * 1e-3
            folder = tempfile.mkdtemp(dir=scratch)
            store, keys = synthetic_store(folder, emb, hashes, thumbs, scores, (ent["detections"] * reps)[:pool],
                                          names, 2048)
            plain = time_write(store, keys, {"selection": "score"}, folder, False, args.weights)
            total = time_write(store, keys, {}, folder, False, args.weights)
            cost[variant] = {"selection_s": total - plain, "write_with_selection_s": total, "plain_write_s": plain,
                             "share_of_mining": (total - plain) / cost["mining_seconds_estimate"]}
            shutil.rmtree(folder, ignore_errors=True)
        results["cost"]["pools"][str(pool)] = cost
    # the report on a pool of 1,000 images (report cost = write with report minus write without)
    folder = tempfile.mkdtemp(dir=scratch)
    r1k = -(-1000 // len(coco.paths))
    tile = lambda a: np.concatenate([a] * r1k)[:1000]  # noqa: E731
    store, keys = synthetic_store(folder, tile(ent["embeddings"]), tile(ent["hashes"]), tile(ent["thumbnails"]),
                                  np.tile(ent["scores"], r1k)[:1000] + rng.random(1000) * 1e-3,
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
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


def identical_pairs(paths: list[str]) -> list[tuple[int, int]]:
    """Index pairs of byte-identical files."""
    from executor.pipeline.shards import file_sha256

    first: dict[str, int] = {}
    pairs = []
    for i, path in enumerate(paths):
        digest = file_sha256(path)
        if digest in first:
            pairs.append((first[digest], i))
        else:
            first.setdefault(digest, i)
    return pairs


def draw_pairs(target: str, pairs: list[tuple[str, str]], count: int = 20) -> None:
    """A picture of `count` flagged pairs (sampled, seeded): the copy left, the image it nearly copies right."""
    import cv2

    rng = np.random.default_rng(0)
    picked = [pairs[i] for i in sorted(rng.choice(len(pairs), size=min(count, len(pairs)), replace=False))]
    rows = []
    for copy, kept in picked:
        tiles = [cv2.resize(cv2.imread(p), (240, 180), interpolation=cv2.INTER_AREA) for p in (copy, kept)]
        rows.append(np.concatenate([tiles[0], np.full((180, 8, 3), 255, np.uint8), tiles[1]], axis=1))
    columns = [np.concatenate(rows[i:i + 10], axis=0) for i in range(0, len(rows), 10)]
    height = max((c.shape[0] for c in columns), default=0)
    columns = [np.pad(c, ((0, height - c.shape[0]), (0, 16), (0, 0)), constant_values=255) for c in columns]
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    cv2.imwrite(target, np.concatenate(columns, axis=1) if columns else np.full((10, 10, 3), 255, np.uint8))


def reselection(paths: list[str], weights: str, folder: str) -> dict:
    """Mine `paths` once with selection diverse (shards kept, at img_size 320 to save time), then again with other
    selection settings: the second run's seconds, and whether it scored anything (its shard files untouched)."""
    from executor.pipeline.job import Job
    from executor.pipeline.plan import make_plan
    from executor.pipeline.tasks import run

    job = Job(candidates=paths, mining_result=os.path.join(folder, "result.tsv"),
              shards_dir=os.path.join(folder, "shards"), keep_shards=True)
    config = {"model_params_path": [weights], "img_size": 320, "selection": "diverse", "report": False}
    started = time.perf_counter()
    run(make_plan(["mining"], job, config))
    first = time.perf_counter() - started
    stamps = {name: os.stat(os.path.join(job.shards_dir, name)).st_mtime_ns for name in os.listdir(job.shards_dir)}
    started = time.perf_counter()
    run(make_plan(["mining"], job, {**config, "dedup_similarity": 0.9, "diversity_weight": 0.3}))
    second = time.perf_counter() - started
    after = {name: os.stat(os.path.join(job.shards_dir, name)).st_mtime_ns for name in os.listdir(job.shards_dir)}
    return {"images": len(paths), "first_run_s": first, "reselection_s": second,
            "shards_rewritten": sum(after.get(name) != stamp for name, stamp in stamps.items())}


def table(r: dict) -> str:
    d = r["settings"]["defaults"]
    lines = [f"template defaults: dedup_similarity {d['dedup_similarity']}, diversity_weight {d['diversity_weight']}"]
    for name, p in r["planted"].items():
        lines.append(f"planted near-copies in {name}: {p['pool']} images, {p['groups']} groups of 5, "
                     f"top 20% = {p['top']} images: extra group members in it, score {p['score']['extra_members']}, "
                     f"diverse {p['diverse']['extra_members']}")
        for t, v in p["by_threshold"].items():
            kinds = ", ".join(f"{kind or 'originals outscored by a copy'} {a}/{b}"
                              for kind, (a, b) in v["by_kind"].items() if b)
            lines.append(f"  t={t:5s}: copies flagged {v['copies_flagged']}/{v['copies']} (recall {v['recall']:.3f}: "
                         f"{kinds}), originals wrongly flagged {v['wrongly_flagged']}")
        for kind, v in p["similarity"].items():
            lines.append(f"  hash similarity {kind:18s} " + " ".join(f"{a} {b:.3f}" for a, b in v.items()))
    h = r["highway_pool"]
    lines.append(f"highway train ({h['images']} photos): flagged per threshold "
                 + ", ".join(f"{t}: {n} ({100 * n / h['images']:.1f}%)" for t, n in h["flagged"].items())
                 + f"; byte-identical pairs {h['byte_identical_pairs']}, flagged {h['byte_identical_flagged']}")
    lines.append("redundancy of the top 20% (mean max cosine to another top image; lower = more varied):")
    for name, row in r["redundancy"].items():
        lines.append(f"  {name:9s} " + "  ".join(f"{k} {v:.4f}" for k, v in row.items()))
    lines.append("quality Q1 / Q2 (and the change from score order):")
    for name, row in r["quality"].items():
        base = row["score"]
        lines.append(f"  {name:16s} score {base['q1']:.3f}/{base['q2']:.3f}  " + "  ".join(
            f"{k} {v['q1'] - base['q1']:+.3f}/{v['q2'] - base['q2']:+.3f}" for k, v in row.items() if k != "score"))
    s = r["reselection"]
    lines.append(f"re-selection of {s['images']} scored images with other settings: {s['reselection_s']:.1f} s "
                 f"(the first run, scoring at img_size 320: {s['first_run_s']:.1f} s); shard files rewritten: "
                 f"{s['shards_rewritten']}")
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
