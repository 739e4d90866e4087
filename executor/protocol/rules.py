"""The value rules of config keys: each coerces a config.yaml value to its key's type once, or raises a ConfigError
naming the key and what is allowed. RULES maps every key to its rule (executor/protocol/settings.py applies them).
"""

from typing import Any, Callable

from executor.errors import ConfigError
from executor.shared import gpu_list


Rule = Callable[[str, Any], Any]


def _bad(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"config key '{key}': {value!r} is not allowed; expected {allowed}")


def to_bool(key: str, value: Any) -> bool:
    """The SDK's get_bool: bool, 0/1, or the strings t/true/1/f/false/0 in any case."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("t", "true", "1", "yes"):
        return True
    if text in ("f", "false", "0", "no", ""):
        return False
    raise _bad(key, value, "a boolean (true/false, 1/0)")


def boolean() -> Rule:
    return to_bool


def auto_or_boolean() -> Rule:
    """'auto' (also for '' or nothing), or a boolean as to_bool reads one."""
    def rule(key: str, value: Any):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
            return "auto"
        try:
            return to_bool(key, value)
        except ConfigError:
            raise _bad(key, value, "auto, true or false") from None

    return rule


def number(lo: float | None = None, hi: float | None = None, integer: bool = False) -> Rule:
    kind = "an integer" if integer else "a number"
    bounds = f" in [{lo}, {hi}]" if lo is not None and hi is not None else (
        f" >= {lo}" if lo is not None else (f" <= {hi}" if hi is not None else ""))

    def rule(key: str, value: Any):
        if isinstance(value, bool):
            raise _bad(key, value, kind + bounds)
        try:
            parsed = float(value)
        except (TypeError, ValueError):
            raise _bad(key, value, kind + bounds) from None
        if integer:
            if parsed != int(parsed):
                raise _bad(key, value, kind + bounds)
            parsed = int(parsed)
        if parsed != parsed or (lo is not None and parsed < lo) or (hi is not None and parsed > hi):
            raise _bad(key, value, kind + bounds)
        return parsed

    return rule


def integer(lo: int | None = None, hi: int | None = None) -> Rule:
    return number(lo, hi, integer=True)


def choice(*options: str) -> Rule:
    def rule(key: str, value: Any) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise _bad(key, value, "one of " + ", ".join(options))
        return text

    return rule


def algorithm() -> Rule:
    """A mining algorithm: one of the names in mining.SCORERS (the one list of them), read when a value is checked
    (mining imports torch: not at this module's import)."""
    def rule(key: str, value: Any) -> str:
        from mining import SCORERS

        return choice(*SCORERS)(key, value)

    return rule


def text() -> Rule:
    return lambda key, value: "" if value is None else str(value)


def float_list() -> Rule:
    """Comma-separated floats (or a YAML list of numbers); '' = empty."""
    def rule(key: str, value: Any) -> tuple:
        items = value if isinstance(value, (list, tuple)) else [p for p in str(value or "").split(",") if p.strip()]
        try:
            values = tuple(float(item) for item in items)
        except (TypeError, ValueError):
            raise _bad(key, value, "comma-separated numbers such as '1.0,0.5,1.0'") from None
        if any(v != v or v < 0 for v in values):
            raise _bad(key, value, "non-negative numbers")
        return values

    return rule


def gpu_ids() -> Rule:
    """gpu_id normalised to '' (CPU) or '0,1'."""
    def rule(key: str, value: Any) -> str:
        try:
            return ",".join(map(str, gpu_list(value)))
        except ValueError:
            raise _bad(key, value, "'' for CPU or comma-separated GPU numbers such as '0' or '0,1'") from None

    return rule


def string_list() -> Rule:
    def rule(key: str, value: Any) -> tuple:
        if value is None or value == "":
            return ()
        if isinstance(value, str):
            return (value,)
        if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
            return tuple(str(v) for v in value)
        raise _bad(key, value, "a list of strings")

    return rule


def canonical_choice(*options: str) -> Rule:
    """One of `options`, matched case-insensitively and returned as spelled there (e.g. 'adamw' → 'AdamW')."""
    by_lower = {option.lower(): option for option in options}

    def rule(key: str, value: Any) -> str:
        found = by_lower.get(str(value).strip().lower())
        if found is None:
            raise _bad(key, value, "one of " + ", ".join(options))
        return found

    return rule


def layer_freeze() -> Rule:
    """'' / None / 0 = nothing frozen; an integer N = the first N layers; '0,2,5' or a list = those layers."""
    def rule(key: str, value: Any):
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, bool):
            raise _bad(key, value, "'' , a layer count, or comma-separated layer indices")
        items = value if isinstance(value, (list, tuple)) else [p for p in str(value).split(",") if p.strip()]
        try:
            numbers = [int(str(item).strip()) for item in items]
        except ValueError:
            raise _bad(key, value, "'' , a layer count, or comma-separated layer indices") from None
        if any(n < 0 for n in numbers):
            raise _bad(key, value, "non-negative layer numbers")
        if isinstance(value, (list, tuple)) or "," in str(value):
            return numbers
        return numbers[0] or None

    return rule


