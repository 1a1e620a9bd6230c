"""The app's models and how it names them: the pool that loads them (one lock per model, a size
check before building) and the short texts every caption uses. Settings, results and the UI all
read these; nothing here imports another app module, so data flows one way.
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import TYPE_CHECKING

from cnnviz import zoo
from cnnviz.zoo import budget

if TYPE_CHECKING:
    from cnnviz.zoo import Model


class ModelPool:
    """Loads models on first use through the zoo's bounded cache, and hands out one lock per model.

    Nothing loads at start-up, so the page opens at once even when weights must be downloaded.
    A model's size is checked on the meta device before it is built (`max_mb`, see
    `cnnviz.zoo.budget`). Two visitors asking for the same model wait for one load (the zoo's cache
    shares builds); explaining holds the model's lock, because intermediate-layer hooks live on the
    module while a call runs. Locks live as long as their model, so a name that fails to load
    leaves nothing behind. Models a request loaded are remembered for that thread until the next
    `begin`, so that a failed request can take them out of the cache again (`forget_new`).
    """

    def __init__(self, weights: str, max_mb: float | None = None):
        self.weights = weights
        self.max_mb = max_mb
        self._locks: weakref.WeakKeyDictionary[Model, threading.Lock] = weakref.WeakKeyDictionary()
        self._known: weakref.WeakSet[Model] = weakref.WeakSet()
        self._guard = threading.Lock()
        self._request = threading.local()

    def lock(self, model: Model) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(model, threading.Lock())

    def get(self, name: str) -> tuple[Model, threading.Lock]:
        if self.max_mb:
            budget.check_size(zoo.resolve_name(name)[0], self.max_mb)
        model = zoo.load_model(name, weights=self.weights)
        with self._guard:
            if model not in self._known:
                self._known.add(model)
                self._new_models().append(model)
        return model, self.lock(model)

    def begin(self) -> None:
        """A request starts on this thread: forget which models the previous one loaded."""
        self._request.new = []

    def forget_new(self) -> int:
        """Take the models this thread's request loaded out of the cache; how many there were."""
        new, self._request.new = self._new_models(), []
        for model in new:
            zoo.evict(model)
            with self._guard:
                self._locks.pop(model, None)
                self._known.discard(model)
        return len(new)

    def _new_models(self) -> list[Model]:
        if not hasattr(self._request, "new"):
            self._request.new = []
        return self._request.new


def short_name(name: str) -> str:
    """The first synonym of an ImageNet description ("tench, Tinca tinca" -> "tench")."""
    return name.split(",")[0].strip() or name


def weights_note(model: Model) -> str:
    """The end of every caption: where the model's weights came from (`Model.weights_origin`)."""
    return f" · {model.weights_origin}"


def weights_tag(model: Model) -> str:
    """Two words for tight captions (Compare's grid cells): random, Hub or packaged weights."""
    return {"hub": "Hub weights", "packaged": "packaged weights"}.get(model.weights_source, "random weights")


def percent(probability: float) -> str:
    """A probability as the app writes it everywhere: whole percent, rounded half up.

    The predictions panel (Gradio's Label) rounds the same way, so one class never reads "0%"
    there and "0.1%" in a grid caption.
    """
    return f"{math.floor(float(probability) * 100 + 0.5):d}%"
