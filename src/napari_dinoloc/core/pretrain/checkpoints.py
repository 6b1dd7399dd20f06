"""DINO training checkpoints: written atomically in DINO's own layout, read without running pickled code.

Layout (as facebookresearch/dino main_dino.py): ``student`` and ``teacher`` state dicts with keys
``backbone.*`` and ``head.*`` (its MultiCropWrapper), ``optimizer``, ``epoch``, ``args`` (an
argparse.Namespace of plain values), plus ``dino_loss`` (the centre), ``step``, ``losses``. The registry's
reader picks ``teacher``, strips ``backbone.`` and drops ``head.*``, so the file loads as a backbone.
"""

from __future__ import annotations

import argparse
import io
from dataclasses import asdict
from pathlib import Path

from ..backbones import BackboneSpec, LoadedBackbone, save_backbone_weights
from ..errors import DinolocError
from ..files import atomic_write

FORMAT = "dinoloc-pretrain-1"


def spec_to_plain(spec: BackboneSpec) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}


def spec_from_plain(values: dict) -> BackboneSpec:
    values = dict(values)
    values["slots"] = tuple(values["slots"])
    return BackboneSpec(**values)


def make_args(settings_dict: dict, spec: BackboneSpec, total_steps: int, steps_per_epoch: int, precision: str,
              n_cells: int) -> argparse.Namespace:
    return argparse.Namespace(format=FORMAT, settings=settings_dict, spec=spec_to_plain(spec), total_steps=total_steps,
                              steps_per_epoch=steps_per_epoch, precision=precision, n_cells=n_cells,
                              arch=spec.arch or "vit", patch_size=spec.patch_size, out_dim=settings_dict["out_dim"])


def write_checkpoint(path: str | Path, student, teacher, optimizer, dino_loss, step: int, epoch: int,
                     args: argparse.Namespace, losses: list[float]) -> Path:
    """Write the run's state to ``path`` atomically: an interrupted write leaves the previous file intact."""
    import torch

    state = {
        "student": student.state_dict(), "teacher": teacher.state_dict(), "optimizer": optimizer.state_dict(),
        "dino_loss": dino_loss.state_dict(), "epoch": int(epoch), "step": int(step), "args": args,
        "losses": [float(x) for x in losses],
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return Path(path)


def read_training_checkpoint(path: str | Path) -> dict:
    """The whole training state of ``path`` (tensors, numbers and the args Namespace only: no code runs)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise DinolocError(f"The training checkpoint {path} does not exist: start a new run instead of resuming.")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DinolocError(f"Cannot read the training checkpoint {path.name} ({str(exc).splitlines()[0][:160]}). "
                           "Resume from another checkpoint or start a new run.") from exc
    args = state.get("args") if isinstance(state, dict) else None
    if not isinstance(args, argparse.Namespace) or getattr(args, "format", None) != FORMAT:
        raise DinolocError(f"{path.name} is not a napari-dinoloc pretraining checkpoint, so it cannot be resumed; "
                           "use it as a starting point instead.")
    return state


def export_teacher(teacher, spec: BackboneSpec, path: str | Path) -> Path:
    """The teacher's backbone as safetensors with its spec in the metadata (the file to ship or share)."""
    import torch

    backbone = teacher.backbone
    loaded = LoadedBackbone(spec=spec, model=backbone, weights_hash="", embed_dim=int(backbone.embed_dim),
                            device=torch.device("cpu"))
    save_backbone_weights(loaded, path)
    return Path(path)


def export_checkpoint_teacher(checkpoint: str | Path, path: str | Path) -> Path:
    """The teacher backbone of a training checkpoint, written as safetensors with its spec."""
    from .cell_model import build_vit

    state = read_training_checkpoint(checkpoint)
    spec = spec_from_plain(state["args"].spec)
    model = build_vit(spec)
    model.load_state_dict({k[len("backbone."):]: v for k, v in state["teacher"].items() if k.startswith("backbone.")})

    class _Teacher:  # export_teacher reads .backbone only
        backbone = model

    return export_teacher(_Teacher, spec, path)
