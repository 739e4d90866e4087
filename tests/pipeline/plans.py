"""Plans for tests that drive one step of the pipeline with settings of their own."""
from executor.pipeline.plan import Plan
from executor.protocol.settings import build_settings


def mining_plan(job, config, weights: str = "") -> Plan:
    """A mining plan over `job` without resolving a model: `weights` is the one it names ('' none)."""
    return Plan(("mining",), job, {"mining": build_settings("mining", config)}, {"mining": weights})
