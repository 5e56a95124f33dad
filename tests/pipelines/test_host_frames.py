"""The pinned frames buffer a generation allocates while it denoises
(:mod:`fastdit.pipelines.host_frames`) and the decode stage's use of it
(:func:`fastdit.pipelines.stages.host_array`)."""

import numpy as np
import torch

from fastdit.pipelines import host_frames, stages
from fastdit.pipelines.host_frames import FramesBuffer


def test_no_buffer_for_cpu_frames():
    buffer = FramesBuffer((2, 4, 4, 3), torch.device("cpu"))
    assert buffer._thread is None and buffer.take() is None


def test_the_buffer_is_allocated_on_a_side_thread_and_taken_once(monkeypatch):
    calls = []

    def pinned(shape, dtype, pin_memory):
        import threading

        calls.append((tuple(shape), dtype, pin_memory, threading.current_thread().name))
        return torch.zeros(shape, dtype=dtype)

    monkeypatch.setattr(host_frames.torch, "empty", pinned)
    buffer = FramesBuffer((2, 4, 4, 3), torch.device("meta"))
    got = buffer.take()
    assert calls == [((2, 4, 4, 3), torch.float32, True, "fastdit-frames-buffer")]
    assert got.shape == (2, 4, 4, 3) and buffer.take() is None


def test_a_failed_allocation_is_logged_and_gives_none(monkeypatch, caplog):
    def no_pinned(shape, dtype, pin_memory):
        raise RuntimeError("cudaHostAlloc failed\nmore")

    monkeypatch.setattr(host_frames.torch, "empty", no_pinned)
    with caplog.at_level("WARNING", logger="fastdit.pipelines"):
        assert FramesBuffer((2, 4, 4, 3), torch.device("meta")).take() is None
    assert "no pinned buffer" in caplog.text and "cudaHostAlloc failed" in caplog.text


def test_frames_land_in_a_fitting_buffer_else_in_new_memory(monkeypatch):
    frames = torch.rand(2, 4, 4, 3)
    host = torch.zeros(2, 4, 4, 3)
    got = stages.host_array(frames, host)
    assert np.shares_memory(got, host.numpy()) and torch.equal(host, frames)
    allocated = []
    real_empty = torch.empty

    def new_pinned(*args, pin_memory=False, **kwargs):
        allocated.append(pin_memory)
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(stages.torch, "empty", new_pinned)
    wrong = torch.zeros(3, 4, 4, 3)
    got = stages.host_array(frames, wrong)
    assert allocated == [True] and not np.shares_memory(got, wrong.numpy())
    assert torch.equal(torch.from_numpy(got), frames) and not wrong.any()
