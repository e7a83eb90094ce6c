"""The ``difffeat-tune`` command: parse, call the library, render with rich. No logic lives here."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager, nullcontext, redirect_stdout
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TaskID
from rich.table import Table

from difffeat_tune._errors import DiffFeatError
from difffeat_tune.config import DEFAULT_FUSION
from difffeat_tune.dashboard import DEFAULT_HOST, DEFAULT_PORT, serve_dashboard
from difffeat_tune.features import DEFAULT_FEATURES, FeatureRequest, TextSettings, ensure_features
from difffeat_tune.probe.objective import Objective, ObjectiveSettings
from difffeat_tune.probe.train import TrainRecipe
from difffeat_tune.search.compare import Comparison
from difffeat_tune.search.runner import (
    DEFAULT_RUNS, SearchOptions, SearchSummary, default_storage, open_storage, parse_storage_url, run_search,
)
from difffeat_tune.search.space import DEFAULT_SPACE, SearchSpace, load_space

app = typer.Typer(help="Find the best diffusion-feature configuration (Diff-Feat) for multi-label classification.",
                  no_args_is_help=True, add_completion=False)
console = Console(stderr=True)
out = Console()


def _ints(text: Optional[str], option: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of integers", param_hint=option) from None


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)], force=True)
    # Optuna logs every trial at INFO through its own handler; the progress line already shows them.
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)


class _RowsPerSecond(TextColumn):
    def __init__(self) -> None:
        super().__init__("")

    def render(self, task):  # type: ignore[no-untyped-def]
        speed = task.finished_speed or task.speed
        return f"{speed:,.0f} samples/s" if speed else ""


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _RowsPerSecond(),
                    TimeElapsedColumn(), console=console, transient=False)


def prepare(request: FeatureRequest, quiet: bool = False):  # type: ignore[no-untyped-def]
    """Run :func:`ensure_features` under a rich progress bar (one bar per modality)."""
    with _progress() as bar:
        tasks: dict[str, TaskID] = {}

        def on_total(modality: str, total: int) -> None:
            tasks[modality] = bar.add_task(f"{modality} features", total=total or 1, completed=0 if total else 1)

        def progress(modality: str, rows: int) -> None:
            bar.advance(tasks[modality], rows)

        return ensure_features(request, progress=None if quiet else progress, on_total=None if quiet else on_total)


# Options shared by several commands (Typer reads the help from the Annotated metadata).
DatasetOpt = Annotated[str, typer.Option(help="Data set: 'shapes' (embedded), 'shapes-enhanced', coco, coco-enhanced, vg500, voc2007, cifar100, tiny-imagenet, ag-news (with --root), or a manifest path.")]
RootOpt = Annotated[Optional[Path], typer.Option(help="Folder of a public data set's files (coco, vg500, ...).")]
FeaturesOpt = Annotated[Path, typer.Option(help="Feature-store folder.")]
SpaceOpt = Annotated[str, typer.Option(help="Search space: a name in searchspaces/ or a .toml path.")]
ImageBackboneOpt = Annotated[str, typer.Option(help="'tiny', a hub id (facebook/DiT-XL-2-256) or a DiT folder.")]
VaeOpt = Annotated[Optional[str], typer.Option(help="Separate VAE for the DiT (hub id or folder).")]
TextBackboneOpt = Annotated[str, typer.Option(help="'tiny' or a folder with Plaid's weight files.")]
TokenizerOpt = Annotated[Optional[str], typer.Option(help="Tokenizer JSON (default: tokenizer.json in the text backbone folder).")]
DeviceOpt = Annotated[str, typer.Option(help="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:N'.")]
BatchOpt = Annotated[int, typer.Option(help="Rows per extraction batch (each goes through every timestep).")]
DtypeOpt = Annotated[str, typer.Option(help="Stored feature dtype: float16 or float32.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the image noise and of random text noise.")]
TokenLengthOpt = Annotated[Optional[int], typer.Option(help="Text token length L (pad with end-of-text, or truncate); default: the data set's recommendation, else 60.")]
NoisingOpt = Annotated[str, typer.Option(help="Text noising: 'ddim' (deterministic inversion) or 'random'.")]
InversionOpt = Annotated[Optional[int], typer.Option(help="DDIM-inversion step in timesteps (default: the backbone's).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")]
StorageOpt = Annotated[Optional[str], typer.Option(help="Optuna storage URL (default: sqlite:///<runs>/studies.db).")]
RunsOpt = Annotated[Path, typer.Option(help="Runs folder (SQLite studies, comparisons).")]


def _request(dataset: str, features: Path, space: str, modalities: tuple[str, ...], image_backbone: str,
             vae: Optional[str], text_backbone: str, tokenizer: Optional[str], device: str, batch_size: int,
             dtype: str, noise_seed: int, token_length: Optional[int], text_noising: str, inversion_step: Optional[int],
             root: Optional[Path] = None, **grid: tuple[int, ...] | None) -> FeatureRequest:
    return FeatureRequest(
        dataset=dataset, dataset_options={"root": root} if root is not None else {},
        features=features, space=space, modalities=modalities,
        image_backbone=image_backbone, vae=vae, text_backbone=text_backbone, tokenizer=tokenizer,
        device=device, batch_size=batch_size, dtype=dtype, image_noise_seed=noise_seed,
        text=TextSettings(token_length=token_length, noising=text_noising, inversion_step=inversion_step,
                          noise_seed=noise_seed),
        **grid,  # type: ignore[arg-type]
    )


@app.command()
def extract(
    dataset: DatasetOpt = "shapes",
    root: RootOpt = None,
    features: FeaturesOpt = DEFAULT_FEATURES,
    space: SpaceOpt = DEFAULT_SPACE,
    modality: Annotated[str, typer.Option(help="'image', 'text' or 'both'.")] = "both",
    image_backbone: ImageBackboneOpt = "tiny",
    vae: VaeOpt = None,
    text_backbone: TextBackboneOpt = "tiny",
    tokenizer: TokenizerOpt = None,
    image_timesteps: Annotated[Optional[str], typer.Option(help="Comma-separated image timesteps (default: the space's).")] = None,
    image_blocks: Annotated[Optional[str], typer.Option(help="Comma-separated 1-based image blocks (default: the space's).")] = None,
    text_timesteps: Annotated[Optional[str], typer.Option(help="Comma-separated text timesteps (default: the space's).")] = None,
    text_blocks: Annotated[Optional[str], typer.Option(help="Comma-separated 1-based text blocks (default: the space's).")] = None,
    splits: Annotated[Optional[str], typer.Option(help="Comma-separated splits (default: all).")] = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    dtype: DtypeOpt = "float16",
    noise_seed: SeedOpt = 0,
    token_length: TokenLengthOpt = None,
    text_noising: NoisingOpt = "ddim",
    inversion_step: InversionOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Extract pooled diffusion features into the Parquet feature store (resumable)."""
    _setup_logging(verbose)
    if modality not in ("image", "text", "both"):
        raise typer.BadParameter("choose image, text or both", param_hint="--modality")
    request = _request(
        dataset, features, space, ("image", "text") if modality == "both" else (modality,), image_backbone, vae,
        text_backbone, tokenizer, device, batch_size, dtype, noise_seed, token_length, text_noising, inversion_step,
        root=root, image_timesteps=_ints(image_timesteps, "--image-timesteps"), image_blocks=_ints(image_blocks, "--image-blocks"),
        text_timesteps=_ints(text_timesteps, "--text-timesteps"), text_blocks=_ints(text_blocks, "--text-blocks"),
    )
    if splits:
        request = replace(request, splits=tuple(s for s in splits.split(",") if s))
    prepared = prepare(request, quiet=as_json)
    summary = {
        "dataset": prepared.view.folder.name,
        "store": str(features),
        "extractions": [
            {"modality": r.modality, "folder": r.folder, "parts_written": r.parts_written,
             "parts_skipped": r.parts_skipped, "rows": r.rows, "seconds": round(r.seconds, 3),
             "samples_per_second": round(r.rows_per_second, 1)}
            for r in prepared.reports
        ],
    }
    if as_json:
        out.print_json(json.dumps(summary))
        return
    table = Table(title=f"features of {summary['dataset']} in {features}")
    for col in ("modality", "parts written", "parts reused", "samples", "samples/s", "folder"):
        table.add_column(col)
    for r in summary["extractions"]:
        table.add_row(r["modality"], str(r["parts_written"]), str(r["parts_skipped"]), str(r["rows"]),
                      f"{r['samples_per_second']:,.0f}", r["folder"])
    out.print(table)


