"""Samplers that fastdit owns (the denoising schedules it runs without diffusers' classes).

``unipc``: flow-matching UniPC with host-side coefficients (the default Wan sampler).
``few_step``: flow-matching Euler on an explicit timestep list, for step-distilled Wan models
(LightX2V 4-step, Wan2.2 Lightning), and ``presets``: the named settings that set it up.
"""
