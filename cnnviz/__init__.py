"""cnnviz: see where a CNN (any timm classifier) looks.

>>> import cnnviz, timm, torch
>>> model = timm.create_model("resnet18", pretrained=False)
>>> ex = cnnviz.explain(model, torch.randn(1, 3, 224, 224), methods=["cam", "grad_cam"])
>>> ex["cam"].raw.shape
torch.Size([1, 7, 7])
"""

from .engine import AnatomyError, inspect
from .methods import Method, get_method, list_methods
from .methods.explain import explain
from .types import Anatomy, Attribution, Explanation
from .zoo import load_model

__version__ = "0.1.0"

__all__ = [
    "Anatomy",
    "AnatomyError",
    "Attribution",
    "Explanation",
    "Method",
    "__version__",
    "explain",
    "get_method",
    "inspect",
    "list_methods",
    "load_model",
]
