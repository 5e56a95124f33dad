"""visiting(): a module's tensors on the device for a block, its own host tensors after it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastdit.runtime.visit import visiting


class WithBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.register_buffer("offset", torch.arange(3.0))

    def forward(self, x):
        return self.linear(x) + self.offset


def _storages(module):
    return [t.data.data_ptr() for t in [*module.parameters(), *module.buffers()]]


def test_the_module_runs_on_the_moved_tensors_and_gets_its_own_back():
    torch.manual_seed(0)
    module = WithBuffer()
    x = torch.randn(2, 4)
    expected = module(x)
    before = _storages(module)
    objects = [*module.parameters(), *module.buffers()]
    with visiting(module, "cpu", move=lambda t: t.clone()) as inside:  # a copy stands for the device's
        assert inside is module
        during = _storages(module)
        assert not set(during) & set(before)  # every tensor is a moved copy while visiting
        assert torch.equal(module(x), expected)
    assert _storages(module) == before  # the same host storage: nothing was copied back
    assert [*module.parameters(), *module.buffers()] == objects  # the same Parameter objects


def test_the_host_tensors_come_back_when_the_block_raises():
    module = WithBuffer()
    before = _storages(module)
    with pytest.raises(RuntimeError, match="boom"):
        with visiting(module, "cpu", move=lambda t: t.clone()):
            raise RuntimeError("boom")
    assert _storages(module) == before


def test_tied_parameters_move_once():
    module = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    module[1].weight = module[0].weight
    moves = []

    def move(t):
        moves.append(t.data_ptr())
        return t.clone()

    with visiting(module, "cpu", move=move):
        assert module[0].weight is module[1].weight
    assert len(moves) == 1
