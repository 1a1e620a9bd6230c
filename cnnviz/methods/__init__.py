"""Attribution methods; importing this package fills the registry (one module per method family)."""

from . import cam, cam_variants, composite, gradient, score_cam  # noqa: F401  (registration side effect)
from .registry import (
    Method,
    Param,
    Params,
    Result,
    get_method,
    list_methods,
    list_rules,
    method_ids,
    preferred_ids,
    register_method,
    resolve_methods,
    resolve_params,
)

__all__ = [
    "Method",
    "Param",
    "Params",
    "Result",
    "get_method",
    "list_methods",
    "list_rules",
    "method_ids",
    "preferred_ids",
    "register_method",
    "resolve_methods",
    "resolve_params",
]
