"""Backbones: checkpoint layouts load exactly, wrong or unsafe files are refused, no silent fallbacks."""

import argparse
import hashlib

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from napari_dinoloc.core import backbones, devices, network
from napari_dinoloc.core.backbones import BACKBONES, load_backbone, read_checkpoint, save_backbone_weights
from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.stains import HPA_SLOTS, PROTEIN, RGB_SLOTS

TINY = dict(img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2, num_classes=0)  # 128 dims: 2 heads of 64


def make_vit(in_chans=3, seed=1, **overrides):
    torch.manual_seed(seed)
    model = VisionTransformer(**{**TINY, "in_chans": in_chans, **overrides}).eval()
    with torch.no_grad():  # timm zero-inits some tensors; make every weight matter
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model


def reference_tokens(model, x):
    with torch.inference_mode():
        return model.forward_features(x)


def loaded_tokens(backbone, x):
    with torch.inference_mode():
        return backbone.tokens(x)


def dino_training_checkpoint(teacher, student):
    """The layout of DINO's checkpoint.pth: DDP + MultiCropWrapper prefixes, a DINO head, args."""
    def wrapped(model, prefix):
        state = {f"{prefix}backbone.{k}": v.clone() for k, v in model.state_dict().items()}
        state[f"{prefix}head.mlp.0.weight"] = torch.randn(256, TINY["embed_dim"])
        state[f"{prefix}head.mlp.0.bias"] = torch.randn(256)
        state[f"{prefix}head.last_layer.weight_g"] = torch.ones(1000, 1)
        state[f"{prefix}head.last_layer.weight_v"] = torch.randn(1000, 64)
        return state

    return {
        "student": wrapped(student, "module."),
        "teacher": wrapped(teacher, "module."),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=8, out_dim=1000, lr=5e-4, output_dir="/tmp/x"),
        "dino_loss": {"center": torch.zeros(1, 1000)},
    }


@pytest.fixture
def x3():
    return torch.rand(2, 3, 32, 32)


def test_dino_training_checkpoint_gives_the_teacher(tmp_path, x3):
    teacher, student = make_vit(seed=1), make_vit(seed=2)
    path = tmp_path / "checkpoint.pth"
    torch.save(dino_training_checkpoint(teacher, student), path)

    backbone = load_backbone("checkpoint", weights=path, device="cpu")

    expected = reference_tokens(teacher, x3)
    got = loaded_tokens(backbone, x3)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-5
    assert (got[:, 0] - reference_tokens(student, x3)[:, 0]).abs().max() > 1e-3  # not the student
    assert backbone.spec.slots == RGB_SLOTS and backbone.spec.normalization == "imagenet"
    assert backbone.embed_dim == 128 and backbone.spec.patch_size == 8 and backbone.spec.input_size == 32


def test_plain_state_dict_pth(tmp_path, x3):
    model = make_vit(seed=3)
    path = tmp_path / "dino_deitsmall8_pretrain.pth"
    torch.save(model.state_dict(), path)
    backbone = load_backbone("checkpoint", weights=path, device="cpu")
    assert (loaded_tokens(backbone, x3) - reference_tokens(model, x3)).abs().max() < 1e-5


def test_nested_state_dict_and_safetensors(tmp_path, x3):
    model = make_vit(seed=4)
    nested = tmp_path / "nested.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, nested)
    plain = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(plain))
    for path in (nested, plain):
        backbone = load_backbone("checkpoint", weights=path, device="cpu")
        assert (loaded_tokens(backbone, x3) - reference_tokens(model, x3)).abs().max() < 1e-5


def test_four_channel_checkpoint_is_an_hpa_backbone(tmp_path):
    model = make_vit(in_chans=4, seed=5)
    path = tmp_path / "hpa.pth"
    torch.save(dino_training_checkpoint(model, make_vit(in_chans=4, seed=6)), path)
    backbone = load_backbone("checkpoint", weights=path, device="cpu")
    assert backbone.spec.slots == HPA_SLOTS
    assert backbone.spec.normalization == "self"
    x = torch.rand(2, 4, 32, 32)
    assert (loaded_tokens(backbone, x) - reference_tokens(model, x)).abs().max() < 1e-5


def test_one_channel_checkpoint_is_protein_only(tmp_path):
    path = tmp_path / "one.safetensors"
    save_file({k: v.contiguous() for k, v in make_vit(in_chans=1).state_dict().items()}, str(path))
    assert load_backbone("checkpoint", weights=path, device="cpu").spec.slots == (PROTEIN,)


