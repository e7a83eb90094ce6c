"""A search at a real data set's scale: a synthetic feature store with COCO's (or VG500's) shape.

Writes a feature store with the preset's rows, widths and label count (long-tailed label
frequencies) and a planted signal whose strength depends on (t, b), so that the search has a known
optimum; then runs the heuristic search through the same code as ``difffeat-tune run heuristic``
(``run_search``: the Objective, the local engine, the best configuration re-trained on the
evaluation split) in a child process, and prints the store's size, the time of each phase, the
search's peak RSS (and peak CUDA memory on a GPU), the compute floor of the run's training matmuls
measured in the same run, and the chosen configuration against the planted one. It ends with
one line::

    scale: coco 1.00x rows, 23 trials, peak RSS 3.9 GB, 1.4x the compute floor, planted optimum found: yes

    python experiments/bench_scale.py [--preset coco|vg500] [--rows-scale 1.0] [--grid small|paper]
                                      [--epochs 2] [--memory-budget 4GiB] [--out DIR] [--keep]

The store goes to a temporary folder (or ``--out``) and is removed unless ``--keep``; a kept
``--out`` is reused by the next run with the same preset, scale and grid (it is not rewritten).
COCO has no test labels: as for the real data set, selection uses a seeded hold-out of train and
the chosen configuration is scored on val.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("bench_scale")


@dataclass(frozen=True)
class Preset:
    """A real data set's shape: rows, label count, feature widths, the fusion width."""

    name: str
    train: int
    val: int
    labels: int
    image_width: int
    text_width: int
    d_alg: int
    labels_per_row: float


PRESETS = {
    # COCO 2014: 82,783 train / 40,504 val images, 80 categories, 2.9 labels per image;
    # DiT-XL/2 is 1,152 wide, Plaid 1B 2,048; the paper's COCO fusion width 512.
    "coco": Preset("coco", 82_783, 40_504, 80, 1152, 2048, 512, 2.9),
    # VG500 (the ML-GCN split): about 82,904 train / 10,000 test images, 500 labels, d_alg 2,048.
    "vg500": Preset("vg500", 82_904, 10_000, 500, 1152, 2048, 2048, 13.6),
}
GRIDS = {
    "small": {"image": ((10, 50, 100), (12, 20)), "text": ((0, 20), (12, 20))},
    "paper": {"image": ((10, 20, 30, 50, 100, 150), (8, 12, 16, 20, 24)),
              "text": ((0, 10, 20, 30), (8, 12, 16, 20, 24))},
}
#: Where the planted signal peaks, as positions in each grid's (t, b) axes.
PEAK = {"image": (1, 1), "text": (0, 1)}
#: Signal strength at the peak; it falls as 1 / (1 + grid distance) away from it.
PEAK_STRENGTH = 0.12


def _label_matrix(rng: np.random.Generator, n: int, preset: Preset) -> np.ndarray:
    """Long-tailed labels: class c has frequency proportional to 1 / (c + 1)^0.8, every row has one."""
    weights = 1.0 / np.arange(1, preset.labels + 1) ** 0.8
    freq = np.minimum(0.9, weights / weights.sum() * preset.labels_per_row)
    labels = (rng.random((n, preset.labels), dtype=np.float32) < freq).astype(np.int8)
    labels[np.arange(n), rng.choice(preset.labels, size=n, p=weights / weights.sum())] = 1
    return labels


