"""Mining: one finite score per image, higher = label first (pure: nothing here imports executor/).

Each algorithm's module holds its math and its scorer; `SCORERS` is the one list of algorithm names.
A scorer is built from keyword parameters named after the template keys that set them (`Scorer.params`),
gets batches (mining.base.Batch) and asks the detector (mining.base.Detector) for what it needs.
Adding an algorithm: one module with a Scorer subclass, one entry here, one test file (docs/mining.md).
"""
from mining.aldd import AlddScorer
from mining.base import Scorer
from mining.cald import CaldScorer
from mining.entropy import EntropyScorer
from mining.errors import ErrorsScorer
from mining.random_score import RandomScorer

SCORERS: dict[str, type[Scorer]] = {"random": RandomScorer, "entropy": EntropyScorer, "errors": ErrorsScorer,
                                    "aldd": AlddScorer, "cald": CaldScorer}


def get_scorer(name: str, error_model=None, **params) -> Scorer:
    """The scorer `name` with its parameters (and, for a scorer that reads one, the weights' error model: None for
    the prior); an unknown name or a missing/extra parameter is a ValueError."""
    if name not in SCORERS:
        raise ValueError(f"unknown mining algorithm {name!r}; expected one of {', '.join(SCORERS)}")
    cls = SCORERS[name]
    if set(params) != set(cls.params):
        raise ValueError(f"{name} takes the parameters {', '.join(cls.params) or '(none)'}, got "
                         f"{', '.join(sorted(params)) or '(none)'}")
    return cls(**params, error_model=error_model) if reads_error_model(name) else cls(**params)


def reads_error_model(name: str) -> bool:
    """Whether algorithm `name` reads the weights' error model (mining/errors.py); False for unknown names."""
    return getattr(SCORERS.get(name), "uses_error_model", False)


def scorer_params(name: str, settings) -> dict:
    """The parameters of scorer `name` taken from a mapping of template keys (e.g. the mining Settings)."""
    return {key: settings[key] for key in SCORERS[name].params}
