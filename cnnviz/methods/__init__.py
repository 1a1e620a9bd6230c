"""Attribution methods; importing this package fills the registry."""

from . import cam, composite, gradient  # noqa: F401  (registration side effect)
from .registry import Method, get_method, list_methods, method_ids, register_method, resolve_methods

__all__ = ["Method", "get_method", "list_methods", "method_ids", "register_method", "resolve_methods"]
