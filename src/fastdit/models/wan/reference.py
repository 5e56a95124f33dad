"""diffusers' ``WanTransformer3DModel`` with the weights of a fastdit :class:`WanTransformer`,
for equality checks and benchmarks (the parameter names are the same)."""

from __future__ import annotations


def diffusers_reference(model, share_weights: bool = True):
    """A diffusers ``WanTransformer3DModel`` on ``model``'s device with its weights.

    With ``share_weights`` the two models use the same tensors (no extra memory); the dtypes
    are ``model``'s, i.e. diffusers' own loading policy (fp32 for time embedder, modulation
    tables and norms, the rest in the model dtype). Its RoPE tables are built on the CPU and
    moved to the device, as diffusers does.
    """
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    config = {k: v for k, v in model.config.to_diffusers_config().items() if not k.startswith("_")}
    with init_empty_weights(include_buffers=False):  # parameters on meta, RoPE buffers real
        reference = WanTransformer3DModel(**config)
    state = model.state_dict()
    if not share_weights:
        state = {name: tensor.clone() for name, tensor in state.items()}
    reference.load_state_dict(state, strict=True, assign=True)
    device = next(iter(state.values())).device
    for name, buffer in list(reference.named_buffers()):
        module_name, _, leaf = name.rpartition(".")
        module = reference.get_submodule(module_name) if module_name else reference
        module._buffers[leaf] = buffer.to(device)
    return reference.eval().requires_grad_(False)


__all__ = ["diffusers_reference"]
