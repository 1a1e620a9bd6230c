"""The registered metrics: the one list the CLI, the app, the README and the tests read."""

from __future__ import annotations

from .registry import Metric, register_metric

_RISE = (
    "Petsiuk, Das & Saenko, 'RISE: Randomized Input Sampling for Explanation of Black-box Models', BMVC 2018",
    "https://arxiv.org/abs/1806.07421",
)
_GRADCAMPP = (
    "Chattopadhay, Sarkar, Howlader & Balasubramanian, 'Grad-CAM++: Generalized Gradient-based Visual "
    "Explanations for Deep Convolutional Networks', WACV 2018",
    "https://arxiv.org/abs/1710.11063",
)

DELETION = register_metric(
    Metric(
        id="deletion",
        label="Deletion",
        kind="faithfulness",
        paper=_RISE[0],
        url=_RISE[1],
        formula=(
            r"\int_0^1 p_c\big(x \text{ with its top-}t\text{ pixels by the map set to the baseline}\big)\,dt"
        ),
        summary=(
            "Remove the pixels the map ranks highest, step by step, and watch the class probability: "
            "a faithful map makes it fall at once (small area). The baseline is 0 after normalization "
            "(the dataset's mean colour)."
        ),
        direction="lower",
        cost="about `steps` forwards per map, batched",
        unit="area under the probability curve, in [0, 1]",
    )
)
INSERTION = register_metric(
    Metric(
        id="insertion",
        label="Insertion",
        kind="faithfulness",
        paper=_RISE[0],
        url=_RISE[1],
        formula=(
            r"\int_0^1 p_c\big(\text{blurred } x"
            r" \text{ with its top-}t\text{ pixels by the map restored}\big)\,dt"
        ),
        summary=(
            "Restore the pixels the map ranks highest onto a blurred copy (Gaussian, 11 taps, sigma 5) and "
            "watch the class probability: a faithful map makes it rise at once (large area)."
        ),
        direction="higher",
        cost="about `steps` forwards per map, batched",
        unit="area under the probability curve, in [0, 1]",
    )
)
AVERAGE_DROP = register_metric(
    Metric(
        id="average_drop",
        label="Average Drop",
        kind="faithfulness",
        paper=_GRADCAMPP[0],
        url=_GRADCAMPP[1],
        formula=r"\frac{\max(0,\, Y^c - O^c)}{Y^c},\quad O^c = p_c(E^c \odot x),\ E^c \in [0, 1]",
        summary=(
            "Keep only what the map shows (the image times the map scaled to [0, 1]): how much of the "
            "class probability is lost, relative to the original. The paper reports the mean in %. "
            "pytorch-grad-cam's DropInConfidence omits the division by the original score."
        ),
        direction="lower",
        cost="1 forward per map",
        families=frozenset({"cam"}),
        unit="relative drop per image, in [0, 1] (mean x 100 = the paper's %)",
    )
)
INCREASE = register_metric(
    Metric(
        id="increase_in_confidence",
        label="Increase in Confidence",
        kind="faithfulness",
        paper=_GRADCAMPP[0],
        url=_GRADCAMPP[1],
        formula=r"\mathbb{1}\left[O^c > Y^c\right],\quad O^c = p_c(E^c \odot x)",
        summary=(
            "1 when keeping only what the map shows makes the model more confident in the class. "
            "The paper reports the share of images in %."
        ),
        direction="higher",
        cost="1 forward per map (shared with Average Drop)",
        families=frozenset({"cam"}),
        unit="0 or 1 per image (mean x 100 = the paper's %)",
    )
)
POINTING = register_metric(
    Metric(
        id="pointing_game",
        label="Pointing game",
        kind="localization",
        paper=(
            "Zhang, Bargal, Lin, Brandt, Shen & Sclaroff, 'Top-down Neural Attention by Excitation "
            "Backprop', ECCV 2016"
        ),
        url="https://arxiv.org/abs/1608.00507",
        formula=(
            r"\mathbb{1}\left[\operatorname{dist}\big(\arg\max_{p} M(p),\ \text{box}\big)"
            r" \le 15\text{ px}\right]"
        ),
        summary=(
            "A hit when the map's maximum lies on the object (within 15 pixels of its box or mask). "
            "A uniformly random map hits with the chance of the enlarged box's share of the image."
        ),
        direction="higher",
        cost="no forward",
        needs_box=True,
        unit="0 or 1 per image",
    )
)
ENERGY = register_metric(
    Metric(
        id="energy_in_box",
        label="Energy in box",
        kind="localization",
        paper=(
            "Wang et al., 'Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural "
            "Networks', CVPR-W 2020"
        ),
        url="https://arxiv.org/abs/1910.01279",
        formula=r"\frac{\sum_{p \in \text{box}} \max(M(p), 0)}{\sum_{p} \max(M(p), 0)}",
        summary=(
            "The share of the map's positive mass on the object. A uniformly random map scores the box's "
            "share of the image."
        ),
        direction="higher",
        cost="no forward",
        needs_box=True,
        unit="fraction in [0, 1]",
    )
)
RANDOMIZATION = register_metric(
    Metric(
        id="randomization",
        label="Model randomization",
        kind="sanity",
        paper=(
            "Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, 'Sanity Checks for Saliency Maps', "
            "NeurIPS 2018"
        ),
        url="https://arxiv.org/abs/1810.03292",
        formula=(
            r"\rho_{\mathrm{Spearman}}\big(|M_\theta|,\ |M_{\tilde\theta}|\big),"
            r"\ \tilde\theta: \text{top layers randomized}"
        ),
        summary=(
            "Rank correlation between the map of the trained model and of a copy whose top layers "
            "(by default the classifier) were randomized: a map that does not change does not depend on "
            "what the model learned. The full cascade, stage by stage, is `model_randomization`."
        ),
        direction="lower",
        cost="1 model copy + 1 explain per randomized step",
        unit="Spearman correlation in [-1, 1]",
    )
)
