"""Client memory of a screen run's Parquet, Zarr and AnnData outputs, at several image counts.

    .venv/bin/python benchmarks/bench_screen_outputs.py --counts 8 32
    .venv/bin/python benchmarks/bench_screen_outputs.py --counts 8 32 --src /tmp/older/src   # another checkout

Writes ``max(counts)`` synthetic fields with their label images (``dinoloc sample``) to ``--workdir``,
trains a model on three of them (``random-tiny`` backbone: seconds), then for each count runs, in a fresh
process, ``dinoloc predict <folder of N fields> --model … --parquet --zarr --h5ad`` in that process (the
screen runner, one process, no Dask) and prints: cells, the process's peak RSS (``ru_maxrss``: imports,
model and run together), and for the step that writes the three outputs alone the peak of Python and
numpy allocations (``tracemalloc``) and the RSS it added. Flat in the number of images: compare the counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "random-tiny", "--crop-size", "64", "--channels", "nucleus=0,protein=1"]


def child(folder: Path, model: Path, out: Path) -> dict:
    """In the measured process: one screen run with the three outputs; the step's memory."""
    import resource
    import tracemalloc

    import psutil

    from napari_dinoloc.cli import _screen, main

    for package in ("pandas", "pyarrow.parquet", "pyarrow.dataset", "zarr", "anndata", "h5py"):
        __import__(package)  # imported before tracing: the step's peak is the data it holds, not module code
    step = {}
    original = _screen.merged_outputs

    def measured(*args, **kwargs):
        before = psutil.Process().memory_info().rss
        tracemalloc.start()
        try:
            return original(*args, **kwargs)
        finally:
            step["traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            step["rss_added_mb"] = (psutil.Process().memory_info().rss - before) / 2**20

    _screen.merged_outputs = measured
    code = main(["predict", str(folder), "--model", str(model), "--out", str(out / "cells.csv"), "--no-cache",
                 "--channels", "nucleus=0,protein=1", "--parquet", str(out / "cells.parquet"),
                 "--zarr", str(out / "emb.zarr"), "--h5ad", str(out / "cells.h5ad")])
    cells = sum(1 for _ in open(out / "cells.csv")) - 1
    return {"code": code, "cells": cells, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **step}


def prepare(workdir: Path, count: int, size: int, src: Path) -> Path:
    """The fields (with labels) and a model trained on three of them."""
    samples = workdir / f"samples_{size}"
    env = {**os.environ, "PYTHONPATH": str(src)}
    if not (samples / "model.dinoloc").is_file() or len(list(samples.glob("field_*_labels.tif"))) < count:
        shutil.rmtree(samples, ignore_errors=True)
        cli = [sys.executable, "-m", "napari_dinoloc.cli"]
        subprocess.run([*cli, "sample", str(samples), "--count", str(count), "--size", str(size)], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        images = [str(samples / f"field_{i:03d}.tif") for i in range(3)]
        labels = [str(samples / f"field_{i:03d}_labels.tif") for i in range(3)]
        subprocess.run([*cli, "train", *images, "--labels", *labels, "--annotations", str(samples / "cells.csv"),
                        "--out", str(samples / "model.dinoloc"), *TINY], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the napari_dinoloc source to measure")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "dinoloc-bench-screen-outputs")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*map(Path, args.child))))
        return
    samples = prepare(args.workdir, max(args.counts), args.size, args.src)
    env = {**os.environ, "PYTHONPATH": str(args.src), "DINOLOC_CACHE_DIR": str(args.workdir / "cache")}
    print(f"{'images':>6} {'cells':>6} {'process peak RSS MB':>20} {'outputs step: traced peak MB':>29} {'RSS added MB':>13}")
    for count in args.counts:
        run = args.workdir / f"run_{count}"
        shutil.rmtree(run, ignore_errors=True)
        fields = run / "fields"
        fields.mkdir(parents=True)
        for i in range(count):
            for suffix in ("", "_labels"):
                os.symlink(samples / f"field_{i:03d}{suffix}.tif", fields / f"field_{i:03d}{suffix}.tif")
        done = subprocess.run([sys.executable, __file__, "--child", str(fields), str(samples / "model.dinoloc"),
                               str(run)], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{count:>6} {r['cells']:>6} {r['peak_rss_mb']:>20.0f} {r['traced_peak_mb']:>29.2f} {r['rss_added_mb']:>13.1f}",
              flush=True)


if __name__ == "__main__":
    main()
