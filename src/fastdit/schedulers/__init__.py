"""Samplers of the denoise loop: flow-matching UniPC with host-side coefficients (``unipc``)."""
