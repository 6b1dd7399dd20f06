"""DINOv2 / Cell-DINO checkpoints (the hub's layout) load into timm ViTs exactly, or are refused by name."""

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from napari_dinoloc.core.backbones import BACKBONES, BackboneSpec, load_backbone, register_backbone
from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.stains import CELL_PAINTING_SLOTS, PROTEIN


def dinov2_style_vit(in_chans=3, img_size=32, patch_size=8, reg_tokens=0, seed=3, embed_dim=128):
    """A timm DINOv2-style ViT (layer scale, registers without position), every weight random."""
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                              depth=2, num_heads=embed_dim // 64, num_classes=0, init_values=1.0,
                              reg_tokens=reg_tokens, no_embed_class=bool(reg_tokens)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


def dinov2_layout(model, chunked=False) -> dict:
    """The state dict as Meta's dinov2 code stores it (the inverse of timm's conversion)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if "reg_token" in state:
        cls_pos = torch.randn(1, 1, state["cls_token"].shape[-1])  # DINOv2 gives CLS a position; timm folds it in
        state["register_tokens"] = state.pop("reg_token")
        state["cls_token"] = state["cls_token"] - cls_pos
        state["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
    if chunked:  # block_chunks=2: blocks.<chunk>.<index>
        state = {(k.replace(f"blocks.{i}.", f"blocks.{i // 1}.{i}.", 1) if k.startswith(f"blocks.{i}.") else k): v
                 for k, v in state.items() for i in [int(k.split(".")[1]) if k.startswith("blocks.") else -1]}
    state["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    return state


def training_checkpoint(state) -> dict:
    """A DINOv2 training checkpoint: teacher and student, ``backbone.`` prefixes, DINO/iBOT heads."""
    def wrapped(tensors):
        out = {f"backbone.{k}": v for k, v in tensors.items()}
        out["dino_head.mlp.0.weight"] = torch.zeros(4, 4)
        out["ibot_head.mlp.0.weight"] = torch.zeros(4, 4)
        return out
    return {"teacher": wrapped(state), "student": wrapped({k: v + 1 for k, v in state.items()}), "iteration": 7}


def max_diff(model, backbone, in_chans, size):
    x = torch.randn(2, in_chans, size, size)
    with torch.inference_mode():
        return float((model.forward_features(x) - backbone.tokens(x)).abs().max())


@pytest.mark.parametrize("case", [
    dict(in_chans=3),  # layer scale, no registers
    dict(in_chans=4, reg_tokens=4, chunked=True, wrapped=True),  # registers, block chunks, a training checkpoint
    dict(in_chans=5, img_size=128, patch_size=8, embed_dim=64),  # Cell Painting ViT-S/8 layout, small dims
    dict(in_chans=1, reg_tokens=2),  # channel-adaptive: one stain at a time
])
def test_dinov2_layout_embeds_as_the_source_model(tmp_path, case):
    case = dict(case)
    chunked, wrapped = case.pop("chunked", False), case.pop("wrapped", False)
    model = dinov2_style_vit(**case)
    state = dinov2_layout(model, chunked)
    path = tmp_path / "dinov2.pth"
    torch.save(training_checkpoint(state) if wrapped else state, path)
    backbone = load_backbone("checkpoint", path, device="cpu")
    assert backbone.num_prefix_tokens == 1 + case.get("reg_tokens", 0)
    assert backbone.spec.patch_size == case.get("patch_size", 8)
    assert backbone.spec.input_size == case.get("img_size", 32)
    assert backbone.spec.in_chans == case["in_chans"]
    if case["in_chans"] == 5:
        assert backbone.spec.slots == CELL_PAINTING_SLOTS
    assert max_diff(model, backbone, case["in_chans"], case.get("img_size", 32)) < 1e-5


def test_registered_file_backbone_reads_registers_from_the_file(tmp_path):
    model = dinov2_style_vit(in_chans=5, img_size=32, patch_size=8, reg_tokens=4)
    path = tmp_path / "cp.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in dinov2_layout(model).items()}}, path)
    spec = BackboneSpec(name="test-cp-tiny", description="", paper="", source="file", arch=None,
                        slots=CELL_PAINTING_SLOTS, normalization="self", input_size=32, patch_size=8,
                        arch_kwargs=dict(img_size=32, patch_size=8, in_chans=5, embed_dim=128, depth=2,
                                         num_heads=2, init_values=1.0))
    register_backbone(spec)
    try:
        backbone = load_backbone("test-cp-tiny", path, device="cpu")
    finally:
        del BACKBONES["test-cp-tiny"]
    assert backbone.spec.slots == CELL_PAINTING_SLOTS and backbone.num_prefix_tokens == 5
    assert max_diff(model, backbone, 5, 32) < 1e-5


def test_cell_dino_entries_declare_the_papers_inputs():
    hpa, cp, adaptive = (BACKBONES[n] for n in ("cell-dino-hpa-vitl16", "cell-dino-cp-vits8", "channel-adaptive-dino-vitl16"))
    assert (hpa.in_chans, hpa.input_size, hpa.patch_size, hpa.arch_kwargs["embed_dim"]) == (4, 224, 16, 1024)
    assert (cp.slots, cp.input_size, cp.patch_size, cp.arch_kwargs["embed_dim"]) == (CELL_PAINTING_SLOTS, 128, 8, 384)
    assert adaptive.slots == (PROTEIN,) and adaptive.arch_kwargs["in_chans"] == 1
    assert {hpa.normalization, cp.normalization, adaptive.normalization} == {"self"}
    assert {hpa.source, cp.source, adaptive.source} == {"file"}


def test_a_file_that_does_not_fit_is_refused_naming_the_difference(tmp_path):
    model = dinov2_style_vit(in_chans=4, img_size=32, patch_size=8)
    path = tmp_path / "hpa_small.pth"
    torch.save(dinov2_layout(model), path)
    with pytest.raises(DinolocError) as refused:
        load_backbone("cell-dino-cp-vits8", path, device="cpu")
    message = str(refused.value)
    assert "expects 5 input channels, the file has 4" in message
    assert "embedding width expected 384, the file has 128" in message
    assert "the backbone has 12 transformer blocks, the file has 2" in message
    with pytest.raises(DinolocError, match="patch size expected 16, the file has 8"):
        load_backbone("cell-dino-hpa-vitl16", path, device="cpu")
    with pytest.raises(DinolocError, match="needs a local weights file"):
        load_backbone("channel-adaptive-dino-vitl16", device="cpu")
