"""Pieces of the Gradio page that every tab uses: the checked image input, the model picker, the
progress tracker, the concurrency group of model events, and the wrapper that runs a handler
within the deployment's limits (`user_errors`). `cnnviz.app.ui` builds the page from them, and
`cnnviz.app.ui_evaluate` its Evaluate action and Sanity check tab.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, Literal

import gradio as gr
from PIL import Image

from cnnviz.app import guard, limits
from cnnviz.app import settings as core

log = logging.getLogger("cnnviz.app.ui")  # the handlers' log, as before the split

IMAGE_SOURCES: list[Literal["upload", "webcam", "clipboard"]] = ["upload", "clipboard", "webcam"]
UPLOAD_ONLY = "An image uploaded to this server (gradio_client's handle_file uploads a local file)."
PROGRESS = gr.Progress()  # Gradio swaps in a tracker per event; a shared default is safe
MODEL_EVENTS = "cnnviz-models"  # one concurrency group for every event that runs a model


def image_input(gate: guard.FileGate, **kwargs: Any) -> gr.Image:
    """`gr.Image` whose payload is checked by `gate` and decoded by `cnnviz.app.guard.read_image`.

    Gradio's own preprocessing would open any path that a reference without ``meta`` names, and
    convert 16-bit pictures by clipping them; here it is replaced on the instance (a subclass would
    make Gradio's component metaclass write a ``.pyi`` stub next to this module).
    """
    component = gr.Image(type="pil", sources=IMAGE_SOURCES, **kwargs)

    def checked(payload: Any) -> Image.Image | None:
        if payload is None:
            return None
        try:
            return guard.read_image(gate.resolve(payload))
        except guard.Refused as err:
            raise gr.Error(str(err), title="Image refused") from None

    component.preprocess = functools.update_wrapper(checked, component.preprocess)  # type: ignore[method-assign]
    schema = {**component.api_info(), "description": UPLOAD_ONLY}
    component.api_info = functools.partial(dict, schema)  # type: ignore[method-assign]
    return component


def user_errors(fn: Callable) -> Callable:
    """Run a handler within the deployment's limits and turn every failure into a plain sentence.

    `ValueError`s (the library's messages, meant for people) are shown with server paths and
    memory addresses taken out (`guard.plain`); anything unexpected is logged in full and shown as
    one sentence (`guard.FAILED` or `guard.OUT_OF_MEMORY`). When `fn` is a method of `App`, the
    request runs under the app's time budget (`limits.time_budget`) and, if it fails, the models
    it loaded leave the cache again and its traceback's frames are cleared, so that no half-used
    model outlives the failure.
    """
    owner = getattr(fn, "__self__", None)
    pool = getattr(owner, "pool", None)
    seconds = getattr(getattr(owner, "settings", None), "time_limit_s", None)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if pool is not None:
            pool.begin()
        try:
            with limits.time_budget(seconds):
                return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as err:
            if isinstance(err, ValueError | limits.TooSlow):
                log.info("cnnviz app: %s refused: %s", fn.__name__, err)
                message = guard.plain(str(err))
            else:
                log.exception("cnnviz app: %s failed", fn.__name__)
                message = guard.failure_message(err)
            if pool is not None:
                pool.forget_new()
            limits.release(err)
            raise gr.Error(message) from None

    return wrapper


def model_dropdown(
    settings: core.AppSettings, label: str, multiselect: bool = False, value: Any = None
) -> gr.Dropdown:
    """The model picker: the curated models by family, and any timm name where the deployment allows it."""
    any_ok = settings.allow_any_model
    info = "Curated models by family" + ("; or type any timm model name" if any_ok else "")
    return gr.Dropdown(
        core.model_choices(),
        value=value,
        label=label,
        info=info,
        multiselect=multiselect,
        max_choices=settings.max_compare if multiselect else None,
        allow_custom_value=any_ok,
        filterable=True,
    )
