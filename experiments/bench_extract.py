"""One-pass extraction against one forward pass per (t, b), measured side by side in one run.

For each tiny backbone (full depth, small width) and one timestep, three ways to get the
paper's five blocks {8, 12, 16, 20, 24}:

* one-pass: ``backbone.features(batch, [t], blocks)``: hooks on the five blocks, the pass stops
  after block 24 (the product's code path);
* per (t, b): one full forward pass per block, reading the block with a hook, as earlier
  diffusion-feature code does (ddae-style, no early exit);
* one full forward pass with no hooks: the reference cost of running the model once.

Printed: samples/s of each, the one-pass speed-up over per-(t, b), and the one-pass cost relative
to one full pass (expected at most 1.0: 24 of 28 DiT blocks, 24 of 24 Plaid blocks).

Then, side by side in the same run (``--pipeline``, on by default):

* the input pipeline alone: decode + resize + centre-crop (256 px) of COCO-sized JPEG files
  (640 x 480, written by the script), 0 vs ``--workers`` loader workers;
* the model alone (VAE + transformer on batches prepared beforehand) and the whole extraction
  with 0 vs ``--workers`` workers, on the DiT-XL/2 architecture (28 blocks, width 1152, patch 2,
  256 px; random weights, a small random VAE), so that one sees which of input and model limits;
  the goal is an extraction rate of at least 0.9 x min(input rate, model rate) with workers;
* local extraction vs ``extract_ray`` with 2 CPU actors on the tiny backbones (same store).

    python experiments/bench_extract.py [--rows 256] [--batch 64] [--repeats 3]
        [--jpegs 256] [--workers 2] [--xl-rows 16] [--xl-batch 8] [--no-pipeline] [--no-ray]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from difffeat_tune._loader import input_batches
from difffeat_tune.backbones._base import Backbone, Encoded
from difffeat_tune.backbones._family import LoadOptions
from difffeat_tune.backbones._hooks import masked_mean_pool, mean_pool
from difffeat_tune.backbones._image import pixel_stage
from difffeat_tune.backbones._registry import load_backbone, load_image_backbone, load_text_backbone
from difffeat_tune.backbones.dit import build_tiny_dit, load_dit
from difffeat_tune.data._base import ArrayImages, Dataset, FileImages, Split
from difffeat_tune.extract import ExtractSettings, extract
from difffeat_tune.store import FeatureStore

BLOCKS = (8, 12, 16, 20, 24)


def _split(rows: int) -> Split:
    rng = np.random.default_rng(0)
    words = ["a red circle", "two blue squares on the left", "a green star near a ring", "hearts and moons"]
    return Split("bench", tuple(f"r{i}" for i in range(rows)), np.zeros((rows, 1), np.int8),
                 tuple(f"{words[i % 4]} number {i}" for i in range(rows)),
                 ArrayImages(rng.integers(0, 256, (rows, 64, 64, 3), dtype=np.uint8)))


def _model_call(backbone: Backbone, batch: Encoded, t: int) -> tuple[torch.nn.ModuleList, Callable[[], object],
                                                                      Callable[[torch.Tensor], torch.Tensor]]:
    """The backbone's blocks, a full forward pass at ``t`` (noising included) and its pooling."""
    if backbone.modality == "image":

        def forward() -> object:
            n = len(batch)
            return backbone.transformer(backbone.noisy_latents(batch, t),  # type: ignore[attr-defined]
                                        timestep=torch.full((n,), t), class_labels=torch.full((n,), 1000))

        return backbone.transformer.transformer_blocks, forward, mean_pool  # type: ignore[attr-defined]

    def forward_text() -> object:
        z = backbone.noisy_embeddings(batch, [t])[t]  # type: ignore[attr-defined]
        gamma = backbone.schedule_at([t])[0].expand(len(batch)).to(backbone.device)  # type: ignore[attr-defined]
        return backbone.net(z, gamma, backbone.normalized_embeddings)  # type: ignore[attr-defined]

    return backbone.net.blocks, forward_text, masked_mean_pool(batch.tensors["mask"])  # type: ignore[attr-defined]