#: Search engines of `run heuristic` / `run grid`.
ENGINES: tuple[str, ...] = ("local", "ray")

run_app = typer.Typer(help="Run a search study (resumes when the study already exists).", no_args_is_help=True)
app.add_typer(run_app, name="run")


@dataclass(frozen=True)
class _SearchArgs:
    dataset: str
    root: Optional[Path]
    features: Path
    space: str
    image_backbone: str
    vae: Optional[str]
    text_backbone: str
    tokenizer: Optional[str]
    device: str
    batch_size: int
    dtype: str
    noise_seed: int
    token_length: Optional[int]
    text_noising: str
    inversion_step: Optional[int]
    storage: Optional[str]
    runs: Path
    workers: int
    fusion: str
    neighbourhood: str
    radius: int
    pruner: str
    epochs: Optional[int]
    protocol: str
    seed: int
    engine: str = "local"
    ray_address: Optional[str] = None

    def storage_url(self) -> str:
        return self.storage or default_storage(self.runs)

    def options(self, sampler: str, space: SearchSpace) -> SearchOptions:
        methods = space.fusion_methods if self.fusion == "all" else tuple(m for m in self.fusion.split(",") if m)
        return SearchOptions(sampler=sampler, fusion_methods=methods, neighbourhood=self.neighbourhood,  # type: ignore[arg-type]
                             radius=self.radius, pruner=self.pruner, workers=self.workers, seed=self.seed)


