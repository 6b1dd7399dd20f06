"""Loading a backbone: the model built, its weights in, eval mode on the device; and its input normalisation."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..devices import resolve_device
from ..errors import DinolocError
from ..files import atomic_write
from ._camae import CA_MAE_ARCH, INSTANCE_NORM_EPS, build_ca_mae, ca_mae_state
from ._checkpoint import read_checkpoint, weights_file_hash
from ._fitting import SPEC_METADATA_KEY, _safetensors_spec, infer_spec, load_weights_into, spec_from_declared
from ._registry import BACKBONES, CELL_MODEL, BackboneSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SELF_NORM_EPS = 1e-7  # DINO4Cells' self-normalisation epsilon
RANDOM_SEED = 0


@dataclass
class LoadedBackbone:
    spec: BackboneSpec
    model: Any  # torch.nn.Module, eval mode, on ``device``
    weights_hash: str
    embed_dim: int
    device: Any  # torch.device
    #: reduced-precision checks already passed or failed with this model: see embedding.Embedder
    #: (init=False: dataclasses.replace, e.g. with fine-tuned weights, starts a fresh record)
    precision_checks: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    #: the one mark of a fine-tuned backbone (set by ``apply_finetuned``): the backbone, with its weights
    #: as loaded, that fine-tuning started from; None for weights as loaded
    finetuned_from: "LoadedBackbone | None" = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_finetuned(self) -> bool:
        return self.finetuned_from is not None

    @property
    def base(self) -> "LoadedBackbone":
        """The backbone as loaded, before any fine-tuning (itself when not fine-tuned)."""
        return self.finetuned_from or self

    @property
    def base_weights_hash(self) -> str:
        """The weights this backbone was loaded with before any fine-tuning (its own hash if none)."""
        return self.base.weights_hash

    @property
    def num_prefix_tokens(self) -> int:
        return int(getattr(self.model, "num_prefix_tokens", 1))

    def tokens(self, x):
        """(B, S, H, W) normalised input -> (B, N, D) normed tokens, prefix (CLS) tokens first."""
        return self.model.forward_features(x.to(self.device))


def load_backbone(name: str, weights: str | Path | None = None, device: str = "auto") -> LoadedBackbone:
    """The backbone ``name`` with its weights, in eval mode on ``device``.

    A local ``weights`` file overrides the hub for timm backbones; ``file`` backbones need one.
    """
    spec = BACKBONES.lookup(name)
    torch_device = resolve_device(device)
    if weights is not None:
        model, spec, weights_hash = _model_from_file(spec, Path(weights))
    elif spec.source == "timm":
        model, weights_hash = _model_from_hub(spec), f"timm:{spec.arch}"
    elif spec.source == "package":
        model, spec, weights_hash = _model_from_file(spec, packaged_weights(spec.name))
    elif spec.source == "random":
        model, weights_hash = _seeded_random_model(spec), f"random:{RANDOM_SEED}"
    else:
        raise DinolocError(
            f"The backbone {spec.name!r} needs a local weights file: give it with --weights path/to/checkpoint.pth "
            f"(in napari: the weights file field). {spec.description}"
        )
    model.eval().to(torch_device)
    return LoadedBackbone(spec=spec, model=model, weights_hash=weights_hash,
                          embed_dim=int(model.embed_dim), device=torch_device)


def packaged_weights(name: str) -> Path:
    """The weights file of a model shipped inside the package (``napari_dinoloc/models/<name>.safetensors``)."""
    path = Path(__file__).resolve().parents[2] / "models" / f"{name}.safetensors"
    if not path.is_file():
        raise DinolocError(f"The weights of the shipped model {name!r} are missing from this installation ({path}): "
                           "reinstall napari-dinoloc, or choose another backbone.")
    return path


# --- building models -------------------------------------------------------------------------

def _build_model(spec: BackboneSpec, pretrained: bool = False):
    if spec.arch == CA_MAE_ARCH:
        return build_ca_mae(**spec.arch_kwargs)
    # dynamic_img_size: any input size works (position embeddings are resampled only when it differs)
    common = {"num_classes": 0, "dynamic_img_size": True}
    if spec.arch is None:
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(**{**common, **spec.arch_kwargs})
    import timm

    return timm.create_model(spec.arch, pretrained=pretrained, **{**common, **spec.arch_kwargs})


def _seeded_random_model(spec: BackboneSpec):
    import torch

    with torch.random.fork_rng(devices=[]):  # same weights every load, global RNG untouched
        torch.manual_seed(RANDOM_SEED)
        return _build_model(spec)


def _model_from_hub(spec: BackboneSpec):
    from ..network import hub_reachable, use_hub_offline

    online = hub_reachable()
    if not online:
        use_hub_offline()  # weights cached earlier still load; missing ones fail at once, without retries
    try:
        return _build_model(spec, pretrained=True)
    except Exception as exc:  # network, hub cache or HTTP errors all mean the same to the user
        if not online:
            raise DinolocError(
                f"No network: the weights of {spec.name!r} ({spec.arch}) are not cached on this machine. "
                f"Use the shipped model ({CELL_MODEL}, no download), connect once (weights are cached afterwards), "
                "or give a weights file with --weights (in napari: the weights file field)."
            ) from None
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DinolocError(
            f"The weights of {spec.name!r} ({spec.arch}) could not be downloaded ({reason}). "
            "Connect to the internet once (they are cached afterwards), or download the weights file "
            "yourself and give it with --weights path/to/file (in napari: the weights file field)."
        ) from exc


def _model_from_file(spec: BackboneSpec, path: Path):
    state = read_checkpoint(path)
    if spec.arch is None and not spec.arch_kwargs:  # the generic 'checkpoint' entry
        spec = infer_spec(state, _safetensors_spec(path), name=spec.name, path=path)
        _check_model_size(spec, state, path)  # the architecture came from the file: it may be crafted
    elif spec.arch is None and spec.source == "file":  # a registered DINOv2-style file backbone
        spec = spec_from_declared(spec, state, path)
        _check_model_size(spec, state, path)
    model = _build_model(spec)
    if spec.arch == CA_MAE_ARCH:
        state = ca_mae_state(state, model.tokens_per_stain, path)
    load_weights_into(model, state, spec, path)
    return model, spec, weights_file_hash(path)


def _check_model_size(spec: BackboneSpec, state: dict, path: Path) -> None:
    """Refuse an architecture that needs far more weights than the file holds, before allocating it.

    The model is first built on the 'meta' device (shapes only, no memory), so a small file whose
    description claims a huge model fails at once instead of allocating it.
    """
    import torch

    try:
        with torch.device("meta"):
            needed = sum(t.numel() for t in _build_model(spec).state_dict().values())
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        raise DinolocError(f"The architecture described in {path.name} cannot be built ({str(exc)[:160]}): "
                           "the file is damaged or crafted. Choose another weights file.") from None
    held = sum(int(t.numel()) for t in state.values())
    if needed > 1.1 * held + 1_000_000:  # slack: position embeddings resampled to another size
        raise DinolocError(f"{path.name} describes a model of {needed / 1e6:.1f} million weights but holds only "
                           f"{held / 1e6:.1f} million: the file is damaged or crafted. Choose another weights file.")


def save_backbone_weights(backbone: LoadedBackbone, path: str | Path) -> None:
    """Write the backbone as safetensors with its spec, so ``load_backbone('checkpoint', path)`` restores it exactly.

    The 'checkpoint' entry can otherwise only guess what shapes do not store (attention heads, slot meaning).
    """
    from safetensors.torch import save

    spec = backbone.spec
    arch_kwargs = dict(spec.arch_kwargs)
    if spec.arch is None:
        arch_kwargs.setdefault("num_heads", backbone.model.blocks[0].attn.num_heads)
    stored = {k: v for k, v in asdict(replace(spec, arch_kwargs=arch_kwargs)).items() if k not in ("name", "source")}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in backbone.model.state_dict().items()}
    blob = save(tensors, metadata={SPEC_METADATA_KEY: json.dumps(stored)})
    with atomic_write(path, "wb") as handle:
        handle.write(blob)


def normalize(x, spec: BackboneSpec):
    """(B, S, H, W) slots in raw [0, 1] intensity -> the model's input scale.

    'self' (DINO4Cells): per crop and channel (x - mean) / (std + 1e-7); an all-zero slot stays zero.
    'instance': per crop and channel (x - mean) / sqrt(var + 1e-5), torch's InstanceNorm2d as CA-MAE
    (its uint8 /255 scaling does not change the result beyond the epsilon).
    'imagenet': per-slot ImageNet mean/std (slot i is colour i).
    """
    import torch

    if spec.normalization == "instance":
        mean = x.mean(dim=(-2, -1), keepdim=True)
        var = x.var(dim=(-2, -1), correction=0, keepdim=True)
        return (x - mean) / torch.sqrt(var + INSTANCE_NORM_EPS)
    if spec.normalization == "self":
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), correction=0, keepdim=True)  # population std, as Cell-DINO
        return (x - mean) / (std + SELF_NORM_EPS)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
