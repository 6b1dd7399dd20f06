"""Screens through Dask against the plain loop: cells/s and peak memory of the client and of each worker.

    .venv/bin/python benchmarks/bench_screen.py                         # 200 fields of 2048x2048 (hours on 2 cores)
    .venv/bin/python benchmarks/bench_screen.py --fields 24 --size 1024 --counts 12 24

Writes ``--fields`` synthetic fields (core.synthetic.make_field, TIFF) to ``--workdir``, then for each
count in ``--counts`` runs ``dinoloc embed`` on that many of them, each mode in a fresh process:
  plain     today's loop in one process (no Dask): torch on all cores
  dask-1    --workers 1: a LocalCluster of one worker process, torch on all cores (its share)
  dask-2    --workers 2: two workers, torch on half the cores each
Every mode runs with OMP_NUM_THREADS unset and OMP_WAIT_POLICY=PASSIVE (``--active-wait``: the OpenMP
default): on a machine whose cores other jobs keep busy, OpenMP threads that spin at each barrier while
their partner is descheduled made embedding 20x slower, in the plain loop as in a worker.
and prints, per run: cells, wall seconds, cells/s over the whole command and over the steady part
(first image done to last image done: imports and cluster start left out), the peak RSS of the client
and of each worker process (psutil, sampled every 0.2 s), and Dask's overhead against the plain loop
at equal workers (goal <= 10 %). Memory flat in the number of images: compare the counts' peaks.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def write_fields(folder: Path, count: int, size: int) -> list[Path]:
    import tifffile

    from napari_dinoloc.core.synthetic import make_field

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        path = folder / f"field_{seed:04d}.tif"
        if not path.exists():
            tifffile.imwrite(path, make_field(seed=seed, shape=(size, size)).image)
        paths.append(path)
    return paths


class Sampler(threading.Thread):
    """Peak RSS of a process and each of its descendants."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peaks, self.stop = pid, {}, threading.Event()

    def run(self):
        import psutil

        root = psutil.Process(self.pid)
        while not self.stop.is_set():
            try:
                for proc in [root, *root.children(recursive=True)]:
                    rss = proc.memory_info().rss
                    self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0), rss)
            except psutil.Error:
                pass
            time.sleep(0.2)


def run_mode(mode: str, images: list[Path], out: Path, backbone: str, passive: bool = True) -> dict:
    cmd = [sys.executable, "-m", "napari_dinoloc.cli", "embed", *map(str, images), "--out", str(out),
           "--channels", "nucleus=0,protein=1", "--backbone", backbone, "--no-cache"]
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}  # the runner decides
    env["PYTHONPATH"] = str(ROOT / "src")
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if mode != "plain":
        cmd += ["--workers", mode.split("-")[1]]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(proc.pid)
    sampler.start()
    done_times = []
    for line in proc.stderr:  # one line per finished image: 'Images: k/N' (Dask) or 'Embedding cells: n/n done'
        if re.match(r"Images: [1-9]\d*/\d+", line) or (line.startswith("Embedding cells") and "done" in line):
            done_times.append(time.perf_counter())
    stdout = proc.stdout.read()
    proc.wait()
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed ({proc.returncode}): {stdout}")
    cells = int(re.search(r": (\d+) cells", stdout).group(1))
    client = sampler.peaks.pop(proc.pid, 0) / 2**20
    workers = sorted((rss / 2**20 for rss in sampler.peaks.values() if rss > 150 * 2**20), reverse=True)
    shards = out.with_name(out.name + ".shards")
    if shards.is_dir():  # Dask runs log only start and end off a terminal: a shard's checksum marks its image done
        done_times = sorted(p.stat().st_mtime for p in shards.glob("*.sha256"))  # only differences are used
    steady = None
    if len(done_times) > 2:
        steady = cells * (len(done_times) - 1) / len(done_times) / (done_times[-1] - done_times[0])
    return {"mode": mode, "images": len(images), "cells": cells, "wall": wall, "rate": cells / wall,
            "steady": steady, "client_mb": client, "workers_mb": workers[: int(mode.split("-")[1])] if "-" in mode else []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fields", type=int, default=200)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--counts", type=int, nargs="+", default=[50, 200], help="images per run (memory flatness)")
    parser.add_argument("--modes", nargs="+", default=["plain", "dask-1", "dask-2"])
    parser.add_argument("--backbone", default="dinoloc-cells")
    parser.add_argument("--active-wait", action="store_true", help="leave OMP_WAIT_POLICY to OpenMP's default")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "dinoloc-bench-screen")
    args = parser.parse_args()
    images = write_fields(args.workdir / f"fields_{args.size}", max(max(args.counts), args.fields), args.size)
    print(f"{'images':>6} {'mode':<7} {'cells':>6} {'wall s':>7} {'cells/s':>8} {'steady':>7} {'client MB':>9}  workers MB")
    results = {}
    for count in args.counts:
        for mode in args.modes:
            out = args.workdir / f"run_{count}_{mode}" / "embeddings.npz"
            subprocess.run(["rm", "-rf", str(out.parent)], check=True)
            out.parent.mkdir(parents=True)
            r = run_mode(mode, images[:count], out, args.backbone, passive=not args.active_wait)
            results[(count, mode)] = r
            steady = f"{r['steady']:7.2f}" if r["steady"] else "      -"
            print(f"{count:>6} {mode:<7} {r['cells']:>6} {r['wall']:7.1f} {r['rate']:8.2f} {steady} {r['client_mb']:9.0f}  "
                  f"{' '.join(f'{w:.0f}' for w in r['workers_mb']) or '-'}", flush=True)
        plain, one = results.get((count, "plain")), results.get((count, "dask-1"))
        if plain and one:
            print(f"  Dask overhead at 1 worker, {count} images: whole command "
                  f"{100 * (plain['rate'] / one['rate'] - 1):+.1f} %"
                  + (f", steady part {100 * (plain['steady'] / one['steady'] - 1):+.1f} %"
                     if plain["steady"] and one["steady"] else ""))


if __name__ == "__main__":
    main()