def _search_args(**kwargs: object) -> _SearchArgs:
    return _SearchArgs(**kwargs)  # type: ignore[arg-type]


def _objective(args: _SearchArgs, sampler: str, quiet: bool) -> tuple[Objective, SearchSpace, SearchOptions]:
    """Validate the space, search options and recipe, then extract (or reuse) features: bad input fails first."""
    parse_storage_url(args.storage_url())  # a malformed URL or a missing driver, before any extraction
    space = load_space(args.space)
    options = args.options(sampler, space)
    recipe_fields = dict(space.probe)
    if args.epochs is not None:
        recipe_fields["epochs"] = args.epochs
    settings = ObjectiveSettings(recipe=TrainRecipe(**recipe_fields), protocol=args.protocol)  # type: ignore[arg-type]
    request = _request(args.dataset, args.features, args.space, ("image", "text"), args.image_backbone, args.vae,
                       args.text_backbone, args.tokenizer, args.device, args.batch_size, args.dtype, args.noise_seed,
                       args.token_length, args.text_noising, args.inversion_step, root=args.root)
    prepared = prepare(request, quiet=quiet)
    return Objective(prepared.view, settings, device=args.device), space, options


def _run(sampler: str, args: _SearchArgs, study_name: Optional[str], n_trials: Optional[int], as_json: bool) -> SearchSummary:
    objective, space, options = _objective(args, sampler, quiet=as_json)
    name = study_name or f"{objective.view.folder.name.rsplit('-', 1)[0]}-{sampler}"
    with _trial_progress(quiet=as_json, what=f"{sampler} search ({name})") as callback:
        if args.engine == "ray":
            from difffeat_tune.search.ray_engine import run_search_ray  # imports Ray: only when asked

            return run_search_ray(objective.view, space, options, objective.settings, storage=args.storage_url(),
                                  study_name=name, ray_address=args.ray_address, results_dir=args.runs / "ray",
                                  n_trials=n_trials, device=args.device, callbacks=[callback])
        return run_search(objective, space, options, storage=args.storage_url(), study_name=name,
                          n_trials=n_trials, callbacks=[callback])