def _time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench(backbone: Backbone, t: int, rows: int, batch_size: int, repeats: int) -> dict[str, float]:
    split = _split(rows)
    batches = [backbone.encode(split, range(i, min(rows, i + batch_size))) for i in range(0, rows, batch_size)]

    def one_pass() -> None:
        for batch in batches:
            backbone.features(batch, [t], BLOCKS)

    def per_block() -> None:
        for batch in batches:
            blocks, forward, pool = _model_call(backbone, batch, t)
            for b in BLOCKS:
                seen: dict[str, torch.Tensor] = {}
                handle = blocks[b - 1].register_forward_hook(lambda m, a, o: seen.__setitem__("h", pool(o)))
                try:
                    with torch.inference_mode():
                        forward()
                finally:
                    handle.remove()

    def full_pass() -> None:
        for batch in batches:
            _, forward, _ = _model_call(backbone, batch, t)
            with torch.inference_mode():
                forward()

    secs = {"one-pass": _time(one_pass, repeats), "per (t, b)": _time(per_block, repeats),
            "one full pass": _time(full_pass, repeats)}
    return {name: rows / s for name, s in secs.items()} | {
        "speed-up": secs["per (t, b)"] / secs["one-pass"],
        "cost vs full pass": secs["one-pass"] / secs["one full pass"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-t", type=int, default=50)
    parser.add_argument("--text-t", type=int, default=0, help="0 = no DDIM inversion steps in any variant")
    parser.add_argument("--jpegs", type=int, default=256, help="JPEG files for the input-pipeline measurement")
    parser.add_argument("--workers", type=int, default=2, help="loader workers compared with 0")
    parser.add_argument("--xl-rows", type=int, default=16, help="images through the DiT-XL/2 architecture")
    parser.add_argument("--xl-batch", type=int, default=8)
    parser.add_argument("--no-pipeline", dest="pipeline", action="store_false")
    parser.add_argument("--no-ray", dest="ray", action="store_false")
    args = parser.parse_args()
    os.environ.setdefault("DIFFFEAT_TUNE_CACHE", str(Path(tempfile.gettempdir()) / "difffeat-bench-cache"))
    torch.manual_seed(0)
    print(f"tiny backbones, {args.rows} rows, batch {args.batch}, blocks {list(BLOCKS)}, device cpu, "
          f"torch threads {torch.get_num_threads()}, best of {args.repeats}")
    header = f"{'backbone':<22}{'one-pass/s':>12}{'per (t,b)/s':>13}{'full pass/s':>13}{'speed-up':>10}{'cost/full':>11}"
    print(header)
    print("-" * len(header))
    for label, backbone, t in (("tiny DiT  (t=%d)" % args.image_t, load_image_backbone("tiny", device="cpu"), args.image_t),
                               ("tiny Plaid (t=%d)" % args.text_t, load_text_backbone("tiny", device="cpu"), args.text_t)):
        r = bench(backbone, t, args.rows, args.batch, args.repeats)
        print(f"{label:<22}{r['one-pass']:>12,.0f}{r['per (t, b)']:>13,.0f}{r['one full pass']:>13,.0f}"
              f"{r['speed-up']:>9.2f}x{r['cost vs full pass']:>11.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.pipeline:
            bench_pipeline(Path(tmp), args.jpegs, args.workers, args.xl_rows, args.xl_batch)
        if args.ray:
            bench_ray(Path(tmp), args.rows, args.batch)


def _jpeg_split(folder: Path, n: int) -> Split:
    """``n`` random 640 x 480 JPEG files (COCO's usual size), as a split of files."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"coco-{i:05d}.jpg"
        # Smooth random images (upsampled noise) compress like photographs, not like white noise.
        small = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
        Image.fromarray(small).resize((640, 480), Image.BILINEAR).save(path, quality=90)
        paths.append(str(path))
    ids = tuple(f"img{i:05d}" for i in range(n))
    return Split("bench", ids, np.zeros((n, 1), np.int8), None, FileImages(paths, ids))


def _rate(rows: int, fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return rows / (time.perf_counter() - start)


def bench_pipeline(folder: Path, jpegs: int, workers: int, xl_rows: int, xl_batch: int) -> None:
    split = _jpeg_split(folder, jpegs)
    jobs = [(split, range(i, min(jpegs, i + 32))) for i in range(0, jpegs, 32)]
    stage = pixel_stage(256)
    rates = {w: _rate(jpegs, lambda w=w: list(input_batches(stage, jobs, w))) for w in (0, workers)}
    print(f"\ninput pipeline alone: {jpegs} JPEG files 640x480 -> 256 px crops")
    print(f"  0 workers: {rates[0]:8.1f} images/s   {workers} workers: {rates[workers]:8.1f} images/s   "
          f"ratio {rates[workers] / rates[0]:.2f}x")

    xl = load_dit(build_tiny_dit(folder / "dit-xl", width=1152, heads=16, image_size=256), device="cpu")
    (folder / "xl-images").mkdir()
    sub = _jpeg_split(folder / "xl-images", xl_rows)
    dataset = Dataset("bench", ("x",), "multilabel", {"bench": sub})
    t, block = [50], [4]
    batches = [xl.input_stage()(sub, range(i, min(xl_rows, i + xl_batch))) for i in range(0, xl_rows, xl_batch)]
    model = _rate(xl_rows, lambda: [xl.features(xl.to_device(b), t, block) for b in batches])
    full = {w: extract(dataset, xl, FeatureStore(folder / f"store-xl-{w}"), t, block, batch_size=xl_batch,
                       loader_workers=w).rows_per_second for w in (0, workers)}
    limit = min(rates[workers], model)
    print(f"DiT-XL/2 architecture (random weights, 256 px, t={t[0]}, block {block[0]}), {xl_rows} images, "
          f"batch {xl_batch}, torch threads {torch.get_num_threads()}")
    print(f"  model alone: {model:.2f} images/s   extraction 0 workers: {full[0]:.2f}   {workers} workers: "
          f"{full[workers]:.2f}   with workers / min(input, model) = {full[workers] / limit:.2f} (goal >= 0.90)")


def bench_ray(folder: Path, rows: int, batch: int) -> None:
    import ray

    from difffeat_tune.extract_ray import extract_ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        dataset = Dataset("bench", ("x",), "multilabel", {"bench": _split(rows)})
        print(f"\nlocal vs Ray (2 CPU actors), tiny backbones, {rows} rows, batch {batch}, 2 timesteps x 5 blocks")
        for modality, timesteps in (("image", [10, 50]), ("text", [0, 20])):
            load = partial(load_backbone, "tiny", modality, LoadOptions(device="cpu"))
            backbone = load()
            local = extract(dataset, backbone, FeatureStore(folder / f"local-{modality}"), timesteps, BLOCKS,
                            batch_size=batch, rows_per_part=rows // 4, loader_workers=0)
            remote = extract_ray(dataset, backbone, FeatureStore(folder / f"ray-{modality}"), timesteps, BLOCKS,
                                 load=load, actors=2, settings=ExtractSettings(batch_size=batch, rows_per_part=rows // 4))
            print(f"  {modality:<5}: local {local.rows_per_second:8,.0f} samples/s   Ray {remote.rows_per_second:8,.0f}"
                  f" samples/s (actor start-up and backbone loads included)   ratio "
                  f"{remote.rows_per_second / local.rows_per_second:.2f}x")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
