"""Building timm modules with real or random weights, honouring the Hugging Face Hub environment.

Real weights go through timm's own pretrained loading (``timm.create_model(name, pretrained=True)``),
which downloads over ``huggingface_hub`` and prefers safetensors. ``huggingface_hub`` reads
``HF_HUB_OFFLINE`` and the cache location once, at import; cnnviz reads them at each call instead, so
that a setting made after import (a notebook cell, a test) is honoured: the cache directory is passed
to timm explicitly and the offline flag is set on ``huggingface_hub.constants`` for the duration of
the load, under a lock.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled
from timm.models import get_pretrained_cfg, is_model_pretrained
from torch import nn

from ..common import is_true, name_seed

_log = logging.getLogger(__name__)
_HUB_LOCK = threading.Lock()
_RNG_LOCK = threading.Lock()
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.safetensors", "pytorch_model.bin")
_HINT = "set CNNVIZ_WEIGHTS=auto or random to use random weights"


class WeightsUnavailableError(RuntimeError):
    """Trained weights cannot be had (offline without a cache, no network, no such weights, a
    missing or altered weights package).

    The message is one line: the model, the reason, and what to do.

    Attributes:
        name: the timm model name.
        reason: why, without the hint (e.g. ``offline and not in the Hugging Face cache ...``).
        hint: what to do (by default: how to use random weights instead).
    """

    def __init__(self, name: str, reason: str, hint: str = _HINT, kind: str = "pretrained"):
        self.name, self.reason, self.hint = name, reason, hint
        super().__init__(f"cannot load {kind} weights for {name}: {reason}; {hint}")


@dataclass(frozen=True)
class HubSettings:
    """Where the Hub cache is and whether the Hub may be contacted, as the environment says now.

    Attributes:
        cache_dir: the Hub cache (``HF_HUB_CACHE``, else ``HUGGINGFACE_HUB_CACHE``, else
            ``$HF_HOME/hub``, else huggingface_hub's default).
        offline: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is true.
    """

    cache_dir: str
    offline: bool

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HubSettings:
        env = os.environ if env is None else env
        if env.get("HF_HUB_CACHE"):
            cache = env["HF_HUB_CACHE"]
        elif env.get("HUGGINGFACE_HUB_CACHE"):
            cache = env["HUGGINGFACE_HUB_CACHE"]
        elif env.get("HF_HOME"):
            cache = os.path.join(env["HF_HOME"], "hub")
        else:
            cache = hf_constants.HF_HUB_CACHE
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            if env.get(name):
                offline = is_true(env[name])
                break
        else:
            offline = bool(hf_constants.HF_HUB_OFFLINE)
        return cls(cache_dir=os.path.expandvars(os.path.expanduser(cache)), offline=offline)


def weights_in_cache(name: str, settings: HubSettings) -> bool:
    """Whether the files timm would read for `name`'s weights are already on disk."""
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return False
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        files: tuple[str, ...] = _WEIGHT_FILES
        if cfg.hf_hub_filename:
            stem = cfg.hf_hub_filename.rsplit(".", 1)[0]
            files = (cfg.hf_hub_filename, f"{stem}.safetensors")
        return any(
            isinstance(
                try_to_load_from_cache(repo, f, cache_dir=settings.cache_dir, revision=revision or None), str
            )
            for f in files
        )
    if cfg.url:  # a few legacy weights live at a plain URL, cached by torch.hub
        return (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(str(cfg.url)).path).name).is_file()
    return False


@contextmanager
def _hub_mode(offline: bool) -> Iterator[None]:
    """huggingface_hub's offline flag set as the environment says now, for one load."""
    with _HUB_LOCK:
        previous = hf_constants.HF_HUB_OFFLINE
        hf_constants.HF_HUB_OFFLINE = offline
        try:
            yield
        finally:
            hf_constants.HF_HUB_OFFLINE = previous


def hub_repo(name: str) -> str:
    """The Hub repository timm reads `name`'s weights from (``timm/resnet50.a1_in1k``), or ``""``."""
    cfg = get_pretrained_cfg(name)
    return (cfg.hf_hub_id or "") if cfg is not None else ""


def hub_has_weights(name: str, settings: HubSettings | None = None, timeout: float = 3.0) -> bool:
    """Whether `name`'s pretrained weights can be had from the Hub now, without downloading them:
    they are in the cache, or (not offline) the Hub answers a metadata request for the weights
    file within `timeout` seconds.
    """
    settings = settings or HubSettings.from_env()
    if not is_model_pretrained(name):
        return False
    if weights_in_cache(name, settings):
        return True
    cfg = get_pretrained_cfg(name)
    if settings.offline or cfg is None or not cfg.hf_hub_id:
        return False
    repo, _, revision = cfg.hf_hub_id.partition("@")
    url = hf_hub_url(repo, cfg.hf_hub_filename or _WEIGHT_FILES[0], revision=revision or None)
    try:
        get_hf_file_metadata(url, timeout=timeout)
    except Exception as exc:
        _log.info("the Hub does not answer for %s: %s: %s", name, type(exc).__name__, exc)
        return False
    return True


def pretrained_module(name: str, settings: HubSettings | None = None) -> nn.Module:
    """`name` with its pretrained weights, via timm and the Hub.

    Raises:
        WeightsUnavailableError: one line saying why the weights cannot be had.
    """
    settings = settings or HubSettings.from_env()
    if not is_model_pretrained(name):
        raise WeightsUnavailableError(name, "timm has no pretrained weights for it")
    if settings.offline and not weights_in_cache(name, settings):
        raise WeightsUnavailableError(
            name, f"offline and not in the Hugging Face cache {settings.cache_dir} (HF_HUB_OFFLINE=1)"
        )
    try:
        with _hub_mode(settings.offline):
            return timm.create_model(name, pretrained=True, cache_dir=settings.cache_dir)
    except (HfHubHTTPError, EntryNotFoundError, OfflineModeIsEnabled, OSError) as exc:
        reason = " ".join(str(exc).split()) or "no details"
        raise WeightsUnavailableError(name, f"{type(exc).__name__}: {reason[:300]}") from exc


def random_module(name: str) -> nn.Module:
    """`name` with random weights, seeded by the name: the same name gives the same weights.

    timm initialises from torch's global CPU generator; it is seeded here and restored afterwards,
    so the caller's random stream is untouched (CUDA generators are not involved: modules are built
    on the CPU). Threads drawing from the global generator at the same moment would break the
    reproducibility, not the model.
    """
    with _RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(name_seed(name))
        return timm.create_model(name, pretrained=False)