def eval_thresholds() -> Rule:
    """evaluate_config: a mapping with iou_thr and conf_thr in [0, 1] (ymir's defaults 0.5 and 0.005)."""
    def rule(key: str, value: Any) -> dict:
        given = value if isinstance(value, dict) else ({} if value in (None, "") else None)
        if given is None:
            raise _bad(key, value, "a mapping such as {iou_thr: 0.5, conf_thr: 0.005}")
        iou = given.get("iou_thr", given.get("iou_thrs_interval", 0.5))
        return {"iou_thr": number(0.0, 1.0)(f"{key}.iou_thr", str(iou).split(":")[0]),
                "conf_thr": number(0.0, 1.0)(f"{key}.conf_thr", given.get("conf_thr", 0.005))}

    return rule


def choice_or_off(*options: str) -> Rule:
    """One of `options` or 'off'; YAML reads a bare off (no, false) as False and on as True: False is 'off', True
    the first option."""
    pick = choice(*options, "off")

    def rule(key: str, value: Any) -> str:
        text = str(value).strip().lower()
        if text in ("false", "no"):
            return "off"
        return options[0] if text in ("true", "yes", "on") else pick(key, value)

    return rule


def object_type() -> Rule:
    """The platform's object_type (2 detection, 3 semantic segmentation, 4 instance segmentation, 50
    multi-modal; an int or text); None when absent."""
    def rule(key: str, value: Any) -> int | None:
        if value is None or value == "":
            return None
        return integer(0, 1000)(key, value)

    return rule


# Rules by key; the template's value of a key is its default. Keys of one task only are harmless here.
RULES: dict[str, Rule] = {
    "img_size": integer(32, 8192),
    "mining_algorithm": algorithm(),
    "class_distribution_scores": float_list(),
    "conf_thres": number(0.0, 1.0),
    "iou_thres": number(0.0, 1.0),
    "max_det": integer(1, 100000),
    "entropy_aggregation": choice("sum", "mean", "max", "topk_mean"),
    "entropy_conf_thres": number(0.0, 1.0),
    "entropy_topk": integer(1, 100000),
    "errors_conf_thres": number(0.0, 1.0),
    "errors_per_cost": boolean(),
    "errors_prior": boolean(),
    "batch_size_per_gpu": integer(0, 4096),  # 0: auto, per device (executor.engine.device.batch_size); not for training
    "num_workers_per_gpu": integer(0, 256),
    "pin_memory": boolean(),
    "gpu_decode": auto_or_boolean(),
    "cpu_threads": integer(0, 1024),
    "cpu_processes": integer(1, 256),
    "shard_size": integer(0, 10**7),  # 0: auto (executor.pipeline.shards.auto_shard_size)
    "seed": integer(0, 2**32 - 1),
    "backend": choice("auto", "torch", "onnx"),
    "augment": boolean(),  # infer's test-time augmentation (a PyTorch detection model only: pipeline/plan.py)
    "selection": choice("score", "diverse"),
    "dedup_similarity": number(0.01, 1.0),
    "diverse_pool": integer(0, 10**7),
    "diversity_weight": number(0.0, 1.0),
    "class_balance": boolean(),
    "report": boolean(),
    "report_top_n": integer(1, 1000),
    "shm_size": text(),
    "gpu_id": gpu_ids(),
    "task_id": text(),
    "class_names": string_list(),
    "model_params_path": string_list(),
    "pretrained_model_params": string_list(),
    # training
    "export_format": text(),
    "model": text(),
    "epochs": integer(1, 100000),
    "optimizer": canonical_choice("auto", "SGD", "MuSGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSProp"),
    "lr0": number(0.0, 1.0),  # Ultralytics' own bound
    "lrf": number(0.0, 1.0),
    "cos_lr": boolean(),
    "patience": integer(0, 100000),
    "freeze": layer_freeze(),
    "freeze_bn_stats": boolean(),
    "fit_error_model": boolean(),
    "label_audit": choice_or_off("val", "all"),
    "save_period": integer(-1, 100000),
    "save_best_only": boolean(),
    "amp": boolean(),
    "opset": integer(0, 100),
    "export_int8": boolean(),
    "args_options": text(),
    "evaluate_config": eval_thresholds(),
    "object_type": object_type(),
}
