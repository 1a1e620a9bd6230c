"""Every curated model resolves in timm and inspects cleanly with random weights (no download)."""

from __future__ import annotations

import pytest
import timm
import torch

import cnnviz
from cnnviz import zoo
from cnnviz.zoo.labels import class_names
from cnnviz.zoo.preprocess import Preprocessor

pytestmark = pytest.mark.slow  # about 40 models: 1-5 min on two shared CPU cores

ENTRIES = zoo.curated()


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.id for e in ENTRIES])
def test_curated_entry_inspects_cleanly(entry):
    torch.manual_seed(0)
    module = timm.create_model(entry.id, pretrained=False).eval()
    anatomy = cnnviz.inspect(module)
    assert anatomy.num_classes == 1000 and min(anatomy.shape) > 0
    pre = Preprocessor.for_model(module)
    assert tuple(pre.data_config["input_size"]) == tuple(module.pretrained_cfg["input_size"])
    assert len(class_names(module)) == 1000
