"""The engine: a model's anatomy and the shared forward/backward passes that methods read.

Nothing here knows a method by name; `cnnviz.methods` builds on it.
"""

from .anatomy import AnatomyError, Inspection, inspect, inspection
from .layout import FINAL, MapSpec, infer_spec, param_like, probe_input_size
from .passes import Passes

__all__ = [
    "FINAL",
    "AnatomyError",
    "Inspection",
    "MapSpec",
    "Passes",
    "infer_spec",
    "inspect",
    "inspection",
    "param_like",
    "probe_input_size",
]
