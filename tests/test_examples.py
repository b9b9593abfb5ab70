"""The bring-your-own examples offer what their docstrings promise (their models untrained
here: discovery reads structure, so no training is needed to check it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from search_spaces.discovery import discover_units

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_mobilenet_couples_depthwise_convs_and_skips_only_residual_blocks() -> None:
    mobilenet = _load("mobilenet")
    units = discover_units(mobilenet.MobileNet().eval(), torch.randn(1, 1, 16, 16))

    assert units.get("blocks.0.depthwise.0").coupled_to == "blocks.0.expand.0"
    skippable = [u.name for u in units if u.allows("skip")]
    assert skippable == ["blocks.0", "blocks.2", "blocks.4", "blocks.5"]  # the residual ones
    assert all(u.allows("precision") for u in units if u.kind == "conv")


def test_hf_encoder_layers_skip_prune_heads_and_take_token_ids() -> None:
    pytest.importorskip("transformers")
    hf = _load("hf_encoder")
    tokens = hf.corpus(1, seed=0)

    units = discover_units(hf.SentenceEncoder().eval(), tokens)

    for i in range(hf.LAYERS):
        assert units.get(f"bert.encoder.layer.{i}").allows("skip")
        attention = units.get(f"bert.encoder.layer.{i}.attention.self")
        assert attention.heads == hf.HEADS and attention.allows("prune")
        assert units.get(f"bert.encoder.layer.{i}.intermediate.dense").allows("prune")
    assert tokens["input_ids"].dtype == torch.int64
