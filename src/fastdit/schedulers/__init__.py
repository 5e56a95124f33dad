"""Samplers that fastdit owns (the denoising schedules diffusers has no class for).

``few_step``: flow-matching Euler on an explicit timestep list, for step-distilled Wan models
(LightX2V 4-step, Wan2.2 Lightning), and the named presets that set it up.
"""