def test_registry_name_with_local_file_uses_that_architecture(tmp_path):
    tiny = BACKBONES["random-tiny"].arch_kwargs
    model = make_vit(seed=7, **tiny)
    path = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), path)
    backbone = load_backbone("random-tiny", weights=path, device="cpu")
    x = torch.rand(2, 3, 32, 32)
    assert (loaded_tokens(backbone, x) - reference_tokens(model, x)).abs().max() < 1e-5
    assert backbone.weights_hash == hashlib.sha256(path.read_bytes()).hexdigest()


def test_pos_embed_of_another_image_size_is_resampled(tmp_path):
    tiny = BACKBONES["random-tiny"].arch_kwargs
    path = tmp_path / "at64.pth"
    torch.save(make_vit(**{**tiny, "img_size": 64}).state_dict(), path)
    backbone = load_backbone("random-tiny", weights=path, device="cpu")
    assert backbone.model.pos_embed.shape[1] == 1 + (32 // 8) ** 2


def test_mismatched_channels_are_refused_naming_the_difference(tmp_path):
    path = tmp_path / "rgb.pth"
    torch.save(make_vit(**BACKBONES["random-tiny"].arch_kwargs).state_dict(), path)
    four = backbones.BackboneSpec(
        name="tiny-hpa", description="", paper="", source="file", arch=None, slots=HPA_SLOTS,
        normalization="self", input_size=32, patch_size=8, arch_kwargs={**BACKBONES["random-tiny"].arch_kwargs, "in_chans": 4},
    )
    backbones.register_backbone(four)
    try:
        with pytest.raises(DinolocError, match="expects 4 input channels, the file has 3"):
            load_backbone("tiny-hpa", weights=path, device="cpu")
    finally:
        del BACKBONES["tiny-hpa"]


def test_mismatched_depth_and_width_are_refused(tmp_path):
    tiny = BACKBONES["random-tiny"].arch_kwargs
    deeper = tmp_path / "deeper.pth"
    torch.save(make_vit(**{**tiny, "depth": 3}).state_dict(), deeper)
    with pytest.raises(DinolocError, match="2 transformer blocks, the file has 3") as info:
        load_backbone("random-tiny", weights=deeper, device="cpu")
    assert "blocks.2." in str(info.value)  # the unexpected keys are listed
    wider = tmp_path / "wider.pth"
    torch.save(make_vit(**{**tiny, "embed_dim": 128}).state_dict(), wider)
    with pytest.raises(DinolocError, match="embedding width expected 64, the file has 128"):
        load_backbone("random-tiny", weights=wider, device="cpu")


def test_hpa_backbone_refuses_an_rgb_checkpoint(tmp_path):
    path = tmp_path / "rgb_vits16.pth"
    torch.save({"patch_embed.proj.weight": torch.zeros(384, 3, 16, 16)}, path)
    with pytest.raises(DinolocError, match="expects 4 input channels, the file has 3"):
        load_backbone("hpa-dino-vits16", weights=path, device="cpu")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken zip" * 10])
def test_corrupt_file_is_refused_clearly(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(DinolocError, match="damaged or not a PyTorch/safetensors checkpoint"):
        load_backbone("checkpoint", weights=path, device="cpu")


def test_truncated_checkpoint_and_safetensors_are_refused(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(make_vit().state_dict(), good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:5000])
    sft = tmp_path / "cut.safetensors"
    save_file({k: v.contiguous() for k, v in make_vit().state_dict().items()}, str(sft))
    sft.write_bytes(sft.read_bytes()[:3000])
    for path in (cut, sft):
        with pytest.raises(DinolocError, match="damaged"):
            read_checkpoint(path)


RAN = []


class Payload:
    def __reduce__(self):
        return (RAN.append, ("code ran",))


def test_pickled_object_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": make_vit().state_dict(), "extra": Payload()}, path)
    RAN.clear()
    with pytest.raises(DinolocError, match="pickled Python object .*could run code"):
        load_backbone("checkpoint", weights=path, device="cpu")
    assert RAN == []


def test_missing_file_and_file_backbone_without_weights(tmp_path):
    with pytest.raises(DinolocError, match="does not exist"):
        load_backbone("checkpoint", weights=tmp_path / "nope.pth", device="cpu")
    with pytest.raises(DinolocError, match="needs a local weights file"):
        load_backbone("hpa-dino-vits16", device="cpu")
    with pytest.raises(DinolocError, match="Unknown backbone"):
        load_backbone("resnet", device="cpu")


def test_offline_hub_download_explains_how_to_give_a_file(monkeypatch):
    import timm

    def offline(*args, pretrained=False, **kwargs):
        assert pretrained, "only the hub download should be attempted"
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    monkeypatch.setattr(network, "hub_reachable", lambda: True)
    with pytest.raises(DinolocError, match="could not be downloaded.*--weights"):
        load_backbone("dino-vits16", device="cpu")


def test_without_network_the_hub_is_asked_offline_once_and_says_so(monkeypatch):
    import timm
    from huggingface_hub import constants

    seen = []

    def cache_only(*args, pretrained=False, **kwargs):
        seen.append(constants.HF_HUB_OFFLINE)
        raise OSError("not in the local cache")

    monkeypatch.setattr(timm, "create_model", cache_only)
    monkeypatch.setattr(network, "hub_reachable", lambda: False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(DinolocError, match="No network.*not cached.*--weights") as raised:
        load_backbone("dino-vits16", device="cpu")
    assert seen == [True]  # one attempt, served from the cache only: no download retries
    assert "Retry" not in str(raised.value)


def test_hub_reachable_is_false_when_switched_off(monkeypatch):
    network.hub_reachable.cache_clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        assert network.hub_reachable() is False
    finally:
        network.hub_reachable.cache_clear()


def test_random_weights_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = load_backbone("random-tiny", device="cpu")
    assert torch.equal(torch.get_rng_state(), state)
    second = load_backbone("random-tiny", device="cpu")
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert first.weights_hash == "random:0"
    assert not first.model.training


def test_saved_backbone_reloads_exactly_with_its_spec(tmp_path):
    """Heads are not stored in weights: the spec saved beside them keeps random-tiny's 2 heads of 32 dims."""
    original = load_backbone("random-tiny", device="cpu")
    path = tmp_path / "tuned.safetensors"
    save_backbone_weights(original, path)
    reloaded = load_backbone("checkpoint", weights=path, device="cpu")
    assert reloaded.spec.slots == original.spec.slots and reloaded.spec.input_size == 32
    x = torch.rand(2, 3, 32, 32)
    assert (loaded_tokens(reloaded, x) - loaded_tokens(original, x)).abs().max() < 1e-5


def test_weights_hash_is_cached_per_file_version(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    path.write_bytes(b"abc")
    calls = []
    from napari_dinoloc.core.backbones import _checkpoint

    real = _checkpoint.hash_file
    monkeypatch.setattr(_checkpoint, "hash_file", lambda p: calls.append(p) or real(p))
    assert backbones.weights_file_hash(path) == hashlib.sha256(b"abc").hexdigest()
    backbones.weights_file_hash(path)
    assert len(calls) == 1
    path.write_bytes(b"abcd")
    assert backbones.weights_file_hash(path) == hashlib.sha256(b"abcd").hexdigest()


def test_registry_entries():
    for name in ("dino-vits16", "dino-vits8", "dino-vitb16", "dino-vitb8", "dinov2-vits14",
                 "hpa-dino-vits16", "checkpoint", "random", "random-tiny"):
        assert name in BACKBONES
    assert BACKBONES["dino-vitb8"].arch == "vit_base_patch8_224.dino"
    assert BACKBONES["dinov2-vits14"].input_size == 224 and BACKBONES["dinov2-vits14"].patch_size == 14
    assert BACKBONES["hpa-dino-vits16"].slots == HPA_SLOTS and BACKBONES["hpa-dino-vits16"].normalization == "self"


def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert devices.autocast_dtype(cpu, "auto") is torch.bfloat16
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert devices.autocast_dtype(cpu, "auto") is None


def test_devices():
    assert devices.resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert devices.resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(DinolocError, match="no"):
            devices.resolve_device("cuda")
        assert "auto → cpu (no CUDA or MPS found)" == devices.describe_device("auto") or torch.backends.mps.is_available()
    with pytest.raises(DinolocError, match="Unknown device"):
        devices.resolve_device("tpu")
    cpu = torch.device("cpu")
    assert devices.autocast_dtype(cpu, "fp32") is None
    assert devices.autocast_dtype(cpu, "bf16") is torch.bfloat16
    assert devices.autocast_dtype(cpu, "fp16") is torch.float16
    with pytest.raises(DinolocError, match="Unknown precision"):
        devices.autocast_dtype(cpu, "int8")