def write_store(root: Path, preset: Preset, scale: float, grid: str, seed: int = 0) -> Path:
    """The synthetic feature store (reused when ``root`` already holds it); returns its data-set folder."""
    from difffeat_tune.data._base import Dataset, Split
    from difffeat_tune.store import ExtractionKey, FeatureStore

    rng = np.random.default_rng(seed)
    sizes = {"train": max(64, int(preset.train * scale)), "val": max(64, int(preset.val * scale))}
    splits = {name: Split(name, tuple(f"{name}-{i}" for i in range(n)), _label_matrix(rng, n, preset), None, None)
              for name, n in sizes.items()}
    dataset = Dataset(f"synthetic-{preset.name}", tuple(f"c{i}" for i in range(preset.labels)), "multilabel",
                      splits, options={"scale": scale, "grid": grid, "seed": seed})
    store = FeatureStore(root)
    store.write_dataset(dataset)
    # Image features see the first two thirds of the classes, text the last two thirds: fusion pays.
    third = preset.labels // 3
    visible = {"image": np.arange(preset.labels) < 2 * third, "text": np.arange(preset.labels) >= third}
    for modality, width in (("image", preset.image_width), ("text", preset.text_width)):
        key = ExtractionKey(modality, f"synthetic-{modality}", "0" * 16,
                            {"seed": seed, "grid": grid, "strength": PEAK_STRENGTH}, "float16")
        ext = store.extraction(dataset, key, width=width, num_blocks=28)
        mixing = rng.standard_normal((preset.labels, width), dtype=np.float32) / np.sqrt(preset.labels_per_row)
        signal = {name: (split.labels * visible[modality]).astype(np.float32) @ mixing for name, split in splits.items()}
        ts, bs = GRIDS[grid][modality]
        for t in ts:
            for name, split in splits.items():
                n_parts = max(1, -(-len(split) // ext.rows_per_part))
                for part in range(n_parts):
                    if ext.part_blocks(t, name, part) >= set(bs):
                        continue
                    rows = slice(part * ext.rows_per_part, min(len(split), (part + 1) * ext.rows_per_part))
                    values = {}
                    for b in bs:
                        noise = rng.standard_normal((rows.stop - rows.start, width), dtype=np.float32)
                        values[b] = signal_strength(grid, modality, t, b) * signal[name][rows] + noise
                    ext.write_part(t, name, part, split.ids[rows], values, n_parts=n_parts, provenance={})
            logger.info("wrote %s t=%d", modality, t)
    return store.dataset_dir(dataset.name, dataset.fingerprint())


def signal_strength(grid: str, modality: str, t: int, b: int) -> float:
    """The planted signal's strength in ``modality``'s feature (t, b) of ``grid``: its peak's
    ``PEAK_STRENGTH``, falling as 1 / (1 + grid distance) away from the peak (the known ranking)."""
    ts, bs = GRIDS[grid][modality]
    distance = abs(ts.index(t) - PEAK[modality][0]) + abs(bs.index(b) - PEAK[modality][1])
    return PEAK_STRENGTH / (1 + distance)


def planted(grid: str) -> dict[str, tuple[int, int]]:
    """The (t, b) of each modality where the planted signal peaks."""
    return {m: (GRIDS[grid][m][0][PEAK[m][0]], GRIDS[grid][m][1][PEAK[m][1]]) for m in ("image", "text")}


def space_file(folder: Path, preset: Preset, grid: str) -> Path:
    """A search-space TOML in ``folder`` for the synthetic store: the grid's axes, linear addition at
    the preset's d_alg."""
    image, text = GRIDS[grid]["image"], GRIDS[grid]["text"]
    path = folder / f"space-{preset.name}-{grid}.toml"
    path.write_text(f'description = "bench_scale: {preset.name}, {grid} grid"\n'
                    f"[image]\nt = {list(image[0])}\nb = {list(image[1])}\n"
                    f"[text]\nt = {list(text[0])}\nb = {list(text[1])}\n"
                    f'[fusion]\nmethods = ["linear_add"]\nd_alg = {preset.d_alg}\n')
    return path


def _search(args: dict, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """The child process: the heuristic search on the store; its own peak RSS is the figure."""
    import optuna

    from difffeat_tune.search._options import SearchOptions
    from difffeat_tune.search.runner import run_search
    from difffeat_tune.settings import Settings
    from difffeat_tune.store import FeatureStore

    torch.set_num_threads(args["threads"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    view = FeatureStore(args["root"]).view(args["dataset"])
    search = SearchOptions(sampler="heuristic", storage=f"sqlite:///{args['out']}/studies.db",
                           study_name=f"scale-{time.time_ns()}", runs=Path(args["out"]) / "runs")
    settings = Settings.create(space=args["space"], search=search, device=args["device"], epochs=args["epochs"],
                               memory_budget=args["memory_budget"])
    start = time.perf_counter()
    summary = run_search(settings, view)
    seconds = time.perf_counter() - start
    study = optuna.load_study(study_name=summary.study_name, storage=search.storage_url())
    trials = [{"phase": t.user_attrs.get("phase"), "modality": t.user_attrs.get("modality"), "params": t.params,
               "epochs": t.user_attrs.get("epochs_run", 0), "state": t.state.name,
               "start": t.datetime_start.timestamp() if t.datetime_start else None,
               "end": t.datetime_complete.timestamp() if t.datetime_complete else None} for t in study.trials]
    cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    queue.put({"seconds": seconds, "summary": summary.as_dict(), "trials": trials, "cuda_peak": cuda,
               "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
               "n_train": int(view.info["splits"]["train"]), "n_val": int(view.info["splits"]["val"])})


def _matmul_seconds(rows: int, d_in: int, d_out: int, threads: int, device: str, repeats: int = 5) -> float:
    """The best time of one training step's three matmuls (forward, two backward) at these shapes."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    x = torch.randn(rows, d_in, device=dev)
    w = torch.randn(d_in, d_out, device=dev)
    g = torch.randn(rows, d_out, device=dev)
    best = float("inf")
    for _ in range(repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        _ = x @ w
        _ = x.T @ g
        _ = g @ w.T
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def compute_floor(result: dict, preset: Preset, batch_size: int, threads: int, device: str) -> float:
    """Seconds the run's training matmuls take at this machine's measured matmul speed.

    Per finished trial and epoch: every training step's forward and backward matmuls of its head
    (the linear probe D x C; linear addition's two projections D x d_alg and its classifier
    d_alg x C) on the training rows, and the validation forward on the selection rows, at the rate
    measured for each shape in this run. The re-training of the best configuration is included.
    """
    n_sel = result["n_sel"]
    n_train = result["n_train"] - n_sel
    steps = -(-n_train // batch_size)
    shape_cost: dict[tuple[int, int], float] = {}

    def step(d_in: int, d_out: int) -> float:
        if (d_in, d_out) not in shape_cost:
            shape_cost[(d_in, d_out)] = _matmul_seconds(batch_size, d_in, d_out, threads, device)
        return shape_cost[(d_in, d_out)]

    width = {"image": preset.image_width, "text": preset.text_width}
    total = 0.0
    trained = [t for t in result["trials"] if t["state"] in ("COMPLETE", "PRUNED") and t["modality"]]
    best = result["summary"]["best_config"] or {}
    if best:  # the evaluation split's re-training: like one more trial of the chosen kind
        trained.append({"modality": best.get("modality"), "epochs": result["eval_epochs"]})
    for trial in trained:
        if trial["modality"] == "fusion":
            shapes = [(width["image"], preset.d_alg), (width["text"], preset.d_alg), (preset.d_alg, preset.labels)]
        else:
            shapes = [(width[trial["modality"]], preset.labels)]
        per_step = sum(step(*s) for s in shapes)
        # validation: one forward (a third of a step's three matmuls) over the selection rows
        total += trial["epochs"] * per_step * (steps + n_sel / batch_size / 3)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="coco")
    parser.add_argument("--rows-scale", type=float, default=1.0, help="share of the preset's rows (e.g. 0.1)")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="small")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--memory-budget", default=None, help="the search's budget, e.g. 4GiB (default: automatic)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="store folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the store")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from difffeat_tune.cli import _bytes
    from difffeat_tune.probe.objective import ObjectiveSettings
    from difffeat_tune.probe.train import TrainRecipe

    preset = PRESETS[args.preset]
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        folder = write_store(out / "features", preset, args.rows_scale, args.grid)
        write_seconds = time.perf_counter() - start
        store_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        space = space_file(out, preset, args.grid)
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        child = context.Process(target=_search, args=({
            "root": str(out / "features"), "dataset": folder.name, "out": str(out), "space": str(space),
            "epochs": args.epochs, "threads": args.threads, "device": args.device,
            "memory_budget": _bytes(args.memory_budget, "--memory-budget")}, queue))
        child.start()
        result = queue.get()
        child.join()
        summary = result["summary"]
        result["n_sel"] = max(1, int(round(result["n_train"] * ObjectiveSettings().holdout_fraction)))
        result["eval_epochs"] = args.epochs
        floor = compute_floor(result, preset, TrainRecipe().batch_size, args.threads, args.device)
        phases: dict[str, list[float]] = {}
        for trial in result["trials"]:
            if trial["start"] and trial["end"]:
                span = phases.setdefault(str(trial["phase"]), [trial["start"], trial["end"]])
                span[0], span[1] = min(span[0], trial["start"]), max(span[1], trial["end"])
        goal = planted(args.grid)
        best = summary["best_by_modality"]
        wanted = {"image": f"image t={goal['image'][0]} b={goal['image'][1]}",
                  "text": f"text t={goal['text'][0]} b={goal['text'][1]}"}
        found_unimodal = all(best.get(m, {}).get("label") == wanted[m] for m in wanted)
        fusion_label = str(best.get("fusion", {}).get("label", ""))
        found = found_unimodal and fusion_label.startswith(f"{wanted['image']} + {wanted['text']}")
        trials = sum(summary["trials"].values())
        print(f"\npreset {preset.name} x{args.rows_scale:.2f}: train {result['n_train']:,} rows (selection hold-out "
              f"{result['n_sel']:,}), val {result['n_val']:,}, {preset.labels} labels, widths image "
              f"{preset.image_width} / text {preset.text_width}, d_alg {preset.d_alg}, {args.grid} grid, "
              f"{args.epochs} epochs, {args.threads} threads on {args.device}")
        print(f"store: {store_bytes / 1e9:.2f} GB on disk, written in {write_seconds:.0f} s")
        print(f"search: {result['seconds']:.1f} s ({trials} trials: {summary['trials']}); phases: " + ", ".join(
            f"{p} {s[1] - s[0]:.1f} s" for p, s in phases.items()))
        print(f"peak RSS of the search process: {result['rss_peak'] / 1e9:.2f} GB"
              + (f"; peak CUDA memory {result['cuda_peak'] / 1e9:.2f} GB" if result["cuda_peak"] is not None else ""))
        print(f"compute floor of its training matmuls (measured here): {floor:.1f} s")
        print("best: " + "; ".join(f"{m} {v['label']} ({100 * v['score']:.2f})" for m, v in best.items())
              + f"; planted: {wanted['image']}, {wanted['text']}, and their pair")
        chosen = summary["eval_metrics"].get("map")
        print(f"chosen: {summary['best_label']}, {summary['eval_split']} mAP "
              f"{'-' if chosen is None else f'{100 * chosen:.2f}'}")
        print(f"scale: {preset.name} {args.rows_scale:.2f}x rows, {trials} trials, peak RSS "
              f"{result['rss_peak'] / 1e9:.1f} GB, {result['seconds'] / max(floor, 1e-9):.1f}x the compute floor, "
              f"planted optimum found: {'yes' if found else 'no'}")
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
