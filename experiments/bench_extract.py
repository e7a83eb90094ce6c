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

    python experiments/bench_extract.py [--rows 256] [--batch 64] [--repeats 3]
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

from difffeat_tune.backbones._base import Backbone, Encoded
from difffeat_tune.backbones._hooks import masked_mean_pool, mean_pool
from difffeat_tune.backbones._registry import load_image_backbone, load_text_backbone
from difffeat_tune.data._base import ArrayImages, Split

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


if __name__ == "__main__":
    main()
