"""The ``dinoloc`` command: the same engine as the widgets, from a terminal.

Every problem the user can fix ends with one line on stderr and exit status 2; nothing
half-written is left behind (all outputs are written atomically).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import __version__
from .core.errors import Cancelled, DinolocError


class TextProgress:
    """A one-line progress bar on stderr, redrawn at most 10 times a second."""

    line_open = False  # a bar is drawn and not finished: end its line before an error message

    def __init__(self, stream=None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self._last = 0.0
        self._what = None

    def __call__(self, done: int, total: int, what: str) -> None:
        now = time.monotonic()
        finished = total and done >= total
        if not finished and what == self._what and now - self._last < 0.1:
            return
        self._last, self._what = now, what
        filled = int(self.width * done / total) if total else 0
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{what:<24.24} [{bar}] {done}/{total}")
        if finished:
            self.stream.write("\n")
        TextProgress.line_open = not finished
        self.stream.flush()


def _say_error(message: str) -> None:
    if TextProgress.line_open:
        sys.stderr.write("\n")
        TextProgress.line_open = False
    print(message, file=sys.stderr)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive whole number")
    return value


def _image_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("images", nargs="+", type=Path, help="image files (TIFF, OME-TIFF, PNG, JPEG; HPA <id>_<colour>.png files are grouped per id)")
    parser.add_argument("--channels", help="stain of each channel, e.g. protein=1,nucleus=0 (stains: protein, nucleus, microtubules, er, other)")
    parser.add_argument("--channel-axis", type=int, help="axis of the channels when it cannot be detected")
    parser.add_argument("--labels", nargs="+", type=Path, default=[], help="label images with the cells (one per image, same order); default: segment")
    parser.add_argument("--nucleus-diameter", type=float, default=None, help="typical nucleus diameter in pixels")
    parser.add_argument("--cell-diameter", type=float, default=None, help="typical cell diameter in pixels")
    return parser


def _model_options() -> argparse.ArgumentParser:
    from .core.embedding import EMBEDDING_TYPES

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--backbone", default="dino-vits16", help="backbone name (dinoloc backbones lists them)")
    parser.add_argument("--weights", type=Path, help="local weights file (DINO checkpoint, .pth state dict or .safetensors)")
    parser.add_argument("--strategy", default="natural", help="channel strategy: natural, replicate, protein-only")
    parser.add_argument("--embedding", default="cls", choices=EMBEDDING_TYPES)
    parser.add_argument("--crop-size", type=_positive_int, help="crop size in image pixels (default: the backbone's input size)")
    parser.add_argument("--input-size", type=_positive_int, help="size crops are resized to (default: the backbone's)")
    parser.add_argument("--keep-background", action="store_true", help="keep pixels outside the cell instead of zeroing them")
    parser.add_argument("--batch-size", type=_positive_int, default=32)
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"))
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    return parser


def build_parser() -> argparse.ArgumentParser:
    from . import finetune_command
    from .finetune_command import add_training_options

    parser = argparse.ArgumentParser(prog="dinoloc", description="Per-cell protein localization with self-supervised ViTs.")
    parser.add_argument("--version", action="version", version=f"napari-dinoloc {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of unexpected errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    images, model = _image_options(), _model_options()

    sample = commands.add_parser("sample", help="write synthetic fields of view with ground truth")
    sample.add_argument("outdir", type=Path)
    sample.add_argument("--count", type=_positive_int, default=2)
    sample.add_argument("--size", type=_positive_int, default=512)
    sample.add_argument("--seed", type=int, default=0)

    segment = commands.add_parser("segment", parents=[images], help="find the cells; write label images and a cell table")
    segment.add_argument("--out-dir", type=Path, required=True)

    embed = commands.add_parser("embed", parents=[images, model], help="embed every cell; write an .npz")
    embed.add_argument("--out", type=Path, required=True)

    train = commands.add_parser("train", parents=[images, model], help="train a head on labelled cells; save a model bundle")
    train.add_argument("--annotations", type=Path, required=True, help="CSV with columns image, label, class")
    train.add_argument("--head", default="logistic", help="knn, logistic or mlp")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", type=Path, required=True, help="model bundle to write (.dinoloc)")

    predict = commands.add_parser("predict", parents=[images, model], help="predict every cell; write the per-cell CSV")
    predict.add_argument("--model", type=Path, help="model bundle from dinoloc train / finetune")
    predict.add_argument("--annotations", type=Path, help="instead of --model: train --head on these labelled cells first")
    predict.add_argument("--head", default="knn", help="head trained on --annotations: knn, logistic or mlp")
    predict.add_argument("--out", type=Path, required=True, help="CSV to write")

    evaluate = commands.add_parser("evaluate", parents=[images, model], help="cross-validated macro-F1 on labelled cells")
    evaluate.add_argument("--annotations", type=Path, required=True)
    evaluate.add_argument("--head", default="logistic")
    evaluate.add_argument("--folds", type=_positive_int, default=5)
    evaluate.add_argument("--fractions", type=float, nargs="*", default=None, help="also a low-shot curve at these fractions of labelled cells")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--out-dir", type=Path, help="write report.json and PNG figures here")
    evaluate.add_argument("--finetune", action="store_true", help="compare the frozen head with fine-tuning (cross-validated)")
    add_training_options(evaluate)

    finetune_command.add_parser(commands, [images, model])

    commands.add_parser("backbones", help="list the backbones and channel strategies")

    demo = commands.add_parser("demo", help="the main job: napari with the plugin and a sample, or headless without a display")
    demo.add_argument("outdir", type=Path, nargs="?", default=Path("dinoloc-demo"))
    demo.add_argument("--headless", action="store_true", help="run the pipeline without a window even when a display exists")
    demo.add_argument("--backbone", default=None, help="backbone for the headless run (default: dino-vits16, or random weights when offline)")
    demo.add_argument("--size", type=_positive_int, default=768)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from . import commands

    try:
        return commands.run(args) or 0
    except Cancelled as exc:
        _say_error(f"dinoloc: {exc}")
        return 130
    except KeyboardInterrupt:
        print("\ndinoloc: interrupted; nothing half-written was left behind.", file=sys.stderr)
        return 130
    except DinolocError as exc:
        _say_error(f"dinoloc: error: {exc}")
        return 2
    except Exception as exc:  # an engine bug: say so plainly, trace on request
        if args.debug:
            raise
        _say_error(f"dinoloc: unexpected error: {exc!r}. Re-run with --debug for the traceback and please report it.")
        return 1


if __name__ == "__main__":
    sys.exit(main())
