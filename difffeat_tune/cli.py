"""The ``difffeat-tune`` command: parse, build the settings, call the library, render with rich.

Only Typer, rich and the package's light modules are imported at start-up (``--help`` answers at
once); each command imports what it needs when it runs. Every command takes the same options for
the same things, and turns them into one :class:`~difffeat_tune.settings.Settings` with
:func:`_settings`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, redirect_stdout
from dataclasses import MISSING, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from difffeat_tune._defaults import (
    DEFAULT_BATCH_SIZE, DEFAULT_DATASET, DEFAULT_DEVICE, DEFAULT_DTYPE, DEFAULT_EPOCHS, DEFAULT_FEATURES,
    DEFAULT_HOST, DEFAULT_PORT, DEFAULT_PROTOCOL, DEFAULT_SPACE, OBJECTIVE_MEMORY_SHARE, TINY,
)
from difffeat_tune._errors import ConfigError, DiffFeatError
from difffeat_tune._paths import local_folder, store_location
from difffeat_tune.backbones._family import LoadOptions
from difffeat_tune.search._options import COMPARED, SearchOptions, study_name

if TYPE_CHECKING:
    from difffeat_tune.data._base import Dataset
    from difffeat_tune.features import FeatureRequest, PreparedFeatures
    from difffeat_tune.report import Report
    from difffeat_tune.search._run import Callback, SearchRun
    from difffeat_tune.search.compare import Comparison
    from difffeat_tune.search.runner import SearchSummary
    from difffeat_tune.search._settings import Settings


def _default(cls: type, name: str) -> str:
    """The default of the dataclass field ``cls.name`` as help shows it: the dataclass holds the
    value, every option defaults to "not given" (``None``) and so takes it."""
    found = next(f for f in fields(cls) if f.name == name)
    value = found.default if found.default is not MISSING else found.default_factory()  # type: ignore[misc]
    return ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _option(text: str, default: object) -> Any:
    """A Typer option whose help shows ``default`` (the dataclass's value, or the ``_defaults``
    constant the dataclass reads) while the option itself defaults to ``None``."""
    return typer.Option(help=text, show_default=str(default))


app = typer.Typer(help="Find the best diffusion-feature configuration (Diff-Feat) for multi-label classification.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
#: Width of the results on stdout when it is not a terminal (a file, a pipe, `make`'s log): wide
#: enough that a configuration fits its table cell; a terminal uses its own width.
PIPED_WIDTH = 160
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)


# -- options shared by the commands (Typer reads the help from the Annotated metadata) ---------------
# Every option that goes into the settings defaults to None ("not given"): the dataclass behind
# it holds the default, and the help shows that value.

DatasetOpt = Annotated[Optional[str], _option("Data set: 'shapes' (embedded), 'shapes-enhanced', coco, coco-enhanced, coco-plain, vg500, voc2007, cifar100, tiny-imagenet, ag-news (with --root), or a manifest path.", DEFAULT_DATASET)]
RootOpt = Annotated[Optional[Path], typer.Option(help="Folder of a public data set's files (coco, vg500, ...).")]
FeaturesOpt = Annotated[Optional[Path], _option("Feature-store folder.", DEFAULT_FEATURES)]
SpaceOpt = Annotated[Optional[str], _option("Search space: a name in searchspaces/ or a .toml path.", DEFAULT_SPACE)]
ImageBackboneOpt = Annotated[Optional[str], _option("'tiny', family:source (see `difffeat-tune backbones`), or a DiT hub id or folder.", TINY)]
VaeOpt = Annotated[Optional[str], typer.Option(help="Separate VAE for a latent-diffusion image backbone (hub id or folder).")]
TextBackboneOpt = Annotated[Optional[str], _option("'tiny', family:source (see `difffeat-tune backbones`), or a folder with Plaid's weight files.", TINY)]
TokenizerOpt = Annotated[Optional[str], typer.Option(help="Tokenizer file (default: the one in the text backbone's folder).")]
DeviceOpt = Annotated[Optional[str], _option("'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:N'.", DEFAULT_DEVICE)]
BatchOpt = Annotated[Optional[int], _option("Rows per extraction batch (each goes through every timestep).", DEFAULT_BATCH_SIZE)]
DtypeOpt = Annotated[Optional[str], _option("Stored feature dtype: float16 or float32.", DEFAULT_DTYPE)]
SeedOpt = Annotated[Optional[int], _option("Seed of the image noise, of random text noising and of masking.", _default(LoadOptions, "noise_seed"))]
TokenLengthOpt = Annotated[Optional[int], typer.Option(help="Text token length L (pad with end-of-text, or truncate); default: the data set's recommendation, else the backbone's.")]
NoisingOpt = Annotated[Optional[str], _option("Text noising: 'ddim' (deterministic inversion) or 'random'.", _default(LoadOptions, "text_noising"))]
InversionOpt = Annotated[Optional[int], typer.Option(help="DDIM-inversion step in timesteps (default: the backbone's).")]
ResolutionOpt = Annotated[Optional[int], typer.Option(help="Image side in pixels for diffusers image families (default: the model's own).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details and tracebacks.")]
StorageOpt = Annotated[Optional[str], typer.Option(help="Optuna storage URL (default: sqlite:///<runs>/studies.db).")]
RunsOpt = Annotated[Optional[Path], _option("Runs folder (SQLite studies, comparisons, reports).", _default(SearchOptions, "runs"))]
StudyOpt = Annotated[Optional[str], typer.Option(help="Study name (default: <dataset>-<sampler>); reuse it to resume.")]
WorkersOpt = Annotated[Optional[int], _option("Trial loops in this process (threads); more processes may share --storage.", _default(SearchOptions, "workers"))]
ThreadsOpt = Annotated[Optional[int], typer.Option(help="Torch threads of this process (default: cores // workers).")]
BatchTrialsOpt = Annotated[Optional[int], typer.Option(help="Probes trained together as one computation, also per Ray Tune trial with --engine ray (default: automatic, up to 32 as memory allows; 1 with a pruner).")]
FusionOpt = Annotated[Optional[str], _option("Fusion method(s), comma-separated, or 'all'.", _default(SearchOptions, "fusion_methods"))]
UnimodalProxyOpt = Annotated[Optional[str], typer.Option(help="Heuristic only: score every unimodal (t, b) by this closed-form proxy, 'logme' or 'ridge' (no probe trained), then train only the --proxy-top best per modality; the study is named <data set>-heuristic-<proxy> (default: train every unimodal configuration, as the paper).")]
ProxyTopOpt = Annotated[Optional[int], _option("With --unimodal-proxy: the unimodal configurations trained per modality.", _default(SearchOptions, "proxy_top"))]
NeighbourhoodOpt = Annotated[Optional[str], _option("Heuristic neighbourhood: cross, box or radius.", _default(SearchOptions, "neighbourhood"))]
RadiusOpt = Annotated[Optional[int], _option("Neighbourhood radius in grid steps.", _default(SearchOptions, "radius"))]
PrunerOpt = Annotated[Optional[str], _option("none, median or halving (over probe epochs).", _default(SearchOptions, "pruner"))]
EpochsOpt = Annotated[Optional[int], typer.Option(help=f"Probe epochs (default: the space's, else {DEFAULT_EPOCHS}).")]
MemoryBudgetOpt = Annotated[Optional[str], typer.Option(help=f"Memory the search's probes may hold on the device (cached features and the batches trained), e.g. 8GiB, 6GB, 512MiB (default: {OBJECTIVE_MEMORY_SHARE:.0%} of the free memory).")]
ProtocolOpt = Annotated[Optional[str], _option("'validation' (select on val, report test) or 'paper' (select on the evaluation split).", DEFAULT_PROTOCOL)]
NTrialsOpt = Annotated[Optional[int], typer.Option(help="Stop after this many new trials (resume later).")]
GridSeedOpt = Annotated[Optional[int], _option("Seed of the grid order.", _default(SearchOptions, "seed"))]
EngineOpt = Annotated[Optional[str], _option("'local' (this process) or 'ray' (Ray Tune trials on a Ray cluster).", _default(SearchOptions, "engine"))]
RayAddressOpt = Annotated[Optional[str], typer.Option(help="With --engine ray: the cluster to join ('auto', 'host:port'); default: a private local Ray.")]
LoaderWorkersOpt = Annotated[Optional[int], typer.Option(min=0, help="Processes preparing the inputs (decode and crop, tokenise) ahead of the model (default: half the cores, at most 8; 0: in the main process); the features do not depend on it.")]
ExtractEngineOpt = Annotated[Optional[str], _option("'local' (this process) or 'ray' (the extraction's units on Ray actors, one backbone and one GPU each).", "local")]
ActorsOpt = Annotated[Optional[int], typer.Option(min=1, help="With --engine ray: Ray actors (default: one per GPU of the cluster, else one per CPU).")]
ExtractRayAddressOpt = Annotated[Optional[str], typer.Option(help="With --engine ray: the cluster to join ('auto', 'host:port'); default: the running Ray, else a local one.")]
NoReportOpt = Annotated[bool, typer.Option("--no-report", help="Do not write the report (runs/reports/<study>/) at the end.")]


def _ints(text: Optional[str], option: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of integers", param_hint=option) from None


#: Units of ``--memory-budget``: decimal (GB) and binary (GiB, and the bare G) multiples of a byte.
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30, "t": 2**40, "tib": 2**40}


def _bytes(text: Optional[str], option: str) -> int | None:
    """A size such as ``8GiB``, ``6GB``, ``512MiB`` or ``1000000`` in bytes."""
    if text is None:
        return None
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    unit = match[2].lower() if match else ""
    if match is None or unit not in _UNITS or float(match[1]) <= 0:
        raise typer.BadParameter(f"{text!r} is not a size: give a positive number with a unit, e.g. 8GiB, 6GB or "
                                 "512MiB", param_hint=option)
    return int(float(match[1]) * _UNITS[unit])


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False, markup=False)], force=True)
    # Optuna logs every trial at INFO through its own handler; the progress line already shows them.
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)


def _check_paths(**paths: Optional[Path]) -> None:
    """One-line errors for output folders that are files, cannot be created or cannot be written."""
    import tempfile

    for option, given in paths.items():
        if given is None:
            continue
        flag = f"--{option.replace('_', '-')}"
        path = store_location(given, flag) if option == "features" else local_folder(given, flag)
        if not isinstance(path, Path):  # an object store: checked when the store opens
            continue
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{flag} {path} is a file, not a folder", f"give {flag} a folder")
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            raise ConfigError(f"{flag} {path} cannot be written: {exc.strerror or exc}",
                              f"give {flag} a folder you can write to") from None


#: The command-line option of each setting that an error may name (``ConfigError.field``).
OPTION_OF_FIELD = {
    "TrainRecipe.epochs": "--epochs", "StoreSettings.batch_size": "--batch-size", "DataSettings.root": "--root",
    "StoreSettings.engine": "--engine", "StoreSettings.loader_workers": "--loader-workers",
    "StoreSettings.actors": "--actors", "SearchOptions.unimodal_proxy": "--unimodal-proxy",
    "SearchOptions.proxy_top": "--proxy-top",
    "ObjectiveSettings.memory_budget": "--memory-budget",
    "SearchOptions.radius": "--radius", "SearchOptions.workers": "--workers", "SearchOptions.threads": "--threads",
    "SearchOptions.batch_trials": "--batch-trials", "SearchOptions.n_trials": "--n-trials",
    "LoadOptions.resolution": "--resolution", "LoadOptions.token_length": "--token-length",
    "LoadOptions.inversion_step": "--inversion-step",
}


def _settings(**options: Any) -> Settings:
    """The settings of a command from its options (every command goes through here); an invalid
    value is named by its option (``--epochs``), not by the Python field behind it."""
    try:
        return _build_settings(**options)
    except ConfigError as exc:
        if exc.field in OPTION_OF_FIELD:
            raise exc.named(OPTION_OF_FIELD[exc.field]) from None
        raise


def _given(**values: Any) -> dict[str, Any]:
    """The options the user gave: ``None`` is "not given", so the dataclass's default applies."""
    return {k: v for k, v in values.items() if v is not None}