@contextmanager
def _trial_progress(quiet: bool, what: str):  # type: ignore[no-untyped-def]
    """A spinner with the trial count and the best score so far, as an Optuna callback."""
    if quiet:
        yield lambda study, trial: None
        return
    with Progress(TextColumn("[bold]{task.description}"), TextColumn("{task.completed} trials"),
                  TextColumn("{task.fields[best]}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(what, total=None, best="")

        def callback(study, trial) -> None:  # type: ignore[no-untyped-def]
            try:
                best = f"best {100 * study.best_value:.2f} ({study.best_trial.user_attrs.get('config', '')})"
            except ValueError:
                best = ""
            bar.update(task, advance=1, best=best)

        yield callback


def _print_summary(summary: SearchSummary, storage: str) -> None:
    table = Table(title=f"study {summary.study_name} ({summary.sampler})", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("best configuration", summary.best_label or "-")
    for label, metrics, split in (("selection", summary.best_metrics, summary.selection_split),
                                  ("evaluation", summary.eval_metrics, summary.eval_split)):
        if metrics:
            shown = ", ".join(f"{k} {100 * v:.2f}" for k, v in metrics.items() if not k.startswith("n_"))
            table.add_row(f"{label} ({split})", shown)
    table.add_row("trials", ", ".join(f"{k} {v}" for k, v in sorted(summary.trials.items())))
    table.add_row("trials per phase", ", ".join(f"{k} {v}" for k, v in sorted(summary.phases.items())))
    table.add_row("probe epochs", str(summary.probe_epochs))
    table.add_row("wall time", f"{summary.wall_seconds:.1f} s")
    out.print(table)
    out.print(f"Browse it: [bold]difffeat-tune dashboard --storage {storage}[/]", soft_wrap=True)  # copy-pasteable


def _search_command(sampler: str):  # type: ignore[no-untyped-def]
    def command(
        dataset: DatasetOpt = "shapes",
        root: RootOpt = None,
        features: FeaturesOpt = DEFAULT_FEATURES,
        space: SpaceOpt = DEFAULT_SPACE,
        storage: StorageOpt = None,
        study_name: Annotated[Optional[str], typer.Option(help="Study name (default: <dataset>-<sampler>); reuse it to resume.")] = None,
        runs: RunsOpt = DEFAULT_RUNS,
        workers: Annotated[int, typer.Option(help="Trials run in parallel in this process.")] = 1,
        fusion: Annotated[str, typer.Option(help="Fusion method(s), comma-separated, or 'all'.")] = DEFAULT_FUSION,
        neighbourhood: Annotated[str, typer.Option(help="Heuristic neighbourhood: cross, box or radius.")] = "cross",
        radius: Annotated[int, typer.Option(help="Neighbourhood radius in grid steps.")] = 1,
        pruner: Annotated[str, typer.Option(help="none, median or halving (over probe epochs).")] = "none",
        epochs: Annotated[Optional[int], typer.Option(help="Probe epochs (default: the space's, else 40).")] = None,
        protocol: Annotated[str, typer.Option(help="'validation' (select on val, report test) or 'paper' (select on the evaluation split).")] = "validation",
        n_trials: Annotated[Optional[int], typer.Option(help="Stop after this many trials (resume later).")] = None,
        seed: Annotated[int, typer.Option(help="Seed of the grid order.")] = 0,
        engine: Annotated[str, typer.Option(help="'local' (Optuna in this process) or 'ray' (Ray Tune trials on a Ray cluster).")] = "local",
        ray_address: Annotated[Optional[str], typer.Option(help="With --engine ray: the cluster to join ('auto', 'host:port'); default: a local Ray.")] = None,
        image_backbone: ImageBackboneOpt = "tiny",
        vae: VaeOpt = None,
        text_backbone: TextBackboneOpt = "tiny",
        tokenizer: TokenizerOpt = None,
        device: DeviceOpt = "auto",
        batch_size: BatchOpt = 64,
        dtype: DtypeOpt = "float16",
        noise_seed: SeedOpt = 0,
        token_length: TokenLengthOpt = None,
        text_noising: NoisingOpt = "ddim",
        inversion_step: InversionOpt = None,
        as_json: JsonOpt = False,
        verbose: VerboseOpt = False,
    ) -> None:
        _setup_logging(verbose)
        if engine not in ENGINES:
            raise typer.BadParameter(f"choose {' or '.join(ENGINES)}", param_hint="--engine")
        args = _search_args(
            dataset=dataset, root=root, features=features, space=space, image_backbone=image_backbone, vae=vae,
            text_backbone=text_backbone, tokenizer=tokenizer, device=device, batch_size=batch_size, dtype=dtype,
            noise_seed=noise_seed, token_length=token_length, text_noising=text_noising,
            inversion_step=inversion_step, storage=storage, runs=runs, workers=workers, fusion=fusion,
            neighbourhood=neighbourhood, radius=radius, pruner=pruner, epochs=epochs, protocol=protocol, seed=seed,
            engine=engine, ray_address=ray_address)
        # With --json, stdout carries the JSON alone: anything a library prints (Ray Tune's status) goes to stderr.
        with redirect_stdout(sys.stderr) if as_json else nullcontext():
            summary = _run(sampler, args, study_name, n_trials, as_json)
        if as_json:
            out.print_json(json.dumps(summary.as_dict(), default=str))
        else:
            _print_summary(summary, args.storage_url())

    command.__doc__ = {
        "heuristic": "Algorithm 1: every unimodal (t, b), then fusion around each modality's best.",
        "grid": "The full-grid baseline: every image (t, b) x text (t, b) pair (Optuna's GridSampler).",
    }[sampler]
    return command


run_app.command("heuristic")(_search_command("heuristic"))
run_app.command("grid")(_search_command("grid"))


@app.command()
def compare(
    dataset: DatasetOpt = "shapes",
    root: RootOpt = None,
    features: FeaturesOpt = DEFAULT_FEATURES,
    space: SpaceOpt = DEFAULT_SPACE,
    storage: StorageOpt = None,
    study_name: Annotated[Optional[str], typer.Option(help="Base name: studies <name>-heuristic and <name>-grid.")] = None,
    runs: RunsOpt = DEFAULT_RUNS,
    workers: Annotated[int, typer.Option(help="Trials run in parallel in this process.")] = 1,
    fusion: Annotated[str, typer.Option(help="Fusion method(s), comma-separated, or 'all'.")] = DEFAULT_FUSION,
    pruner: Annotated[str, typer.Option(help="none, median or halving (over probe epochs).")] = "none",
    epochs: Annotated[Optional[int], typer.Option(help="Probe epochs (default: the space's, else 40).")] = None,
    protocol: Annotated[str, typer.Option(help="'validation' or 'paper'.")] = "validation",
    image_backbone: ImageBackboneOpt = "tiny",
    vae: VaeOpt = None,
    text_backbone: TextBackboneOpt = "tiny",
    tokenizer: TokenizerOpt = None,
    token_length: TokenLengthOpt = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run (or reuse) the heuristic and the grid study on the same features and compare them."""
    _setup_logging(verbose)
    args = _search_args(
        dataset=dataset, root=root, features=features, space=space, image_backbone=image_backbone, vae=vae,
        text_backbone=text_backbone, tokenizer=tokenizer, device=device, batch_size=64, dtype="float16", noise_seed=0,
        token_length=token_length,
        text_noising="ddim", inversion_step=None, storage=storage, runs=runs, workers=workers, fusion=fusion,
        neighbourhood="cross", radius=1, pruner=pruner, epochs=epochs, protocol=protocol, seed=0)
    objective, space_obj, heuristic_options = _objective(args, "heuristic", quiet=as_json)
    base = study_name or objective.view.folder.name.rsplit("-", 1)[0]
    summaries = {}
    for sampler in ("heuristic", "grid"):
        options = heuristic_options if sampler == "heuristic" else args.options(sampler, space_obj)
        with _trial_progress(quiet=as_json, what=f"{sampler} search ({base}-{sampler})") as callback:
            summaries[sampler] = run_search(objective, space_obj, options, storage=args.storage_url(),
                                            study_name=f"{base}-{sampler}", callbacks=[callback])
    comparison = Comparison(heuristic=summaries["heuristic"], grid=summaries["grid"])
    paths = comparison.save(runs, base, open_storage(args.storage_url(), heartbeat=False))
    if as_json:
        out.print_json(json.dumps(comparison.as_dict(), default=str))
        return
    table = Table(title=f"heuristic vs grid on {base}")
    for col in ("", "heuristic", "grid"):
        table.add_column(col)
    for row in comparison.rows():
        table.add_row(*row)
    out.print(table)
    regret = comparison.regret
    out.print(f"Regret of the heuristic: {'-' if regret is None else f'{100 * regret:.2f}'} points on "
              f"{comparison.heuristic.selection_split}. Saved {', '.join(str(p) for p in paths)} and a note on both studies.")


@app.command()
def dashboard(
    storage: StorageOpt = None,
    runs: RunsOpt = DEFAULT_RUNS,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="Port.")] = DEFAULT_PORT,
) -> None:
    """Start optuna-dashboard on the study storage."""
    url = storage or default_storage(runs)
    console.print(f"optuna-dashboard on [bold]http://{host}:{port}[/] for {url} (Ctrl-C to stop)")
    serve_dashboard(url, host=host, port=port)


def main() -> None:
    """Console-script entry point: library errors become a clean message and exit code 2."""
    try:
        app()
    except DiffFeatError as exc:
        console.print(f"[bold red]error:[/] {exc.message}")
        if exc.hint:
            console.print(f"  [yellow]->[/] {exc.hint}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
