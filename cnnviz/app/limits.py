"""Time and memory a request may take, so that one visitor cannot hold the server.

- **Memory**: a model's weights are measured on the meta device before it is built
  (`cnnviz.zoo.budget`); the app refuses models above ``CNNVIZ_MAX_MODEL_MB``.
- **Time**: `time_budget` stops a request's PyTorch work once it runs past
  ``CNNVIZ_TIME_LIMIT_S``: a `torch.overrides.TorchFunctionMode`, active only in the request's own
  thread, checks the clock before each PyTorch call and raises `TooSlow`. The request then ends
  like any failed one (hooks removed, model state restored, the model lock released), so the queue
  moves on. A single PyTorch call already running (one convolution, one backward pass) finishes
  first: the stop comes at the next call.
- **Recovery**: `forget_new_models` drops from the model cache whatever a failed request added,
  and `release` clears the frames of its traceback, so no half-used model outlives the failure.

Free of Gradio; `cnnviz.app.ui` applies these around its handlers.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
import traceback
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)


class TooSlow(RuntimeError):
    """A request ran past its time budget; the message is meant for the visitor."""


_STATE_SWITCHES = frozenset({torch._C._set_grad_enabled})
"""PyTorch calls that restore a thread's state on the way out of a context manager."""


class _Deadline(TorchFunctionMode):
    """Raise `TooSlow` at the first PyTorch call after `deadline` (a `time.monotonic` value)."""

    def __init__(self, deadline: float, seconds: float):
        super().__init__()
        self.deadline = deadline
        self.seconds = seconds

    def __torch_function__(self, func, types, args=(), kwargs=None):
        # Grad-mode switches pass through this mode too (`torch.no_grad().__exit__` calls
        # `torch._C._set_grad_enabled`): refusing one would leave autograd off in this thread for
        # good. Only calls that do work are stopped.
        if time.monotonic() > self.deadline and func not in _STATE_SWITCHES:
            raise TooSlow(
                f"This request took longer than {self.seconds:g} s and was stopped. "
                "Try a smaller model, fewer methods or fewer models."
            )
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def time_budget(seconds: float | None) -> Iterator[None]:
    """Stop this thread's PyTorch work `seconds` from now (None or 0: no limit)."""
    if not seconds:
        yield
        return
    with _Deadline(time.monotonic() + seconds, seconds):
        yield


def release(err: BaseException) -> None:
    """Drop the local variables held by a failed call's traceback (a model, its activations)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