def _build_settings(*, dataset: str | None = None, root: Path | None = None, image_backbone: str | None = None,
                    text_backbone: str | None = None, features: Path | None = None, dtype: str | None = None,
                    batch_size: int | None = None, splits: tuple[str, ...] | None = None, space: str | None = None,
                    device: str | None = None, fusion: str | None = None, memory_budget: str | None = None,
                    loader_workers: int | None = None, extract_engine: str | None = None, actors: int | None = None,
                    extract_ray_address: str | None = None, **rest: Any) -> Settings:
    """``rest`` holds the :class:`LoadOptions` fields (``--vae``, ``--noise-seed``, ...) and the
    fields :meth:`Settings.create` takes as overrides (``--epochs``, ``--protocol``, the
    :class:`SearchOptions`)."""
    from difffeat_tune.features import BackboneSettings, DataSettings, StoreSettings
    from difffeat_tune.search._settings import Settings

    _check_paths(features=features, runs=rest.get("runs"))
    load = {f.name: rest.pop(f.name) for f in fields(LoadOptions) if f.name in rest}
    backbones = BackboneSettings(**_given(image=image_backbone, text=text_backbone),
                                 options=LoadOptions(**_given(**load)))
    return Settings.create(
        **_given(space=space, device=device, fusion=fusion), data=DataSettings(**_given(dataset=dataset, root=root)),
        backbones=backbones,
        store=StoreSettings(**_given(features=features, dtype=dtype, batch_size=batch_size, splits=splits,
                                     loader_workers=loader_workers, engine=extract_engine, actors=actors,
                                     ray_address=extract_ray_address)),
        memory_budget=_bytes(memory_budget, "--memory-budget"), **rest)


