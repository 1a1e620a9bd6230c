"""Attribution methods; importing this package fills the registry (one module per method family)."""

# registration side effect; smoothgrad last: it smooths the methods registered before it
from . import cam, cam_variants, composite, gradient, integrated, score_cam  # noqa: F401  # isort: skip
from . import smoothgrad  # noqa: F401  # isort: skip
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
