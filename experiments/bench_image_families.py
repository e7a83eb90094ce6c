"""The diffusers image families on tiny pipelines: early exit, shared passes, conditioning cache.

For each family (PixArt, SD3, Flux, Stable Diffusion U-Net) a small seeded random pipeline is
built with the real block count of its flagship (PixArt-XL-2: 28, SD3-medium: 24, FLUX.1: 19 + 38;
the U-Net has 5 stages here) and tiny widths, saved, and loaded through the product's loader.
Measured side by side in one run, on one batch:

* early exit: features of the middle block against features of the last block (a full pass):
  the time ratio, expected near (middle / last) for the transformers;
* shared pass: four timesteps in one pass (the product's path) against one call per timestep;
* conditioning cache: loading with an empty cache (the text encoders run once) against loading
  again (cache hit: the text encoders are not loaded).

Tiny widths make the fixed costs (VAE, embeddings, Python) weigh more than on real checkpoints;
the ratios show the mechanisms, not real-model speed-ups.

    python experiments/bench_image_families.py [--rows 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from difffeat_tune._paths import CACHE_ENV
from difffeat_tune.backbones._latent import LatentDiffusionBackbone
from difffeat_tune.backbones._tiny_pipelines import build_tiny_flux, build_tiny_pixart, build_tiny_sd, build_tiny_sd3
from difffeat_tune.backbones.flux import FluxBackbone
from difffeat_tune.backbones.pixart import PixArtBackbone
from difffeat_tune.backbones.sd import StableDiffusionBackbone
from difffeat_tune.backbones.sd3 import SD3Backbone
from difffeat_tune.data._base import ArrayImages, Split

TIMESTEPS = (10, 30, 50, 100)
#: family -> (builder with the flagship's depth, backbone class, load keyword arguments)
FAMILIES: dict[str, tuple[Callable[[Path], Path], type[LatentDiffusionBackbone], dict[str, object]]] = {
    "pixart": (lambda folder: build_tiny_pixart(folder, layers=28), PixArtBackbone, {}),
    "sd3": (lambda folder: build_tiny_sd3(folder, layers=24), SD3Backbone, {}),
    "flux": (lambda folder: build_tiny_flux(folder, joint=19, single=38), FluxBackbone, {"resolution": 16}),
    "sd": (build_tiny_sd, StableDiffusionBackbone, {}),
}


def _best(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    split = Split("train", tuple(f"r{i}" for i in range(args.rows)), np.zeros((args.rows, 1), np.int8), None,
                  ArrayImages(rng.integers(0, 256, (args.rows, 64, 64, 3), dtype=np.uint8)))
    print(f"{'family':8} {'blocks':>6} {'mid/last time':>14} {'blocks ratio':>12} {'4 t shared vs 4 calls':>22} "
          f"{'load miss s':>11} {'load hit s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for family, (build, cls, kwargs) in FAMILIES.items():
            folder = build(Path(tmp) / family)
            os.environ[CACHE_ENV] = str(Path(tmp) / f"cache-{family}")
            start = time.perf_counter()
            backbone = cls.load(str(folder), device="cpu", **kwargs)  # type: ignore[arg-type]
            load_miss = time.perf_counter() - start
            start = time.perf_counter()
            cls.load(str(folder), device="cpu", **kwargs)  # type: ignore[arg-type]
            load_hit = time.perf_counter() - start
            batch = backbone.encode(split, range(args.rows))
            last, mid = backbone.num_blocks, backbone.num_blocks // 2
            full = _best(lambda: backbone.features(batch, [50], [last]), args.repeats)
            early = _best(lambda: backbone.features(batch, [50], [mid]), args.repeats)
            shared = _best(lambda: backbone.features(batch, list(TIMESTEPS), [mid]), args.repeats)
            separate = _best(lambda: [backbone.features(batch, [t], [mid]) for t in TIMESTEPS], args.repeats)
            print(f"{family:8} {last:6d} {early / full:14.2f} {mid / last:12.2f} {separate / shared:21.2f}x "
                  f"{load_miss:11.2f} {load_hit:10.2f}")


if __name__ == "__main__":
    main()
