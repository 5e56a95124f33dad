"""Flow-matching Euler on an explicit timestep list: the sampler of step-distilled Wan models
(LightX2V's ``WanStepDistillScheduler`` / ``Wan22StepDistillScheduler``, Wan2.2 Lightning).

For timesteps ``t_0 > t_1 > ... > t_{n-1}`` (e.g. ``1000, 750, 500, 250``), ``T = 1000`` and
shift ``s`` (``flow_shift``, 5 for the LightX2V models)::

    base  = linspace(1, 0, T + 1)[:-1]             # base[T - t] = t / T
    sigma_i = s * b / (1 + (s - 1) * b),  b = base[T - t_i]      # shifted; sigma_n = 0
    timestep fed to the model: sigma_i * T          # 1000, 937.5, 833.3, 625 for the default
    step i:  x0 = x - sigma_i * v                   # v: the model's flow prediction
             x  = x0 + sigma_{i+1} * v              # the last step returns x0 (sigma_n = 0)

computed in float32 with the sigmas as host scalars (no device sync per step). Guidance is off
for these models (one forward per step). With two experts (Wan2.2 A14B) the high-noise expert
runs steps ``0 .. boundary_step - 1`` and the low-noise expert the rest, as LightX2V's
``boundary_step_index`` does: :attr:`FewStepScheduler.boundary_timestep` is the value the
denoise stage's ``t >= boundary`` test needs for that split.

The interface is the one the pipeline's schedulers have (``set_timesteps``, ``timesteps``,
``set_begin_index``, ``step(v, t, x, return_dict=False) -> (x_next,)``).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Sequence

import numpy as np
import torch

from fastdit.errors import InputError

DEFAULT_TIMESTEPS = (1000, 750, 500, 250)


def parse_timesteps(text: str | Sequence[int], num_train_timesteps: int = 1000) -> tuple[int, ...]:
    """``"1000,750,500,250"`` (or a sequence) -> ``(1000, 750, 500, 250)``, checked: integers in
    ``1 .. num_train_timesteps``, strictly decreasing, at least one."""
    items = text.split(",") if isinstance(text, str) else list(text)
    values = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise InputError(f"timesteps must be integers separated by commas, got {text!r}",
                             field="timesteps") from None
        if not value.is_integer():
            raise InputError(f"timesteps must be integers, got {item!r} in {text!r}", field="timesteps")
        values.append(int(value))
    if not values:
        raise InputError("timesteps: give at least one (e.g. 1000,750,500,250)", field="timesteps")
    if any(v < 1 or v > num_train_timesteps for v in values):
        raise InputError(f"timesteps must lie in 1..{num_train_timesteps}, got {values}", field="timesteps")
    if any(a <= b for a, b in zip(values, values[1:])):
        raise InputError(f"timesteps must be strictly decreasing, got {values}", field="timesteps")
    return tuple(values)


def positive_shift(value) -> float:
    """``value`` as a float flow shift: a positive finite number (:class:`InputError` otherwise)."""
    try:
        shift = float(value)
    except (TypeError, ValueError):
        raise InputError(f"flow_shift must be a number, got {value!r}", field="flow_shift") from None
    if not shift > 0 or shift == float("inf"):
        raise InputError(f"flow_shift must be a positive number, got {value!r}", field="flow_shift")
    return shift


def few_step_sigmas(timesteps: Sequence[int], flow_shift: float,
                    num_train_timesteps: int = 1000) -> np.ndarray:
    """The shifted sigmas of ``timesteps`` in float64 (see the module doc), without the final 0."""
    base = np.linspace(1.0, 0.0, num_train_timesteps + 1)[:-1]  # base[T - t] = t / T
    b = base[[num_train_timesteps - t for t in timesteps]]
    return flow_shift * b / (1.0 + (flow_shift - 1.0) * b)


class FewStepScheduler:
    """Euler on a fixed timestep list; see the module doc for the formulas."""

    order = 1
    init_noise_sigma = 1.0

    def __init__(self, timesteps: Sequence[int] | str = DEFAULT_TIMESTEPS, flow_shift: float = 5.0,
                 num_train_timesteps: int = 1000, boundary_step: int | None = None) -> None:
        steps = parse_timesteps(timesteps, num_train_timesteps)
        flow_shift = positive_shift(flow_shift)
        if boundary_step is not None and (isinstance(boundary_step, bool) or not isinstance(
                boundary_step, int) or not 0 < boundary_step < len(steps)):
            raise InputError(f"boundary_step must be an integer in 1..{len(steps) - 1} (the first "
                             f"step of the low-noise expert), got {boundary_step!r}", field="boundary_step")
        self.config = SimpleNamespace(timesteps=steps, flow_shift=flow_shift,
                                      num_train_timesteps=int(num_train_timesteps),
                                      boundary_step=boundary_step)
        sigmas32 = few_step_sigmas(steps, flow_shift, num_train_timesteps).astype(np.float32)
        #: float32 values as Python floats, with the final 0
        self.sigmas: list[float] = sigmas32.tolist() + [0.0]
        self._timesteps32 = torch.from_numpy(sigmas32 * np.float32(num_train_timesteps))
        self.timesteps: torch.Tensor | None = None
        self.num_inference_steps = len(steps)
        self._begin_index: int | None = None
        self._step_index: int | None = None

    def __repr__(self) -> str:
        cfg = self.config
        return (f"FewStepScheduler(timesteps={list(cfg.timesteps)}, flow_shift={cfg.flow_shift:g}, "
                f"boundary_step={cfg.boundary_step})")

    # ------------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int | None = None,
                      device: str | torch.device | None = None) -> None:
        """Put the schedule on ``device``; ``num_inference_steps`` must be the list's length."""
        if num_inference_steps is not None and int(num_inference_steps) != len(self.config.timesteps):
            raise InputError(f"this few-step schedule has {len(self.config.timesteps)} steps "
                             f"(timesteps {list(self.config.timesteps)}); num_inference_steps="
                             f"{num_inference_steps} does not match")
        self.timesteps = self._timesteps32.to(device) if device is not None else self._timesteps32.clone()
        self._begin_index = None
        self._step_index = None

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def boundary_timestep(self) -> float | None:
        """``timesteps[boundary_step - 1]``: with ``t >= boundary_timestep`` choosing expert 0
        (as ``stages.denoise`` does), steps ``< boundary_step`` run the high-noise expert."""
        b = self.config.boundary_step
        return None if b is None else float(self._timesteps32[b - 1])

    def expert_for_step(self, index: int) -> int:
        """0 (``transformer``, high noise) or 1 (``transformer_2``, low noise) for step ``index``."""
        b = self.config.boundary_step
        return 0 if b is None or index < b else 1

    def _index_of(self, timestep) -> int:
        if self._begin_index is not None:
            return self._begin_index
        value = float(timestep)  # a host read: callers that set a begin index never get here
        matches = (self._timesteps32 == value).nonzero().flatten().tolist()
        if not matches:
            raise ValueError(f"FewStepScheduler: timestep {value} is not in the schedule")
        return matches[0]

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             return_dict: bool = False):
        """``x0 = x - sigma_i v``; returns ``(x0 + sigma_{i+1} v,)`` (``(x0,)`` at the last
        step), computed in float32 and returned in ``sample``'s dtype."""
        if return_dict:
            raise ValueError("FewStepScheduler.step returns a tuple; pass return_dict=False")
        if self.timesteps is None:
            raise ValueError("FewStepScheduler: call set_timesteps first")
        if self._step_index is None:
            self._step_index = self._index_of(timestep)
        i = self._step_index
        if i >= len(self.config.timesteps):
            raise ValueError(f"FewStepScheduler: all {i} steps were taken")
        v = model_output.float()
        x0 = sample.float() - self.sigmas[i] * v
        out = x0 if i == len(self.config.timesteps) - 1 else x0 + self.sigmas[i + 1] * v
        self._step_index += 1
        return (out.to(sample.dtype),)