def _prepare(request: FeatureRequest, quiet: bool, *, verify: bool = False,
             dataset: Dataset | None = None) -> PreparedFeatures:
    """Extract (or reuse) the request's features under a rich progress bar, one bar per modality."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from difffeat_tune.features import ensure_features

    if quiet:
        return ensure_features(request, verify=verify, dataset=dataset)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), console=console) as bar:
        tasks: dict[str, TaskID] = {}

        def on_total(modality: str, total: int) -> None:
            tasks[modality] = bar.add_task(f"{modality} features", total=total or 1, completed=0 if total else 1,
                                           speed="")

        def progress(modality: str, rows: int) -> None:
            bar.advance(tasks[modality], rows)
            speed = bar.tasks[tasks[modality]].speed
            bar.update(tasks[modality], speed=f"{speed:,.0f} samples/s" if speed else "")

        return ensure_features(request, progress=progress, on_total=on_total, verify=verify, dataset=dataset)


def _trial_progress(quiet: bool) -> Callable[[SearchRun], Any]:
    """``progress(run)`` for :func:`~difffeat_tune.search.runner.run_search`: a spinner with the
    trial count and the best score so far while the run's trials go on."""

    @contextmanager
    def progress(run: SearchRun) -> Iterator[Callback]:
        if quiet:
            yield lambda study, trial: None
            return
        from rich.progress import Progress, TextColumn, TimeElapsedColumn

        from difffeat_tune.search._plan import is_proxy

        what = f"{run.settings.search.sampler} search ({run.study.study_name})"
        with Progress(TextColumn("[bold]{task.description}"), TextColumn("{task.completed} trials"),
                      TextColumn("{task.fields[best]}"), TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task(escape(what), total=None, best="")
            best: list[tuple[float, int]] = []  # (value, -number) of the best trial told here

            def callback(study, trial) -> None:  # type: ignore[no-untyped-def]
                # From the trial just told, not study.best_trial: that would read the storage every trial.
                if trial.value is not None and trial.state.name == "COMPLETE" and not is_proxy(trial) and (
                        not best or (trial.value, -trial.number) > best[0]):
                    best[:] = [(trial.value, -trial.number)]
                    bar.update(task, best=escape(f"best {100 * trial.value:.2f} ({trial.user_attrs.get('config', '')})"))
                bar.update(task, advance=1)

            yield callback

    return progress


# -- extract --------------------------------------------------------------------------------------

@app.command()
def extract(
    dataset: DatasetOpt = None,
    root: RootOpt = None,
    features: FeaturesOpt = None,
    space: SpaceOpt = None,
    modality: Annotated[str, typer.Option(help="'image', 'text' or 'both'.")] = "both",
    image_backbone: ImageBackboneOpt = None,
    vae: VaeOpt = None,
    text_backbone: TextBackboneOpt = None,
    tokenizer: TokenizerOpt = None,
    image_timesteps: Annotated[Optional[str], typer.Option(help="Comma-separated image timesteps (default: the space's).")] = None,
    image_blocks: Annotated[Optional[str], typer.Option(help="Comma-separated 1-based image blocks (default: the space's).")] = None,
    text_timesteps: Annotated[Optional[str], typer.Option(help="Comma-separated text timesteps (default: the space's).")] = None,
    text_blocks: Annotated[Optional[str], typer.Option(help="Comma-separated 1-based text blocks (default: the space's).")] = None,
    splits: Annotated[Optional[str], typer.Option(help="Comma-separated splits (default: all).")] = None,
    device: DeviceOpt = None,
    batch_size: BatchOpt = None,
    dtype: DtypeOpt = None,
    noise_seed: SeedOpt = None,
    token_length: TokenLengthOpt = None,
    text_noising: NoisingOpt = None,
    inversion_step: InversionOpt = None,
    resolution: ResolutionOpt = None,
    threads: ThreadsOpt = None,
    loader_workers: LoaderWorkersOpt = None,
    engine: ExtractEngineOpt = None,
    actors: ActorsOpt = None,
    ray_address: ExtractRayAddressOpt = None,
    verify: Annotated[bool, typer.Option("--verify", help="Check the checksum of every stored part and rebuild the damaged ones.")] = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Extract pooled diffusion features into the Parquet feature store (resumable; damaged parts are rebuilt)."""
    _setup_logging(verbose)
    if modality not in ("image", "text", "both"):
        raise typer.BadParameter("choose image, text or both", param_hint="--modality")
    from difffeat_tune._device import configure_threads
    from difffeat_tune.features import with_grid

    settings = _settings(dataset=dataset, root=root, features=features, space=space, image_backbone=image_backbone,
                         vae=vae, text_backbone=text_backbone, tokenizer=tokenizer, device=device,
                         batch_size=batch_size, dtype=dtype, noise_seed=noise_seed, token_length=token_length,
                         text_noising=text_noising, inversion_step=inversion_step, resolution=resolution,
                         threads=threads, loader_workers=loader_workers, extract_engine=engine, actors=actors,
                         extract_ray_address=ray_address,
                         splits=tuple(s for s in splits.split(",") if s) if splits else None)
    grid = settings.space
    grid = with_grid(grid, "image", _ints(image_timesteps, "--image-timesteps"), _ints(image_blocks, "--image-blocks"))
    grid = with_grid(grid, "text", _ints(text_timesteps, "--text-timesteps"), _ints(text_blocks, "--text-blocks"))
    if modality != "both":
        grid = grid.restricted_to((modality,))
    configure_threads(1, threads)
    prepared = _prepare(settings.with_space(grid).features, quiet=as_json, verify=verify)
    summary = {
        "dataset": prepared.view.folder.name,
        "store": str(settings.store.features),
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
    from rich.table import Table

    table = Table(title=escape(f"features of {summary['dataset']} in {settings.store.features}"))
    for col in ("modality", "parts written", "parts reused", "samples", "samples/s", "folder"):
        table.add_column(col)
    for r in summary["extractions"]:  # type: ignore[union-attr]
        table.add_row(r["modality"], str(r["parts_written"]), str(r["parts_skipped"]), str(r["rows"]),
                      f"{r['samples_per_second']:,.0f}", escape(r["folder"]))
    out.print(table)


# -- run NAME / compare --------------------------------------------------------------------------

def _search_command(kind: str) -> Callable[..., None]:
    """The command ``run <kind>`` (a sampler of ``SAMPLERS``), or ``compare``."""
    def command(
        dataset: DatasetOpt = None,
        root: RootOpt = None,
        features: FeaturesOpt = None,
        space: SpaceOpt = None,
        storage: StorageOpt = None,
        study_name: StudyOpt = None,
        runs: RunsOpt = None,
        workers: WorkersOpt = None,
        threads: ThreadsOpt = None,
        batch_trials: BatchTrialsOpt = None,
        fusion: FusionOpt = None,
        neighbourhood: NeighbourhoodOpt = None,
        radius: RadiusOpt = None,
        unimodal_proxy: UnimodalProxyOpt = None,
        proxy_top: ProxyTopOpt = None,
        pruner: PrunerOpt = None,
        epochs: EpochsOpt = None,
        protocol: ProtocolOpt = None,
        memory_budget: MemoryBudgetOpt = None,
        n_trials: NTrialsOpt = None,
        seed: GridSeedOpt = None,
        engine: EngineOpt = None,
        ray_address: RayAddressOpt = None,
        image_backbone: ImageBackboneOpt = None,
        vae: VaeOpt = None,
        text_backbone: TextBackboneOpt = None,
        tokenizer: TokenizerOpt = None,
        device: DeviceOpt = None,
        batch_size: BatchOpt = None,
        dtype: DtypeOpt = None,
        noise_seed: SeedOpt = None,
        token_length: TokenLengthOpt = None,
        text_noising: NoisingOpt = None,
        inversion_step: InversionOpt = None,
        resolution: ResolutionOpt = None,
        no_report: NoReportOpt = False,
        as_json: JsonOpt = False,
        verbose: VerboseOpt = False,
    ) -> None:
        _setup_logging(verbose)
        if kind == "compare" and proxy_top is not None and unimodal_proxy is None:
            raise ConfigError("compare: --proxy-top applies to the proxy-guided heuristic, which --unimodal-proxy adds",
                              "add --unimodal-proxy logme (or ridge), or leave --proxy-top out")
        options = {k: v for k, v in locals().items() if k not in ("as_json", "verbose", "kind", "no_report")}
        settings = _settings(**options, sampler=None if kind == "compare" else kind)
        # With --json, stdout carries the JSON alone: anything a library prints (Ray Tune's status) goes to stderr.
        with redirect_stdout(sys.stderr) if as_json else nullcontext():
            result = (_compare(settings, as_json, report=not no_report) if kind == "compare"
                      else _run(settings, as_json, report=not no_report))
        if as_json:
            out.print_json(json.dumps(result.as_dict(), default=str))
        elif kind != "compare":
            _print_summary(result, settings.search.storage_url())  # type: ignore[arg-type]

    first, second = COMPARED
    command.__doc__ = (f"Run (or reuse) the {first} and the {second} study on the same features and compare them "
                       f"(with --unimodal-proxy, the proxy-guided {first} too)." if kind == "compare" else
                       f"Run (or resume) a study with the {kind} sampler (`difffeat-tune run --help` says what "
                       "each sampler does).")
    return command


class _SamplerGroup(TyperGroup):
    """``run NAME`` for every entry of ``SAMPLERS``, read from the table when a command runs or
    ``run --help`` lists them (``run NAME --help`` imports nothing heavy)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from difffeat_tune.search._samplers import SAMPLERS

        ctx.meta["samplers"] = {name: kind.summary for name, kind in SAMPLERS.items()}
        return list(SAMPLERS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        sub = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        summary = ctx.meta.get("samplers", {}).get(cmd_name)
        sub.command(cmd_name, short_help=summary)(_search_command(cmd_name))
        return typer.main.get_command(sub)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        if args and not ctx.resilient_parsing and "--help" not in args[1:]:
            from difffeat_tune.search._samplers import SAMPLERS

            if args[0] not in SAMPLERS:
                ctx.fail(f"No sampler {args[0]!r}: use one of {', '.join(SAMPLERS)}.")
        return super().resolve_command(ctx, args)


run_app = typer.Typer(cls=_SamplerGroup, no_args_is_help=True,
                      help="Run a search study with one of the samplers (resumes when the study already exists).")
app.add_typer(run_app, name="run")


def _features(settings: Settings, quiet: bool) -> Callable[[FeatureRequest, Dataset], PreparedFeatures]:
    """How the search commands prepare their features: with progress bars, then this process's
    torch threads set for the search's workers."""
    def prepare(request: FeatureRequest, dataset: Dataset) -> PreparedFeatures:
        from difffeat_tune._device import configure_threads

        prepared = _prepare(request, quiet, dataset=dataset)
        configure_threads(settings.search.workers, settings.search.threads)
        return prepared

    return prepare


def _on_report(quiet: bool) -> Callable[[Path, Report | None], None]:
    """Say where the report is: drawn now (with what it left out), or up to date."""
    def said(page: Path, written: Report | None) -> None:
        if quiet:
            return
        if written is None:
            console.print(escape(f"Report: {page} (up to date; `difffeat-tune report` redraws it)"))
            return
        console.print(escape(f"Report: {written.html} ({len(written.figures)} figures, {written.seconds:.1f} s)"))
        for what, why in written.skipped.items():
            console.print(escape(f"  not in the report: {what}: {why}"))

    return said


def _run(settings: Settings, quiet: bool, *, report: bool = True) -> SearchSummary:
    from difffeat_tune.search.runner import run_search

    return run_search(settings, prepare=_features(settings, quiet), progress=_trial_progress(quiet),
                      report=report, on_report=_on_report(quiet))


def _compare(settings: Settings, quiet: bool, *, report: bool = True) -> Comparison:
    """Both studies of :data:`COMPARED` on the same features and objective (and, with
    ``--unimodal-proxy``, the proxy-guided heuristic's study), then their comparison."""
    from dataclasses import replace

    from difffeat_tune.probe.objective import Objective
    from difffeat_tune.search._study_report import write_study_report
    from difffeat_tune.search.compare import Comparison
    from difffeat_tune.search.runner import open_storage, run_search

    import optuna

    storage = open_storage(settings.search.storage_url())  # a bad URL is named before any extraction
    prepared = _features(settings, quiet)(settings.features, settings.data.load())
    settings = settings.with_space(prepared.space)
    base = settings.search.study_base(prepared.view.folder.name)
    objective = Objective(prepared.view, settings.probe, device=settings.device)
    guided = settings.search  # the proxy-guided heuristic, when --unimodal-proxy asks for it
    plain = replace(guided, unimodal_proxy=None)
    searches = [plain.for_sampler(sampler, base) for sampler in COMPARED]
    if guided.unimodal_proxy is not None:
        searches.append(replace(guided, study_name=study_name(base, guided.plan_label)))
    summaries = [run_search(replace(settings, search=search), prepared.view, objective=objective, storage=storage,
                            progress=_trial_progress(quiet)) for search in searches]
    comparison = Comparison(*summaries)
    paths = comparison.save(settings.search.runs, base, storage)
    if not quiet:
        from rich.table import Table

        header = comparison.header()
        table = Table(title=escape(f"{' vs '.join(header[1:])} on {base}"))
        for col in header:
            table.add_column(col)
        for row in comparison.rows():
            table.add_row(*(escape(cell) for cell in row))
        out.print(table)
        out.print(escape(f"{comparison.regret_sentence()} Saved {', '.join(str(p) for p in paths)} and a "
                         "note on each study."))
    if report:  # the first study's report holds the comparison (the grid's landscape with the heuristic's pairs)
        first = optuna.load_study(study_name=summaries[0].study_name, storage=storage)
        write_study_report(storage, first, settings, objective, _on_report(quiet))
    return comparison


def _print_summary(summary: SearchSummary, storage: str) -> None:
    from rich.table import Table

    from difffeat_tune.search._attrs import METRIC_LABELS

    metric_keys = [k for k in METRIC_LABELS if k in summary.best_metrics or k in summary.eval_metrics
                   or any(k in row["metrics"] for row in summary.best_by_modality.values())]  # type: ignore[operator]
    table = Table(title=escape(f"study {summary.study_name} ({summary.sampler})"))
    table.add_column("best", no_wrap=True)
    table.add_column("configuration", overflow="fold")
    table.add_column("split", no_wrap=True)
    for key in metric_keys:
        table.add_column(METRIC_LABELS[key], justify="right", no_wrap=True)
    for modality, row in summary.best_by_modality.items():
        metrics: dict[str, float] = row["metrics"]  # type: ignore[assignment]
        table.add_row(modality, escape(str(row["label"])), escape(str(summary.selection_split)),
                      *(f"{100 * metrics[k]:.2f}" if k in metrics else "-" for k in metric_keys))
    if summary.eval_metrics:
        table.add_row("chosen", escape(summary.best_label or "-"), escape(str(summary.eval_split)),
                      *(f"{100 * summary.eval_metrics[k]:.2f}" if k in summary.eval_metrics else "-"
                        for k in metric_keys))
    out.print(table)
    trials = ", ".join(f"{k} {v}" for k, v in sorted(summary.trials.items()))
    phases = ", ".join(f"{k} {v}" for k, v in sorted(summary.phases.items()))
    out.print(escape(f"trials: {trials} ({phases}); probe epochs {summary.probe_epochs}; "
                     f"search time {summary.search_seconds:.1f} s (while trials ran; pauses between runs "
                     "not counted)"))
    for failure in summary.failures:
        out.print(f"[red]failed[/] {escape(failure['config'])}: {escape(failure['error'])}")
    if summary.failures:
        out.print(escape("Repair the features these errors name: `difffeat-tune extract --verify` (same options) "
                         "rebuilds damaged shards; for NaN/Inf values, delete the shard it names and run the same "
                         "extract again. Then run this command again: failed configurations are retried."))
    out.print(f"Browse it: [bold]{escape(f'difffeat-tune dashboard --storage {storage}')}[/]", soft_wrap=True)


app.command("compare")(_search_command("compare"))


# -- report, dashboard, backbones -----------------------------------------------------------------

@app.command()
def report(
    storage: StorageOpt = None,
    study_name: Annotated[str, typer.Option(help="The study.")] = study_name(DEFAULT_DATASET, _default(SearchOptions, "sampler")),
    runs: RunsOpt = None,
    out_dir: Annotated[Optional[Path], typer.Option(help="Report folder (default: <runs>/reports/<study>).")] = None,
    device: DeviceOpt = None,
    no_features: Annotated[bool, typer.Option("--no-features", help="Skip what re-trains from the feature store (test scores of the unimodal bests, per-class AP, t-SNE).")] = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Write a study's figures (A(t, b), fusion grid, best of each modality, t-SNE...) as HTML, PNG, PDF and into the dashboard."""
    _setup_logging(verbose)
    from difffeat_tune.report import write_report
    from difffeat_tune.search._storage import open_storage

    search = _search_options(storage, runs)
    opened = open_storage(search.storage_url(), heartbeat=False, create=False)  # first: a missing database is not created
    folder = out_dir or search.report_folder(study_name)
    _check_paths(out_dir=folder)
    written = write_report(opened, study_name, folder, device=device or DEFAULT_DEVICE, features=not no_features)
    if as_json:
        out.print_json(json.dumps(written.as_dict(), default=str))
        return
    out.print(escape(f"Report of {study_name}: {written.html}"))
    out.print(escape(f"  {len(written.figures)} figures ({', '.join(written.figures)}), PNG and PDF beside it; "
                     f"saved into the study for the dashboard: {'yes' if written.dashboard else 'no'}"))
    for what, why in written.skipped.items():
        out.print(escape(f"  not in the report: {what}: {why}"))


def _search_options(storage: str | None, runs: Path | None) -> SearchOptions:
    """Where the studies are, for the commands that only read them (report, dashboard)."""
    return SearchOptions(**_given(storage=storage, runs=None if runs is None else local_folder(runs, "--runs")))


# -- dashboard, backbones -------------------------------------------------------------------------

@app.command()
def dashboard(
    storage: StorageOpt = None,
    runs: RunsOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="Port.")] = DEFAULT_PORT,
) -> None:
    """Start optuna-dashboard on the study storage."""
    from difffeat_tune.dashboard import check_address, serve_dashboard
    from difffeat_tune.search._storage import open_storage

    check_address(host, port)
    url = _search_options(storage, runs).storage_url()
    opened = open_storage(url, heartbeat=False, create=False)  # a read-only command creates no database
    console.print(f"optuna-dashboard on [bold]http://{host}:{port}[/] for {escape(url)} (Ctrl-C to stop)")
    serve_dashboard(opened, host=host, port=port)


@app.command()
def backbones(as_json: JsonOpt = False) -> None:
    """List the backbone families: how to name them, what t means, which modules are the blocks."""
    from difffeat_tune.backbones._registry import families

    rows = [{"family": f.name, "modality": f.modality, "summary": f.summary, "timestep": f.timestep,
             "blocks": f.blocks, "default": f.default_source} for f in families()]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    from rich.table import Table

    table = Table(title="backbone families (--image-backbone / --text-backbone family:source; 'tiny' for the shipped ones)")
    for col in ("family", "modality", "what it is", "t means", "blocks", "default source"):
        table.add_column(col)
    for row in rows:
        table.add_row(*(escape(str(row[k])) for k in ("family", "modality", "summary", "timestep", "blocks")),
                      escape(str(row["default"] or "- (give family:SOURCE)")))
    out.print(table)


def main() -> None:
    """Console-script entry point: library errors become a clean message and exit code 2."""
    try:
        app()
    except DiffFeatError as exc:
        console.print(f"[bold red]error:[/] {escape(exc.message)}")
        if exc.hint:
            console.print(f"  [yellow]->[/] {escape(exc.hint)}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
