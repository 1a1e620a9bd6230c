"""Sanity check by cascading model randomization (Adebayo et al., "Sanity Checks for Saliency
Maps", NeurIPS 2018).

A copy of the trained model has its weights randomized from the classifier down, one stage at a
time (the anatomy's stages give the steps); after each step every method explains the same
images for the same classes, and its map is compared with the trained model's map. A map that
stays the same while the model underneath is destroyed does not show what the model learned
(Adebayo et al. found this for guided backprop: it shows edges). The user's model is never
touched: everything happens on a deep copy.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import queue
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.overrides import _get_current_function_mode_stack

from ..engine.anatomy import Inspection, adopt, inspection, refold
from ..methods import resolve_methods
from ..methods.explain import explain
from ..types import Explanation
from . import threads
from .perturb import Progress, check_input, input_heatmaps


@dataclass(frozen=True)
class Step:
    """One step of the cascade: what it randomizes (cumulatively with the steps before it)."""

    label: str
    params: tuple[str, ...]


@dataclass(frozen=True)
class SanityCheck:
    """The result of `model_randomization`.

    Attributes:
        steps: the cascade, top (classifier) first; step i randomizes steps[: i + 1].
        methods: the method ids compared.
        maps: method -> list of raw maps, [trained, after step 1, ...], each (B, ...).
        spearman_abs: method -> (S, B) Spearman rank correlation of the absolute maps
            (gradient images: the channel max of |grad|) between trained and randomized.
        spearman_signed: method -> (S, B) the same on the signed maps.
        ssim: method -> (S, B) SSIM of the [0, 1]-normalized absolute maps at the input's size.
        targets: (B,) the classes explained (the trained model's, kept for every step).
        seconds: wall time of (copying, all steps).
        notes: facts to show with the numbers.
    """

    steps: tuple[Step, ...]
    methods: tuple[str, ...]
    maps: dict[str, list[torch.Tensor]]
    spearman_abs: dict[str, torch.Tensor]
    spearman_signed: dict[str, torch.Tensor]
    ssim: dict[str, torch.Tensor]
    targets: torch.Tensor
    seconds: tuple[float, float]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(s.label for s in self.steps)


def cascade(model: nn.Module, stages: Sequence[str] | None = None) -> tuple[Step, ...]:
    """The randomization steps of a model: classifier, then each stage from the deepest down, then the stem.

    Parameters between two stages (in registration order) go with the stage before them, so
    the deepest stage also takes the layers between it and the classifier (EfficientNet's
    ``conv_head``, a ConvNeXt head's norm); the stem is what comes before the first stage.
    """
    names = [n for n, _ in model.named_parameters()]
    if stages is None:
        stages = inspection(model).anatomy.stages
    classifier = _classifier_params(model)
    starts: list[tuple[int, str]] = []
    for stage in stages:
        first = next((i for i, n in enumerate(names) if n.startswith(stage + ".")), None)
        if first is not None and all(first != s for s, _ in starts):
            starts.append((first, stage))
    starts.sort()
    steps: list[Step] = []
    if classifier:
        steps.append(Step("classifier", tuple(n for n in names if n in classifier)))
    bounds = [s for s, _ in starts] + [len(names)]
    for (begin, stage), end in reversed(list(zip(starts, bounds[1:], strict=True))):
        group = tuple(n for n in names[begin:end] if n not in classifier)
        depth = (
            stage.count(".") + 1
        )  # name the modules beside the stage at its own depth: blocks.5, conv_head
        extra = sorted(
            {
                ".".join(n.split(".")[:depth]) if n.count(".") >= depth else n.rsplit(".", 1)[0]
                for n in group
                if not n.startswith(stage + ".")
            }
        )
        label = stage + (f" (+ {', '.join(extra)})" if extra else "")
        if group:
            steps.append(Step(label, group))
    stem = tuple(n for n in names[: starts[0][0] if starts else len(names)] if n not in classifier)
    if stem:
        steps.append(Step("stem", stem))
    if not steps:
        raise ValueError("the model has no parameters to randomize")
    return tuple(steps)


def _classifier_params(model: nn.Module) -> set[str]:
    head = getattr(model, "get_classifier", lambda: None)()
    heads = head if isinstance(head, tuple | list) else (head,)
    ids = {id(p) for h in heads if isinstance(h, nn.Module) for p in h.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@torch.no_grad()
def randomize_(model: nn.Module, names: Sequence[str], generator: torch.Generator) -> None:
    """Redraw the named parameters in place: Gaussian with each tensor's own mean and std.

    Adebayo et al. redraw from the layer's initializer; keeping each tensor's scale does the
    same job (the learned values are gone) while activations stay in range, so every method
    still has a defined map at every depth. Buffers (BatchNorm statistics) are kept.
    """
    _apply_draws(model, _draw(model, names, generator))


@torch.no_grad()
def _draw(model: nn.Module, names: Sequence[str], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The new values of the named parameters (see `randomize_`), drawn without writing them:
    the sanity check draws the next step's while the present step's explain runs."""
    params = dict(model.named_parameters())
    drawn = {}
    for name in names:
        p = params[name]
        mean = float(p.mean()) if p.numel() else 0.0
        std = float(p.std()) if p.numel() > 1 else 0.0
        std = std if std > 0 else max(abs(mean), 1e-2)
        noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
        drawn[name] = noise.mul_(std).add_(mean).to(p.dtype)
    return drawn


@torch.no_grad()
def _apply_draws(model: nn.Module, drawn: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, value in drawn.items():
        params[name].copy_(value)


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks along the last dim of (N, D) values, ties sharing their average rank (as
    scipy.stats.rankdata); float64."""
    return _ranks(values, 0.0)


def _ranks(values: torch.Tensor, shift: float) -> torch.Tensor:
    """(N, D) float64 average ranks (1-based) minus `shift`.

    The order inside a tie does not matter (its members all get its average rank), so any sort
    will do: finite float32 rows go through `_key_sort`, others through numpy's argsort. No pass
    more than the sort needs: the ranks are the inverse permutation of one precomputed range, then
    the few tie groups get their mean rank."""
    if values.shape[-1] == 0:
        return torch.empty(values.shape, dtype=torch.float64)
    vals = values.detach().cpu()
    if vals.dtype in (torch.float16, torch.bfloat16):
        vals = vals.float()  # exact: every narrower float is a float32
    v = vals.numpy()
    n, d = v.shape
    if v.dtype == np.float32 and d < 1 << 32 and _LITTLE_ENDIAN and bool(np.isfinite(v).all()):
        order, ranked = _key_sort(v)
    else:
        order = np.argsort(v, axis=-1)
        ranked = np.take_along_axis(v, order, axis=-1)
    out = np.empty(v.shape, dtype=np.float64)
    plain = _range(d, shift)
    for i in range(n):
        out[i, order[i]] = plain
        # sorted positions equal to the one before: the ties (a few dozen in a gradient image)
        dup = np.flatnonzero(ranked[i, 1:] == ranked[i, :-1]) + 1
        if dup.size == 0:
            continue
        fresh = np.diff(dup, prepend=-2) != 1  # a new tie group starts at this position
        first = dup[fresh] - 1
        last = dup[np.append(fresh[1:], True)]
        group = np.cumsum(fresh) - 1
        # a tie group's members share the mean of the ranks it spans, first + 1 .. last + 1
        mean = (first + last) / 2 + 1 - shift
        out[i, order[i][first]] = mean
        out[i, order[i][dup]] = mean[group]
    return torch.from_numpy(out)


_LITTLE_ENDIAN = sys.byteorder == "little"
_SCRATCH_BYTES = 2 << 20
"""Largest key array a thread keeps between calls (one 224 x 224 gradient image takes 1.2 MB); each
of an app's worker threads may keep one."""
_scratch = threading.local()


def _key_sort(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, sorted keys) of each row of finite (N, D) float32 values, sorted as 64-bit keys.

    A key holds the value's bits made order-preserving as an unsigned integer (a negative's bits
    all flipped, a positive's sign bit set; -0.0 made +0.0 first, so equal values have equal
    keys) in its high half and the element's index in its low half. numpy sorts such integers
    2 to 3x faster than it argsorts the floats. The keys live in a per-thread scratch array when
    small: a fresh large array costs page faults, as much again as the sort on a busy machine."""
    n, d = v.shape
    if n * d * 8 <= _SCRATCH_BYTES:
        keys = getattr(_scratch, "keys", None)
        if keys is None or keys.shape != (n, d, 2):
            keys = _scratch.keys = np.empty((n, d, 2), dtype=np.uint32)
    else:
        keys = np.empty((n, d, 2), dtype=np.uint32)
    high = keys[..., 1]
    np.add(v, np.float32(0), out=high.view(np.float32))  # -0.0 + 0.0 = +0.0
    flip = keys[..., 0].view(np.int32)  # the low halves as scratch until they get the indices
    np.right_shift(high.view(np.int32), 31, out=flip)  # -1 for a negative, else 0
    np.bitwise_or(flip, np.int32(-(1 << 31)), out=flip)
    np.bitwise_xor(high, flip.view(np.uint32), out=high)
    keys[..., 0] = _indices(d)
    keys.view(np.uint64)[..., 0].sort(axis=-1)  # little-endian: the low half is the first word
    return keys[..., 0], keys[..., 1]


@functools.lru_cache(maxsize=4)
def _indices(d: int) -> np.ndarray:
    out = np.arange(d, dtype=np.uint32)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=8)
def _range(d: int, shift: float) -> np.ndarray:
    """1 - shift, ..., d - shift (float64, read-only): the ranks of a row without ties."""
    out = np.arange(1 - shift, d + 1 - shift, dtype=np.float64)
    out.flags.writeable = False
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) Spearman rank correlation of each row pair of (N, D) tensors; NaN for a constant row."""
    return ranked_correlation(centred_ranks(a), centred_ranks(b))


def centred_ranks(values: torch.Tensor) -> torch.Tensor:
    """(N, D) average ranks of each row minus their mean: one side of `ranked_correlation`.

    Average ranks always sum to D (D + 1) / 2 (a tie shares the ranks it spans), so the mean is
    (D + 1) / 2 whatever the values: subtracted with the ranks, not in a pass of its own."""
    return _ranks(values, (values.shape[-1] + 1) / 2)


def ranked_correlation(ra: torch.Tensor, rb: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of centred ranks (`centred_ranks`): Spearman's rho; NaN where constant."""
    den = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    return torch.where(den > 0, (ra * rb).sum(1) / den.clamp_min(1e-300), torch.nan).float()


SSIM_WINDOW = 7
"""Side of SSIM's square window (scikit-image's default for uniform windows)."""


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) mean SSIM (Wang, Bovik, Sheikh & Simoncelli, "Image Quality Assessment: From Error
    Visibility to Structural Similarity", IEEE TIP 2004) of (N, H, W) maps, each min-max
    normalized to [0, 1].

    The usual settings: a 7 x 7 uniform window, K1 = 0.01, K2 = 0.03, data range 1, unbiased
    (sample) variances, the mean taken over the windows that lie wholly inside the map; scikit-
    image's `structural_similarity(a, b, data_range=1)` with its defaults is the same measure
    (tested equal to float32 precision). Batched in float64 from summed-area tables, and without
    the GIL, so the sanity check scores one step while it explains the next. NaN
    for a map smaller than the window.
    """
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(
            f"ssim needs two (N, H, W) batches of one shape; got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    side = _SsimSide.of(a)
    return side.ssim(b) if side is not None else torch.full((a.shape[0],), torch.nan)


@dataclass(frozen=True)
class _SsimSide:
    """One side of SSIM: (N, H, W) maps made [0, 1] in float64, and their window means and mean
    squares; the sanity check makes the trained map's side once and compares every step with it."""

    unit: torch.Tensor
    mean: torch.Tensor
    mean_sq: torch.Tensor

    @classmethod
    def of(cls, maps: torch.Tensor) -> _SsimSide | None:
        """None for maps smaller than the window (no window lies inside: SSIM is NaN)."""
        if min(maps.shape[-2:]) < SSIM_WINDOW:
            return None
        unit = _unit(maps)
        stats = _window_means(torch.stack([unit, unit * unit], 1))
        return cls(unit, stats[:, 0], stats[:, 1])

    def ssim(self, other: torch.Tensor) -> torch.Tensor:
        x, y = self.unit, _unit(other)
        stats = _window_means(torch.stack([y, y * y, x * y], 1))
        ux, uxx = self.mean, self.mean_sq
        uy, uyy, uxy = stats.unbind(1)
        cov = SSIM_WINDOW**2 / (SSIM_WINDOW**2 - 1)  # sample, not population, (co)variances
        uxuy = ux * uy
        c1, c2 = 0.01**2, 0.03**2
        num = (2 * uxuy + c1) * (cov * 2 * (uxy - uxuy) + c2)
        sq = ux * ux + uy * uy
        den = (sq + c1) * (cov * (uxx + uyy - sq) + c2)
        return (num / den).mean((1, 2)).float()


def _unit(t: torch.Tensor) -> torch.Tensor:
    """(N, H, W) maps min-max normalized to [0, 1] each, float64."""
    t = t.detach().to(torch.float64).cpu()
    flat = t.flatten(1)
    lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    return (t - lo) / (hi - lo).clamp_min(1e-30)


def _window_means(t: torch.Tensor) -> torch.Tensor:
    """Means of (N, C, H, W) over every SSIM_WINDOW-square window inside the map, from running
    sums along each axis (a summed-area table: a few cheap passes, 6x faster than a box-filter
    convolution in float64, and as exact: the sums are of at most H values in [0, 1])."""
    k = SSIM_WINDOW

    def window_sums(c: torch.Tensor, dim: int) -> torch.Tensor:
        n = c.shape[dim]
        return torch.cat([c.narrow(dim, k - 1, 1), c.narrow(dim, k, n - k) - c.narrow(dim, 0, n - k)], dim)

    return window_sums(window_sums(t.cumsum(-1), -1).cumsum(-2), -2) / (k * k)


def _absolute(raw: torch.Tensor) -> torch.Tensor:
    return raw.abs().amax(1) if raw.dim() == 4 else raw.abs()


FOLD_READERS = frozenset({"cam"})
"""Methods that read the head's CAM fold (`Passes.fold`), the one weight-dependent part of an
inspection: only for them does the sanity check refold the randomized copy's head."""


@dataclass(frozen=True)
class Reference:
    """What every step compares with, computed once from the trained model's maps of a method."""

    ranks_abs: torch.Tensor
    ranks_signed: torch.Tensor
    heat: _SsimSide | None  # None: the map is smaller than SSIM's window

    @classmethod
    def of(cls, trained: torch.Tensor, hw: tuple[int, int]) -> Reference:
        absolute = _absolute(trained)
        heat = input_heatmaps(absolute, hw)
        return cls(
            centred_ranks(absolute.flatten(1)),
            centred_ranks(trained.flatten(1)),
            _SsimSide.of(heat),
        )


def compare(
    trained: torch.Tensor | Reference, other: torch.Tensor, hw: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """Spearman (absolute, signed) and SSIM between two batches of raw maps of one method;
    `trained` may be given as its `Reference`, computed once for every step."""
    ref = trained if isinstance(trained, Reference) else Reference.of(trained, hw)
    # A randomized network can overflow (redrawn weights under kept BatchNorm statistics), and
    # its map then holds inf or NaN: no rank order to compare, so NaN for that image.
    broken = ~torch.isfinite(other.flatten(1)).all(1)
    if bool(broken.any()):
        other = torch.where(torch.isfinite(other), other, torch.zeros((), dtype=other.dtype))
    absolute = _absolute(other)
    scores = {
        "spearman_abs": ranked_correlation(ref.ranks_abs, centred_ranks(absolute.flatten(1))),
        "spearman_signed": ranked_correlation(ref.ranks_signed, centred_ranks(other.flatten(1))),
        "ssim": (
            ref.heat.ssim(input_heatmaps(absolute, hw))
            if ref.heat is not None
            else torch.full((other.shape[0],), torch.nan)
        ),
    }
    return {k: v.masked_fill(broken, torch.nan) for k, v in scores.items()}


_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def private_copy(module: nn.Module) -> nn.Module:
    """A deep copy of `module` without its hooks.

    The user's hooks (and whatever they hold: a CAM extractor keeps the last forward's
    activations, tensors that cannot be deep-copied) must not run on, or be copied into, the
    model that the check randomizes.
    """
    memo: dict[int, object] = {}
    for m in module.modules():
        for attr in _HOOK_DICTS:
            hooks = m.__dict__.get(attr)
            if hooks is not None:
                memo[id(hooks)] = type(hooks)()
    try:
        return copy.deepcopy(module, memo)
    except RuntimeError as exc:
        raise ValueError(
            f"the model cannot be copied for the sanity check ({exc}); the check never changes the "
            "model itself, so it needs a copy"
        ) from exc


def model_randomization(
    model,
    x: torch.Tensor,
    methods: str | Sequence[str] | None = None,
    *,
    explanation: Explanation | None = None,
    steps: int | None = None,
    target=None,
    layer: str | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> SanityCheck:
    """Cascading model randomization (Adebayo et al. 2018) on a copy of `model`.

    Args:
        model: a trained timm classifier (nn.Module or `cnnviz.zoo.Model`); left untouched.
        x: (B, 3, H, W) preprocessed images.
        methods: method ids; default: those of `explanation`.
        explanation: the trained model's explanation of `x`, if already computed (saves one
            explain call); its targets and layer are kept for every step.
        steps: how many steps of the cascade to run (default: all, down to the stem).
        target, layer: as in `cnnviz.explain` when `explanation` is not given.
        seed: the randomization's seed (results are reproducible).
        progress: called with (steps done, steps) after each step.

    Cost: a deep copy of the model, then one `explain` of all methods per step; the copy's
    anatomy is not probed again (its structure is the model's), only its CAM head fold is redone.
    On the CPU two copies explain different steps at once, each on half the threads, while the
    calling thread scores the steps as they come (see `lane_plan`). Each step's network is that
    of one step after the other; its maps are too, bit for bit at the same thread count (the
    number of threads changes a float32 sum's rounding: on EfficientNet-Lite0 the Spearman
    values moved by at most 3e-4 between one and two threads).
    """
    module = getattr(model, "module", model)
    if not isinstance(module, nn.Module):
        raise ValueError(f"model must be an nn.Module or a cnnviz.zoo.Model; got {type(model).__name__}")
    check_input(x)
    if layer is None and explanation is None:
        layer = getattr(model, "default_layer", None)
    if explanation is None:
        if methods is None:
            raise ValueError("give the methods to check (or an explanation to start from)")
        explanation = explain(module, x, methods, target=target, layer=layer)
    chosen = (
        tuple(m.id for m in resolve_methods(methods))
        if methods is not None
        else tuple(explanation.attributions)
    )
    missing = [m for m in chosen if m not in explanation.attributions]
    if missing:
        raise ValueError(f"the explanation has no map for {missing}; it has {list(explanation.attributions)}")
    b = x.shape[0]
    if explanation.targets.shape[0] != b:
        raise ValueError(f"the explanation is of {explanation.targets.shape[0]} images, x has {b}")
    cascade_steps = cascade(module, explanation.anatomy.stages)
    if steps is None:
        steps = len(cascade_steps)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= len(cascade_steps):
        raise ValueError(
            f"steps must be an integer in [1, {len(cascade_steps)}] for this model "
            f"({', '.join(s.label for s in cascade_steps)}); got {steps!r}"
        )
    cascade_steps = cascade_steps[:steps]
    generator = torch.Generator().manual_seed(seed)
    return _cascade(module, x, chosen, explanation, cascade_steps, generator, progress)


LANE_BYTES_LIMIT = 1 << 30
"""The check explains on two copies of the model at once only when a second copy costs at most
this much memory (weights and buffers)."""


def lane_plan(module: nn.Module, x: torch.Tensor, steps: int) -> tuple[int, int]:
    """(copies of the model explaining at once, PyTorch threads each).

    On the CPU, an explain of one image on two threads is only 1.3x (EfficientNet-Lite0) to 1.5x
    (ResNet-50) faster than on one (measured): two copies explaining different steps on one
    thread each get more done, and leave room for the scoring. One copy on the GPU, for one step,
    on one core, for a model whose second copy would take over `LANE_BYTES_LIMIT`, or where this
    thread's thread count cannot be set apart from the others' (`threads.available`).
    """
    n = torch.get_num_threads()
    size = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    if x.device.type != "cpu" or steps < 2 or n < 2 or size > LANE_BYTES_LIMIT or not threads.available():
        return 1, n
    return 2, n // 2


@dataclass
class _Draws:
    """Each step's new weights, drawn in step order on the one generator whichever lane asks
    first (so the result does not depend on the lanes' timing), kept until every lane took them."""

    module: nn.Module
    steps: tuple[Step, ...]
    generator: torch.Generator
    lanes: int
    values: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    takes: dict[int, int] = field(default_factory=dict)
    drawn: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_ahead(self, upto: int) -> None:
        """Draw the steps before `upto` now, if not done yet (the caller's thread is free)."""
        while True:
            with self.lock:
                if self.drawn >= upto:
                    return
                self._next()

    def _next(self) -> None:
        self.values[self.drawn] = _draw(self.module, self.steps[self.drawn].params, self.generator)
        self.drawn += 1

    def take(self, i: int) -> dict[str, torch.Tensor]:
        with self.lock:
            while self.drawn <= i:
                self._next()
            value = self.values[i]
            self.takes[i] = self.takes.get(i, 0) + 1
            if self.takes[i] == self.lanes:
                del self.values[i]
            return value


def _cascade(
    module: nn.Module,
    x: torch.Tensor,
    chosen: tuple[str, ...],
    explanation: Explanation,
    cascade_steps: tuple[Step, ...],
    generator: torch.Generator,
    progress: Progress | None,
) -> SanityCheck:
    """Lanes (worker threads, each with its own copy of the model) take the steps in turn:
    apply the draws up to the step, explain; this thread scores each step as it comes. Every
    lane applies every draw in order, so a step's weights are those of one step after the other.

    The caller's PyTorch function modes (the app's time limit) are entered in the lanes too.
    """
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    n = len(cascade_steps)
    lanes, per_lane = lane_plan(module, x, n)
    known = inspection(module)  # cached: the trained model's own
    # The copy's structure is the trained model's: only the CAM head fold depends on the weights.
    # CAM is the one method that reads it; without CAM the copy keeps the trained inspection
    # (its stale fold is never read), with CAM the fold is recomputed from the head each step
    # (a few head evaluations, not a probe pass).
    reads_fold = not FOLD_READERS.isdisjoint(chosen)
    draws = _Draws(module, cascade_steps, generator, lanes)
    modes = _get_current_function_mode_stack()
    claimed = iter(range(n))
    claim_lock = threading.Lock()
    stop = threading.Event()
    done: queue.Queue = queue.Queue()
    copy_seconds: list[float] = []
    # The steps that do not fill a round of all lanes (the fifth of five on two lanes) run one
    # at a time on all the threads, once the other lanes are idle, not on one lane's share.
    solo_from = n - n % lanes if lanes > 1 else n
    idle = threading.Semaphore(0)

    def claim() -> int | None:
        with claim_lock:
            return None if stop.is_set() else next(claimed, None)

    def lane() -> None:
        try:
            with contextlib.ExitStack() as stack:
                for mode in modes:
                    stack.enter_context(mode)
                if lanes > 1:
                    stack.enter_context(threads.limit(per_lane))
                t0 = time.perf_counter()
                clone = private_copy(module)
                copy_seconds.append(time.perf_counter() - t0)
                applied = 0
                while (i := claim()) is not None:
                    while applied <= i:
                        _apply_draws(clone, draws.take(applied))
                        applied += 1
                    if not reads_fold:
                        adopt(clone, Inspection(anatomy=known.anatomy, fold=None))
                    else:
                        refolded = refold(clone, known)
                        if refolded is not None:
                            adopt(clone, refolded)
                    solo: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
                    if i >= solo_from:
                        for _ in range(lanes - 1):
                            idle.acquire()
                        solo = threads.limit(per_lane * lanes)
                    with solo:
                        ex = explain(clone, x, chosen, target=explanation.targets, layer=explanation.layer)
                    done.put((i, {m: ex[m].raw for m in chosen}))
                    if i >= solo_from:
                        for _ in range(lanes - 1):
                            idle.release()
        except BaseException as exc:  # handed to the caller's thread, which raises it
            stop.set()
            done.put((None, exc))
        finally:
            idle.release()  # this lane is idle for good (a solo step may be waiting for it)

    maps: dict[str, list[torch.Tensor]] = {m: [explanation[m].raw] for m in chosen}
    step_maps: dict[int, dict[str, torch.Tensor]] = {}
    step_scores: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
    t1 = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="cnnviz-sanity")
    try:
        for _ in range(lanes):
            pool.submit(lane)  # a lane never raises: its error comes back through `done`
        # this thread scores, on as few threads as a lane, while the lanes explain
        with threads.limit(per_lane) if lanes > 1 else contextlib.nullcontext():
            draws.take_ahead(min(lanes, n))  # the lanes' first draws, while they copy the model
            references = {m: Reference.of(maps[m][0], hw) for m in chosen}
            while len(step_maps) < n:
                draws.take_ahead(min(len(step_maps) + 2 * lanes, n))
                i, got = done.get()
                if i is None:
                    raise got
                step_maps[i] = got
                step_scores[i] = {m: compare(references[m], got[m], hw) for m in chosen}
                if progress is not None:
                    progress(len(step_maps), n)
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
    scores: dict[str, dict[str, list]] = {
        m: {"spearman_abs": [], "spearman_signed": [], "ssim": []} for m in chosen
    }
    for i in range(n):
        for m in chosen:
            maps[m].append(step_maps[i][m])
            for key, value in step_scores[i][m].items():
                scores[m][key].append(value)
    t_copy = max(copy_seconds, default=0.0)
    t_steps = time.perf_counter() - t1 - t_copy
    notes = [
        "each step redraws the parameters of one more block, from the classifier down "
        "(Gaussian with each tensor's trained mean and std; BatchNorm statistics kept)",
        "low correlation = the map depends on the learned weights (the check is passed)",
    ]
    overflowed, constant = set(), False
    for m in chosen:
        for i, raw in enumerate(maps[m][1:]):
            finite = torch.isfinite(raw.flatten(1)).all(1)
            if not bool(finite.all()):
                overflowed.add(f"{m} after {cascade_steps[i].label}")
            constant |= bool((torch.isnan(scores[m]["spearman_abs"][i]) & finite).any())
    if overflowed:
        notes.append(
            "NaN: the randomized network overflowed and its map held inf or NaN "
            f"({', '.join(sorted(overflowed))}); nothing to compare there"
        )
    if constant:
        notes.append("NaN: a map was constant (no rank order), e.g. Grad-CAM all zero after its ReLU")
    return SanityCheck(
        steps=cascade_steps,
        methods=chosen,
        maps=maps,
        spearman_abs={m: torch.stack(scores[m]["spearman_abs"]) for m in chosen},
        spearman_signed={m: torch.stack(scores[m]["spearman_signed"]) for m in chosen},
        ssim={m: torch.stack(scores[m]["ssim"]) for m in chosen},
        targets=explanation.targets,
        seconds=(t_copy, t_steps),
        notes=tuple(notes),
    )
