"""DINO's projection head and the backbone + head pair (DINO's MultiCropWrapper) for student and teacher."""

from __future__ import annotations


def _torch():
    import torch

    return torch


def build_head(in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, n_layers: int = 3):
    """3-layer MLP with GELU -> bottleneck -> L2 normalise -> weight-normalised Linear(bottleneck, K) without bias.

    The last layer's rows are normalised in forward with their norm fixed to 1, which is weight norm with
    g = 1 frozen (DINO's ``norm_last_layer=True``).
    """
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional

    class UnitRowLinear(nn.Module):
        def __init__(self, in_features: int, out_features: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.empty(out_features, in_features))
            nn.init.trunc_normal_(self.weight, std=0.02)

        def forward(self, x):
            return F.linear(x, F.normalize(self.weight, dim=1))

    class DinoHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers, width = [], in_dim
            for _ in range(max(n_layers, 1) - 1):
                layers += [nn.Linear(width, hidden_dim), nn.GELU()]
                width = hidden_dim
            layers.append(nn.Linear(width, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
            for module in self.mlp:
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    nn.init.zeros_(module.bias)
            self.last_layer = UnitRowLinear(bottleneck_dim, out_dim)

        def forward(self, x):
            return self.last_layer(F.normalize(self.mlp(x), dim=-1, eps=1e-6))

    return DinoHead()


def build_multicrop(backbone, head):
    """A module with ``backbone.*`` and ``head.*`` keys (DINO's MultiCropWrapper): views of the same size
    go through the backbone together, then all CLS features through the head at once."""
    torch = _torch()

    class MultiCrop(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone
            self.head = head

        def forward(self, views):
            features, start = [], 0
            sizes = [v.shape[-1] for v in views]
            while start < len(views):
                stop = start
                while stop < len(views) and sizes[stop] == sizes[start]:
                    stop += 1
                features.append(self.backbone(torch.cat(views[start:stop])))
                start = stop
            return self.head(torch.cat(features))

    return MultiCrop()


def last_layer_parameters(model):
    return list(model.head.last_layer.parameters())


def parameter_groups(model) -> list[dict]:
    """AdamW groups: weights decay; biases, norms and tokens (1-D parameters) do not (as DINO)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "no_decay": True, "weight_decay": 0.0}]
