"""Tiny transformers for the runtime tests (fp32 on the CPU)."""

from __future__ import annotations

import copy
import dataclasses

import torch

from fastdit.models.wan import WanTransformer
from tests.models.wan_helpers import I2V, T2V, TI2V, inputs  # noqa: F401 (re-exported)

T2V5 = dataclasses.replace(T2V, num_layers=5)


def model(config=T2V5, seed: int = 0, dtype=torch.float32) -> WanTransformer:
    return WanTransformer.from_config(config, dtype=dtype, seed=seed)


def clone(module):
    return copy.deepcopy(module)


@torch.no_grad()
def forward(module, args):
    return module(*args)
