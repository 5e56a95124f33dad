"""TEMPORARY development stand-in for fastdit.models.wan.WanTransformer (diffusers' model)."""
import torch
from diffusers import WanTransformer3DModel


class WanTransformer(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    @classmethod
    def from_pretrained(cls, path, dtype=torch.float32, device="cpu", subfolder="transformer"):
        inner = WanTransformer3DModel.from_pretrained(path, subfolder=subfolder, torch_dtype=dtype)
        return cls(inner.to(device))

    def forward(self, latents, timestep, text_embeds, image_embeds=None):
        return self.inner(latents, timestep, text_embeds, encoder_hidden_states_image=image_embeds,
                          return_dict=False)[0]
