"""Judge a map: faithfulness, localization and sanity checks, registered like the methods.

>>> import cnnviz, cnnviz.evaluate
>>> [m.id for m in cnnviz.evaluate.list_metrics()]  # doctest: +NORMALIZE_WHITESPACE
['deletion', 'insertion', 'average_drop', 'increase_in_confidence', 'pointing_game',
 'energy_in_box', 'randomization']

`score(model, x, explanation, metrics, boxes=None, **params)` gives per-image numbers;
`evaluate` adds the curves, chance levels and notes; `deletion_insertion`,
`confidence_change`, `pointing_game`, `energy_in_box` and `model_randomization` work on raw
maps and models directly.
"""

from . import metrics as _metrics  # noqa: F401  (fills the registry)
from .localize import chance, energy_in_box, pointing_game, region_masks
from .perturb import (
    ConfidenceChange,
    Curves,
    canvas,
    confidence_change,
    deletion_insertion,
    gaussian_blur,
    schedule,
)
from .registry import Metric, get_metric, list_metrics, metric_ids, register_metric, resolve_metrics
from .sanity import SanityCheck, Step, cascade, model_randomization, spearman
from .score import RANDOM_WEIGHTS_NOTE, Evaluation, evaluate, score

__all__ = [
    "RANDOM_WEIGHTS_NOTE",
    "ConfidenceChange",
    "Curves",
    "Evaluation",
    "Metric",
    "SanityCheck",
    "Step",
    "canvas",
    "cascade",
    "chance",
    "confidence_change",
    "deletion_insertion",
    "energy_in_box",
    "evaluate",
    "gaussian_blur",
    "get_metric",
    "list_metrics",
    "metric_ids",
    "model_randomization",
    "pointing_game",
    "region_masks",
    "register_metric",
    "resolve_metrics",
    "schedule",
    "score",
    "spearman",
]
