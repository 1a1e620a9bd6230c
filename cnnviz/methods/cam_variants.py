"""Grad-CAM's relatives: maps at a layer from the map and its gradient, nearly free.

Each reads what a Grad-CAM pass already has (the map ``A`` at the layer, canonical (B, C, h, w),
and ``G = d y^c / d A`` with the plain rule), so asking for all of them with Grad-CAM costs one
forward and one backward to the layer. Raw maps are (B, h, w) at the map's resolution, before
any normalization or upsampling (render's job).
"""

from __future__ import annotations

import torch

from ..engine.passes import Passes, Runner
from .cam import grad_cam_check, rectified
from .registry import Params, Result, register_method


def _weighted(weights: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``sum_k w_k A^k`` for (B, C) weights."""
    return torch.einsum("bc,bchw->bhw", weights, a)


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, and 0 where den == 0."""
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


@register_method(
    id="grad_cam_pp",
    label="Grad-CAM++",
    family="cam",
    paper="Chattopadhay, Sarkar, Howlader & Balasubramanian, 'Grad-CAM++: Generalized "
    "Gradient-Based Visual Explanations for Deep Convolutional Networks', WACV 2018",
    url="https://arxiv.org/abs/1710.11063",
    formula=r"w_k^c = \sum_{i,j} \frac{(g^k_{ij})^2}{2 (g^k_{ij})^2 + \sum_{a,b} A^k_{ab}\,(g^k_{ij})^3}"
    r"\,\mathrm{ReLU}(g^k_{ij}), \quad g = \frac{\partial y^c}{\partial A}, \quad "
    r"L^c = \mathrm{ReLU}\Big(\sum_k w_k^c A^k\Big)",
    summary="Grad-CAM with pixel-wise weights on the positive gradients (the paper's closed form "
    "for an exponential score, with the logit's gradient powers standing for its higher "
    "derivatives): spreads the map over several instances of the class.",
    warning="behind a GAP + linear head only the positive part of the class weights counts, so the "
    "map barely changes with the class or when the classifier is redrawn (trained Lite0: Spearman "
    "0.98, fails the randomization check); the higher derivatives are the gradient's powers, exact "
    "only for an exponential score",
    cost="1 forward + 1 backward to the layer (shared with Grad-CAM)",
    requires=("a classifier", "a spatial map at the layer"),
    needs={"map", "map_grad"},
    check=grad_cam_check,
)
def grad_cam_pp(passes: Passes, params: Params, runner: Runner) -> Result:
    a, g = passes.fmap, passes.fmap_grad
    g2 = g * g
    alpha = _safe_div(g2, 2 * g2 + a.sum((2, 3), keepdim=True) * g2 * g)
    weights = (alpha * torch.relu(g)).sum((2, 3))
    return rectified(passes, _weighted(weights, a), "sum_k w_k A^k")


@register_method(
    id="xgrad_cam",
    label="XGrad-CAM",
    family="cam",
    paper="Fu, Hu, Dong, Guo, Gao & Li, 'Axiom-based Grad-CAM: Towards Accurate Visualization and "
    "Explanation of CNNs', BMVC 2020",
    url="https://arxiv.org/abs/2008.02312",
    formula=r"w_k^c = \sum_{i,j} \frac{A^k_{ij}}{\sum_{a,b} A^k_{ab}}\,"
    r"\frac{\partial y^c}{\partial A^k_{ij}}, \qquad L^c = \mathrm{ReLU}\Big(\sum_k w_k^c A^k\Big)",
    summary="Grad-CAM with the gradient averaged under the map's own weights instead of uniformly, "
    "chosen to satisfy the sensitivity and conservation axioms; equals Grad-CAM up to a scale on a "
    "GAP + linear head with non-negative maps.",
    warning="a channel whose map sums to 0 gets weight 0; with signed maps (no ReLU before the "
    "layer) the normalizer can be near 0 and the weight explode",
    cost="1 forward + 1 backward to the layer (shared with Grad-CAM)",
    requires=("a classifier", "a spatial map at the layer"),
    needs={"map", "map_grad"},
    check=grad_cam_check,
)
def xgrad_cam(passes: Passes, params: Params, runner: Runner) -> Result:
    a, g = passes.fmap, passes.fmap_grad
    weights = _safe_div((g * a).sum((2, 3)), a.sum((2, 3)))
    return rectified(passes, _weighted(weights, a), "sum_k w_k A^k")


@register_method(
    id="layer_cam",
    label="LayerCAM",
    family="cam",
    paper="Jiang, Zhang, Hou, Cheng & Wei, 'LayerCAM: Exploring Hierarchical Class Activation Maps "
    "for Localization', IEEE TIP 2021",
    url="https://doi.org/10.1109/TIP.2021.3089943",
    formula=r"L^c_{ij} = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}\big(\tfrac{\partial y^c}"
    r"{\partial A^k_{ij}}\big)\,A^k_{ij}\Big)",
    summary="Each position weighted by its own positive gradient instead of the channel's average: "
    "finer maps, usable at shallow layers where Grad-CAM's averaged weights blur.",
    warning="negative gradients are dropped position by position, so evidence against the class "
    "never shows; behind a GAP + linear head the map barely changes with the class or when the "
    "classifier is redrawn (trained Lite0: Spearman 0.98, fails the randomization check)",
    cost="1 forward + 1 backward to the layer (shared with Grad-CAM)",
    requires=("a classifier", "a spatial map at the layer"),
    needs={"map", "map_grad"},
    check=grad_cam_check,
)
def layer_cam(passes: Passes, params: Params, runner: Runner) -> Result:
    return rectified(passes, (torch.relu(passes.fmap_grad) * passes.fmap).sum(1), "sum_k ReLU(G^k) A^k")


@register_method(
    id="hires_cam",
    label="HiResCAM",
    family="cam",
    paper="Draelos & Carin, 'Use HiResCAM instead of Grad-CAM for faithful explanations of "
    "convolutional neural networks', arXiv 2020",
    url="https://arxiv.org/abs/2011.08891",
    formula=r"L^c_{ij} = \mathrm{ReLU}\Big(\sum_k \frac{\partial y^c}{\partial A^k_{ij}}\,A^k_{ij}\Big)",
    summary="The gradient times the map, summed over channels, position by position: where the head "
    "is linear in the map (GAP + linear) it is exactly (h w) ReLU(CAM) and shows what the model "
    "used; Grad-CAM's averaged weights can show positions the model did not use.",
    warning="its faithfulness guarantee holds only when the map reaches the score linearly (a GAP "
    "+ linear head); through nonlinear layers it is a first-order estimate",
    cost="1 forward + 1 backward to the layer (shared with Grad-CAM)",
    requires=("a classifier", "a spatial map at the layer"),
    needs={"map", "map_grad"},
    check=grad_cam_check,
)
def hires_cam(passes: Passes, params: Params, runner: Runner) -> Result:
    return rectified(passes, (passes.fmap_grad * passes.fmap).sum(1), "sum_k G^k A^k")


def principal_projection(m: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h, w): the positions projected on the first principal component.

    Positions are the samples and channels the features: the (h w, C) matrix is centred per
    channel and projected on its first right singular vector (in float64). The sign of a
    singular vector is arbitrary: it is chosen so that the projection correlates positively with
    the map's mean over channels.
    """
    b, c, h, w = m.shape
    rows = m.detach().flatten(2).transpose(1, 2).double()  # (B, hw, C)
    rows = torch.nan_to_num(rows - rows.mean(1, keepdim=True))
    # Only the first component is needed: the top eigenvector of the smaller Gram matrix, not a
    # whole SVD (on efficientnet_b0's 49 x 1280 map, a 49 x 49 eigh instead of an SVD that cost
    # 10% of a forward). With rows = U S V^T: rows V_1 = S_1 U_1, the top eigenvector of
    # rows rows^T (eigenvalue S_1^2); or rows times the top eigenvector of rows^T rows.
    if h * w <= c:
        vals, vecs = torch.linalg.eigh(rows @ rows.transpose(1, 2))  # (B, hw, hw), ascending
        proj = vecs[..., -1] * vals[:, -1:].clamp_min(0).sqrt()  # (B, hw)
    else:
        _, vecs = torch.linalg.eigh(rows.transpose(1, 2) @ rows)  # (B, C, C)
        proj = (rows @ vecs[..., -1:])[..., 0]  # (B, hw)
    mean = m.detach().double().mean(1).flatten(1)
    flip = (proj * (mean - mean.mean(1, keepdim=True))).sum(1) < 0
    proj = torch.where(flip[:, None], -proj, proj)
    return proj.reshape(b, h, w).to(m.dtype)


@register_method(
    id="eigen_cam",
    label="Eigen-CAM",
    family="cam",
    paper="Muhammad & Yeasin, 'Eigen-CAM: Class Activation Map using Principal Components', IJCNN 2020",
    url="https://arxiv.org/abs/2008.00299",
    formula=r"L = \mathrm{ReLU}\big(\bar{A}\,v_1\big), \quad \bar{A} \in \mathbb{R}^{hw \times C} "
    r"\text{ the centred map}, \ v_1 \text{ its first right singular vector, sign: } "
    r"\langle \bar{A} v_1, \mathrm{mean}_k A^k \rangle \ge 0",
    summary="The map's dominant pattern over positions, from the map alone: no gradient, no class. "
    "The sign of a principal component is arbitrary; here it is the one that agrees with the "
    "map's mean.",
    warning="not class-discriminative: the same map for every target class, and for any classifier "
    "(it passes no randomization of the head); its high energy on the object is saliency, not "
    "the class's evidence",
    cost="1 forward (no backward)",
    requires=("a spatial map at the layer",),
    needs={"map"},
)
def eigen_cam(passes: Passes, params: Params, runner: Runner) -> Result:
    proj = principal_projection(passes.fmap)
    note = "class-independent: the first principal component of the map"
    return rectified(passes, proj, "the projection", note)


@register_method(
    id="eigen_grad_cam",
    label="Eigen-Grad-CAM",
    family="cam",
    paper="Muhammad & Yeasin, 'Eigen-CAM', IJCNN 2020, applied to the gradient-weighted map "
    "(as pytorch-grad-cam's EigenGradCAM)",
    url="https://arxiv.org/abs/2008.00299",
    formula=r"L^c = \mathrm{ReLU}\big(\overline{(G \odot A)}\,v_1\big), \quad "
    r"G = \frac{\partial y^c}{\partial A}, \ \text{sign: agrees with } \textstyle\sum_k G^k A^k",
    summary="Eigen-CAM of the gradient times the map: the dominant pattern of HiResCAM's per-channel "
    "terms, class-discriminative through the gradient.",
    warning="the principal component keeps the dominant pattern, which need not be the class's "
    "evidence where several patterns compete",
    cost="1 forward + 1 backward to the layer (shared with Grad-CAM)",
    requires=("a classifier", "a spatial map at the layer"),
    needs={"map", "map_grad"},
    check=grad_cam_check,
)
def eigen_grad_cam(passes: Passes, params: Params, runner: Runner) -> Result:
    return rectified(passes, principal_projection(passes.fmap_grad * passes.fmap), "the projection")
