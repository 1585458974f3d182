"""The Refine layer (TPBNet in the official code): CLIP patch tokens -> image embedding."""

from __future__ import annotations

import torch
from torch import nn

# The official UNet/ControlNet blocks hard-code the image-attention context width to 512.
IMAGE_CONTEXT_DIM = 512


class RefineLayer(nn.Module):
    """MLP over CLIP-vision patch tokens; key names match `refine/refine.pt` (`visual_projection.*`).

    ``[Linear(D,D), LayerNorm(D), LeakyReLU(0.01)] * num_layers + [Linear(D, out_dim)]``.
    """

    def __init__(self, clip_dim: int = 1024, out_dim: int = IMAGE_CONTEXT_DIM, num_layers: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(num_layers):
            layers += [nn.Linear(clip_dim, clip_dim), nn.LayerNorm(clip_dim), nn.LeakyReLU(0.01)]
        layers.append(nn.Linear(clip_dim, out_dim))
        self.visual_projection = nn.Sequential(*layers)
        self.config = {"clip_dim": clip_dim, "out_dim": out_dim, "num_layers": num_layers}

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """``patch_tokens``: [B, N, D] CLIP tokens without the CLS token (``hidden_states[-1][:, 1:]``)."""
        return self.visual_projection(patch_tokens)

    @staticmethod
    def config_from_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, int]:
        """Read ``clip_dim``, ``out_dim`` and ``num_layers`` off a state dict's shapes."""
        linear = sorted(
            int(k.split(".")[1])
            for k in state_dict
            if k.startswith("visual_projection.") and k.endswith(".weight") and state_dict[k].ndim == 2
        )
        if not linear:
            raise KeyError("no visual_projection.N.weight Linear keys")
        first, last = (
            state_dict[f"visual_projection.{linear[0]}.weight"],
            state_dict[f"visual_projection.{linear[-1]}.weight"],
        )
        return {"clip_dim": int(first.shape[1]), "out_dim": int(last.shape[0]), "num_layers": len(linear) - 1}
