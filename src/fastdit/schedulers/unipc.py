"""Flow-matching UniPC with its scalar coefficients on the host.

diffusers' ``UniPCMultistepScheduler`` keeps its sigmas on the CPU and, every step, copies
them to the GPU one by one and solves a small linear system there; each copy from pageable
memory waits for the GPU stream to drain (run11 profile: ~6 waits and ~12 ms of GPU idle per
step of a 1.3B video). This scheduler computes the same coefficients in float64 on the host
from the same float32 sigmas, so a step is a few elementwise kernels and never waits.

It covers the configuration every Wan checkpoint ships (``use_flow_sigmas``,
``prediction_type="flow_prediction"``, ``predict_x0``, ``solver_type="bh2"``, no thresholding,
no dynamic shifting): :meth:`FlowUniPCScheduler.takes` says whether a diffusers config is one of
them. Results equal diffusers' to float32 rounding of the coefficients.

Per step (``x0 = x - sigma * v`` from the model's velocity ``v``; ``lambda = log(alpha/sigma)``,
``alpha = 1 - sigma``, ``h = lambda_t - lambda_s``, ``B = expm1(-h)``):

* corrector (from the second step): ``x <- (sigma_t/sigma_s) x_prev - alpha_t expm1(-h) m0
  - alpha_t B (sum_k rho_k D_k + rho_last (x0_now - m0))``;
* predictor: ``x_next = (sigma_t/sigma_s) x - alpha_t expm1(-h) m0 - alpha_t B sum_k rho_k D_k``,
  ``D_k = (m_k - m0) / r_k``, with ``rho`` from the UniPC linear system (0.5 at order 2).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Mapping

import numpy as np
import torch

#: (config key, value every supported config has); a missing key takes diffusers' default.
_REQUIRED = (("use_flow_sigmas", True), ("prediction_type", "flow_prediction"),
             ("predict_x0", True), ("solver_type", "bh2"), ("thresholding", False),
             ("use_dynamic_shifting", False), ("use_karras_sigmas", False),
             ("use_exponential_sigmas", False), ("use_beta_sigmas", False),
             ("lower_order_final", True))
#: The settings this class reads, with diffusers' defaults.
_DEFAULTS = {"num_train_timesteps": 1000, "solver_order": 2, "flow_shift": 1.0,
             "disable_corrector": (), "final_sigmas_type": "zero"}


def _lambda(sigma: float) -> np.float64:
    """``log(alpha) - log(sigma)`` with ``alpha = 1 - sigma`` (+inf at sigma = 0, under the
    caller's ``np.errstate``)."""
    sigma = np.float64(sigma)
    return np.log(1.0 - sigma) - np.log(sigma)


class FlowUniPCScheduler:
    """``set_timesteps`` / ``timesteps`` / ``set_begin_index`` / ``step`` as diffusers' UniPC."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        if not self.takes(config):
            raise ValueError("FlowUniPCScheduler: this scheduler configuration is not supported "
                             "(see FlowUniPCScheduler.takes)")
        values = {**_DEFAULTS, **{k: v for k, v in dict(config).items() if k in _DEFAULTS}}
        self.config = SimpleNamespace(**values)
        self.timesteps: torch.Tensor | None = None
        self.sigmas: list[float] = []
        self._begin_index: int | None = None

    @staticmethod
    def takes(config: Mapping[str, Any]) -> bool:
        """Whether ``config`` (a diffusers UniPC config) is one this class reproduces."""
        config = dict(config)
        return (all(config.get(key, value) == value for key, value in _REQUIRED)
                and config.get("solver_p") is None and not config.get("shift_terminal")
                and config.get("final_sigmas_type", "zero") in ("zero", "sigma_min")
                and int(config.get("solver_order", 2)) in (1, 2, 3))

    # ------------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        cfg = self.config
        # the numbers diffusers computes, in the same numpy order
        sigmas = np.linspace(1, 1 / cfg.num_train_timesteps, num_inference_steps + 1)[:-1]
        sigmas = cfg.flow_shift * sigmas / (1 + (cfg.flow_shift - 1) * sigmas)
        if np.fabs(sigmas[0] - 1) < 1e-6:
            sigmas[0] -= 1e-6  # keeps log(alpha) finite, as diffusers does
        timesteps = (sigmas * cfg.num_train_timesteps).copy()
        last = sigmas[-1] if cfg.final_sigmas_type == "sigma_min" else 0
        sigmas32 = np.concatenate([sigmas, [last]]).astype(np.float32)
        # 0-d CPU tensors for x0 = x - sigma * v, which then rounds as diffusers' does (a CPU
        # scalar operand: no copy to the device, no wait); the same float32 values as Python
        # floats for the coefficients
        self._sigma_scalars = torch.from_numpy(sigmas32)
        self.sigmas = self._sigma_scalars.tolist()
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self._outputs: list[torch.Tensor | None] = [None] * cfg.solver_order
        self._lower_order_nums = 0
        self._last_sample: torch.Tensor | None = None
        self._this_order = 1
        self._step_index: int | None = None
        self._begin_index = None  # as diffusers: set_begin_index comes after set_timesteps

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def _start_index(self, timestep) -> int:
        if self._begin_index is not None:
            return self._begin_index
        value = float(timestep)  # a host read: callers that set a begin index never get here
        matches = (self.timesteps.cpu() == int(value)).nonzero().flatten().tolist()
        if not matches:
            raise ValueError(f"FlowUniPCScheduler: timestep {value} is not in the schedule")
        return matches[1] if len(matches) > 1 else matches[0]

    # ------------------------------------------------------------------------------------
    @np.errstate(divide="ignore", invalid="ignore")  # inf/nan where diffusers has them
    def _coefficients(self, t_index: int, s_index: int, order: int, corrector: bool):
        """``(c_x, c_m0, c_prev, c_now)``: the update is ``c_x x - c_m0 m0
        - sum_k c_prev[k-1] (m_k - m0)`` (``m_k`` the model output k steps before ``m0``),
        and ``- c_now (x0_now - m0)`` for the corrector. Float64 numpy scalars throughout."""
        sigma_t, sigma_s = np.float64(self.sigmas[t_index]), np.float64(self.sigmas[s_index])
        lam_s = _lambda(sigma_s)
        h = _lambda(sigma_t) - lam_s
        alpha_t = 1.0 - sigma_t
        rks = [(_lambda(self.sigmas[s_index - k]) - lam_s) / h for k in range(1, order)]
        rks.append(np.float64(1.0))
        hh = -h
        h_phi_1 = np.expm1(hh)
        b_h = h_phi_1  # bh2
        h_phi_k, factorial, rows, rhs = h_phi_1 / hh - 1.0, 1, [], []
        for i in range(1, order + 1):
            rows.append([r ** (i - 1) for r in rks])
            rhs.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial
        if corrector:
            rhos = [0.5] if order == 1 else list(np.linalg.solve(np.array(rows), np.array(rhs)))
        elif order <= 2:
            rhos = [0.5] * (order - 1)
        else:
            rhos = list(np.linalg.solve(np.array(rows)[:-1, :-1], np.array(rhs)[:-1]))
        scale = alpha_t * b_h
        c_prev = [float(scale * rhos[j] / rks[j]) for j in range(order - 1)]
        c_now = float(scale * rhos[-1]) if corrector else 0.0
        return float(sigma_t / sigma_s), float(alpha_t * h_phi_1), c_prev, c_now

    def _update(self, x, index_t: int, index_s: int, order: int, x0_now=None) -> torch.Tensor:
        c_x, c_m0, c_prev, c_now = self._coefficients(index_t, index_s, order, x0_now is not None)
        m0 = self._outputs[-1]
        out = x * c_x - m0 * c_m0
        for k, coef in enumerate(c_prev, start=1):
            out = out - (self._outputs[-(k + 1)] - m0) * coef
        if x0_now is not None:
            out = out - (x0_now - m0) * c_now
        return out.to(x.dtype)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             return_dict: bool = False):
        """One denoising step; returns ``(prev_sample,)`` (``return_dict`` is not supported)."""
        if return_dict:
            raise ValueError("FlowUniPCScheduler.step returns a tuple; pass return_dict=False")
        if self.timesteps is None:
            raise ValueError("FlowUniPCScheduler: call set_timesteps first")
        if self._step_index is None:
            self._step_index = self._start_index(timestep)
        i, cfg = self._step_index, self.config
        x0 = sample - self._sigma_scalars[i] * model_output  # flow prediction -> x0
        if i > 0 and (i - 1) not in cfg.disable_corrector and self._last_sample is not None:
            sample = self._update(self._last_sample, i, i - 1, self._this_order, x0_now=x0)
        self._outputs = self._outputs[1:] + [x0]
        order = min(cfg.solver_order, len(self.timesteps) - i)  # lower_order_final
        self._this_order = min(order, self._lower_order_nums + 1)
        self._last_sample = sample
        prev = self._update(sample, i + 1, i, self._this_order)
        self._lower_order_nums = min(self._lower_order_nums + 1, cfg.solver_order)
        self._step_index += 1
        return (prev,)
