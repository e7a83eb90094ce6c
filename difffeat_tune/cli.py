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
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from difffeat_tune._defaults import (
    DEFAULT_BATCH_SIZE, DEFAULT_DATASET, DEFAULT_DTYPE, DEFAULT_FEATURES, DEFAULT_FUSION, DEFAULT_HOST,
    DEFAULT_PORT, DEFAULT_RUNS, DEFAULT_SPACE, REPORT_PAGE, TINY,
)
from difffeat_tune._errors import ConfigError, DiffFeatError
from difffeat_tune._paths import local_folder, store_location

if TYPE_CHECKING:
    import optuna

    from difffeat_tune.features import PreparedFeatures
    from difffeat_tune.search.runner import SearchSummary
    from difffeat_tune.search._settings import Settings

app = typer.Typer(help="Find the best diffusion-feature configuration (Diff-Feat) for multi-label classification.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
run_app = typer.Typer(help="Run a search study (resumes when the study already exists).", no_args_is_help=True)
app.add_typer(run_app, name="run")
#: Width of the results on stdout when it is not a terminal (a file, a pipe, `make`'s log): wide
#: enough that a configuration fits its table cell; a terminal uses its own width.
PIPED_WIDTH = 160
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)


# -- options shared by the commands (Typer reads the help from the Annotated metadata) ---------------

DatasetOpt = Annotated[str, typer.Option(help="Data set: 'shapes' (embedded), 'shapes-enhanced', coco, coco-enhanced, coco-plain, vg500, voc2007, cifar100, tiny-imagenet, ag-news (with --root), or a manifest path.")]
RootOpt = Annotated[Optional[Path], typer.Option(help="Folder of a public data set's files (coco, vg500, ...).")]
FeaturesOpt = Annotated[Path, typer.Option(help="Feature-store folder.")]
SpaceOpt = Annotated[str, typer.Option(help="Search space: a name in searchspaces/ or a .toml path.")]
ImageBackboneOpt = Annotated[str, typer.Option(help="'tiny', family:source (see `difffeat-tune backbones`), or a DiT hub id or folder.")]
VaeOpt = Annotated[Optional[str], typer.Option(help="Separate VAE for a latent-diffusion image backbone (hub id or folder).")]
TextBackboneOpt = Annotated[str, typer.Option(help="'tiny', family:source (see `difffeat-tune backbones`), or a folder with Plaid's weight files.")]
TokenizerOpt = Annotated[Optional[str], typer.Option(help="Tokenizer file (default: the one in the text backbone's folder).")]
DeviceOpt = Annotated[str, typer.Option(help="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:N'.")]
BatchOpt = Annotated[int, typer.Option(help="Rows per extraction batch (each goes through every timestep).")]
DtypeOpt = Annotated[str, typer.Option(help="Stored feature dtype: float16 or float32.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the image noise, of random text noising and of masking.")]
TokenLengthOpt = Annotated[Optional[int], typer.Option(help="Text token length L (pad with end-of-text, or truncate); default: the data set's recommendation, else the backbone's.")]
NoisingOpt = Annotated[str, typer.Option(help="Text noising: 'ddim' (deterministic inversion) or 'random'.")]
InversionOpt = Annotated[Optional[int], typer.Option(help="DDIM-inversion step in timesteps (default: the backbone's).")]
ResolutionOpt = Annotated[Optional[int], typer.Option(help="Image side in pixels for diffusers image families (default: the model's own).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details and tracebacks.")]
StorageOpt = Annotated[Optional[str], typer.Option(help="Optuna storage URL (default: sqlite:///<runs>/studies.db).")]
RunsOpt = Annotated[Path, typer.Option(help="Runs folder (SQLite studies, comparisons, reports).")]
StudyOpt = Annotated[Optional[str], typer.Option(help="Study name (default: <dataset>-<sampler>); reuse it to resume.")]
WorkersOpt = Annotated[int, typer.Option(help="Trial loops in this process (threads); more processes may share --storage.")]
ThreadsOpt = Annotated[Optional[int], typer.Option(help="Torch threads of this process (default: cores // workers).")]
BatchTrialsOpt = Annotated[Optional[int], typer.Option(help="Probes trained together as one computation (default: automatic; 1 with a pruner).")]
FusionOpt = Annotated[str, typer.Option(help="Fusion method(s), comma-separated, or 'all'.")]
NeighbourhoodOpt = Annotated[str, typer.Option(help="Heuristic neighbourhood: cross, box or radius.")]
RadiusOpt = Annotated[int, typer.Option(help="Neighbourhood radius in grid steps.")]
PrunerOpt = Annotated[str, typer.Option(help="none, median or halving (over probe epochs).")]
EpochsOpt = Annotated[Optional[int], typer.Option(help="Probe epochs (default: the space's, else 40).")]
MemoryBudgetOpt = Annotated[Optional[str], typer.Option(help="Memory the search's probes may hold on the device (cached features and the batches trained), e.g. 8GiB, 6GB, 512MiB (default: 60% of the free memory).")]
ProtocolOpt = Annotated[str, typer.Option(help="'validation' (select on val, report test) or 'paper' (select on the evaluation split).")]
NTrialsOpt = Annotated[Optional[int], typer.Option(help="Stop after this many new trials (resume later).")]
GridSeedOpt = Annotated[int, typer.Option(help="Seed of the grid order.")]
EngineOpt = Annotated[str, typer.Option(help="'local' (this process) or 'ray' (Ray Tune trials on a Ray cluster).")]
RayAddressOpt = Annotated[Optional[str], typer.Option(help="With --engine ray: the cluster to join ('auto', 'host:port'); default: a private local Ray.")]
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
    "TrainRecipe.epochs": "--epochs", "StoreSettings.batch_size": "--batch-size",
    "ObjectiveSettings.memory_budget": "--memory-budget",
    "SearchOptions.radius": "--radius", "SearchOptions.workers": "--workers", "SearchOptions.threads": "--threads",
    "SearchOptions.batch_trials": "--batch-trials", "SearchOptions.n_trials": "--n-trials",
    "BackboneSettings.resolution": "--resolution", "BackboneSettings.token_length": "--token-length",
    "BackboneSettings.inversion_step": "--inversion-step",
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


def _build_settings(**options: Any) -> Settings:
    from difffeat_tune.features import BackboneSettings, DataSettings, StoreSettings
    from difffeat_tune.probe.objective import ObjectiveSettings
    from difffeat_tune.search._options import SearchOptions
    from difffeat_tune.search._settings import Settings

    get = options.get
    _check_paths(features=get("features"), runs=get("runs"))
    data = DataSettings(dataset=get("dataset", DEFAULT_DATASET), root=get("root"))
    backbones = BackboneSettings(
        image=get("image_backbone", TINY), text=get("text_backbone", TINY), vae=get("vae"),
        tokenizer=get("tokenizer"), noise_seed=get("noise_seed", 0), token_length=get("token_length"),
        text_noising=get("text_noising", "ddim"), inversion_step=get("inversion_step"), resolution=get("resolution"))
    store = StoreSettings(features=get("features", DEFAULT_FEATURES), dtype=get("dtype", DEFAULT_DTYPE),
                          batch_size=get("batch_size", DEFAULT_BATCH_SIZE), splits=get("splits"))
    search = SearchOptions(
        sampler=get("sampler", "heuristic"), neighbourhood=get("neighbourhood", "cross"), radius=get("radius", 1),
        pruner=get("pruner", "none"), workers=get("workers", 1), threads=get("threads"),
        batch_trials=get("batch_trials"), seed=get("seed", 0), n_trials=get("n_trials"),
        engine=get("engine", "local"), ray_address=get("ray_address"), storage=get("storage"),
        study_name=get("study_name"), runs=get("runs", DEFAULT_RUNS))
    return Settings.create(space=get("space", DEFAULT_SPACE), data=data, backbones=backbones, store=store,
                           probe=ObjectiveSettings(protocol=get("protocol", "validation"),
                                                   memory_budget=_bytes(get("memory_budget"), "--memory-budget")),
                           search=search,
                           device=get("device", "auto"), fusion=get("fusion", DEFAULT_FUSION),
                           epochs=get("epochs"))


def _prepare(settings: Settings, quiet: bool, verify: bool = False) -> PreparedFeatures:
    """Extract (or reuse) the settings' features under a rich progress bar, one bar per modality."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from difffeat_tune.features import ensure_features

    if quiet:
        return ensure_features(settings.features, verify=verify)
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

        return ensure_features(settings.features, progress=progress, on_total=on_total, verify=verify)


@contextmanager
def _trial_progress(quiet: bool, what: str) -> Iterator[Callable[..., None]]:
    """A spinner with the trial count and the best score so far, as an Optuna callback."""
    if quiet:
        yield lambda study, trial: None
        return
    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.description}"), TextColumn("{task.completed} trials"),
                  TextColumn("{task.fields[best]}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(escape(what), total=None, best="")
        best: list[tuple[float, int]] = []  # (value, -number) of the best trial told here

        def callback(study, trial) -> None:  # type: ignore[no-untyped-def]
            # From the trial just told, not study.best_trial: that would read the storage every trial.
            if trial.value is not None and trial.state.name == "COMPLETE" and (
                    not best or (trial.value, -trial.number) > best[0]):
                best[:] = [(trial.value, -trial.number)]
                bar.update(task, best=escape(f"best {100 * trial.value:.2f} ({trial.user_attrs.get('config', '')})"))
            bar.update(task, advance=1)

        yield callback


# -- extract --------------------------------------------------------------------------------------

@app.command()
def extract(
    dataset: DatasetOpt = DEFAULT_DATASET,
    root: RootOpt = None,
    features: FeaturesOpt = DEFAULT_FEATURES,
    space: SpaceOpt = DEFAULT_SPACE,
    modality: Annotated[str, typer.Option(help="'image', 'text' or 'both'.")] = "both",
    image_backbone: ImageBackboneOpt = TINY,
    vae: VaeOpt = None,
    text_backbone: TextBackboneOpt = TINY,
    tokenizer: TokenizerOpt = None,
    image_timesteps: Annotated[Optional[str], typer.Option(help="Comma-separated image timesteps (default: the space's).")] = None,
    image_blocks: Annotated[Optional[str], typer.Option(help="Comma-separated 1-based image blocks (default: the space's).")] = None,
    text_timesteps: Annotated[Optional[str], typer.Option(help="Comma-separated text timesteps (default: the space's).")] = None,
    text_blocks: Annotated[Optional[str], typer.Option(help="Comma-separated 1-based text blocks (default: the space's).")] = None,
    splits: Annotated[Optional[str], typer.Option(help="Comma-separated splits (default: all).")] = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = DEFAULT_BATCH_SIZE,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    noise_seed: SeedOpt = 0,
    token_length: TokenLengthOpt = None,
    text_noising: NoisingOpt = "ddim",
    inversion_step: InversionOpt = None,
    resolution: ResolutionOpt = None,
    threads: ThreadsOpt = None,
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
                         threads=threads,
                         splits=tuple(s for s in splits.split(",") if s) if splits else None)
    grid = settings.space
    grid = with_grid(grid, "image", _ints(image_timesteps, "--image-timesteps"), _ints(image_blocks, "--image-blocks"))
    grid = with_grid(grid, "text", _ints(text_timesteps, "--text-timesteps"), _ints(text_blocks, "--text-blocks"))
    if modality != "both":
        grid = grid.restricted_to((modality,))
    configure_threads(1, threads)
    prepared = _prepare(settings.with_space(grid), quiet=as_json, verify=verify)
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
    from rich.table import Table

    table = Table(title=escape(f"features of {summary['dataset']} in {features}"))
    for col in ("modality", "parts written", "parts reused", "samples", "samples/s", "folder"):
        table.add_column(col)
    for r in summary["extractions"]:  # type: ignore[union-attr]
        table.add_row(r["modality"], str(r["parts_written"]), str(r["parts_skipped"]), str(r["rows"]),
                      f"{r['samples_per_second']:,.0f}", escape(r["folder"]))
    out.print(table)


# -- run heuristic / run grid / compare ----------------------------------------------------------

def _search_command(kind: str) -> Callable[..., None]:
    def command(
        dataset: DatasetOpt = DEFAULT_DATASET,
        root: RootOpt = None,
        features: FeaturesOpt = DEFAULT_FEATURES,
        space: SpaceOpt = DEFAULT_SPACE,
        storage: StorageOpt = None,
        study_name: StudyOpt = None,
        runs: RunsOpt = DEFAULT_RUNS,
        workers: WorkersOpt = 1,
        threads: ThreadsOpt = None,
        batch_trials: BatchTrialsOpt = None,
        fusion: FusionOpt = DEFAULT_FUSION,
        neighbourhood: NeighbourhoodOpt = "cross",
        radius: RadiusOpt = 1,
        pruner: PrunerOpt = "none",
        epochs: EpochsOpt = None,
        protocol: ProtocolOpt = "validation",
        memory_budget: MemoryBudgetOpt = None,
        n_trials: NTrialsOpt = None,
        seed: GridSeedOpt = 0,
        engine: EngineOpt = "local",
        ray_address: RayAddressOpt = None,
        image_backbone: ImageBackboneOpt = TINY,
        vae: VaeOpt = None,
        text_backbone: TextBackboneOpt = TINY,
        tokenizer: TokenizerOpt = None,
        device: DeviceOpt = "auto",
        batch_size: BatchOpt = DEFAULT_BATCH_SIZE,
        dtype: DtypeOpt = DEFAULT_DTYPE,
        noise_seed: SeedOpt = 0,
        token_length: TokenLengthOpt = None,
        text_noising: NoisingOpt = "ddim",
        inversion_step: InversionOpt = None,
        resolution: ResolutionOpt = None,
        no_report: NoReportOpt = False,
        as_json: JsonOpt = False,
        verbose: VerboseOpt = False,
    ) -> None:
        _setup_logging(verbose)
        options = {k: v for k, v in locals().items() if k not in ("as_json", "verbose", "kind", "no_report")}
        settings = _settings(**options, sampler="grid" if kind == "grid" else "heuristic")
        # With --json, stdout carries the JSON alone: anything a library prints (Ray Tune's status) goes to stderr.
        with redirect_stdout(sys.stderr) if as_json else nullcontext():
            result = (_compare(settings, as_json, report=not no_report) if kind == "compare"
                      else _run(settings, as_json, report=not no_report))
        if as_json:
            out.print_json(json.dumps(result.as_dict(), default=str))
        elif kind != "compare":
            _print_summary(result, settings.search.storage_url())  # type: ignore[arg-type]

    command.__doc__ = {
        "heuristic": "Algorithm 1: every unimodal (t, b), then fusion around each modality's best.",
        "grid": "The full-grid baseline: every image (t, b) x text (t, b) pair (Optuna's GridSampler).",
        "compare": "Run (or reuse) the heuristic and the grid study on the same features and compare them.",
    }[kind]
    return command


def _run(settings: Settings, quiet: bool, *, report: bool = True) -> SearchSummary:
    from difffeat_tune._device import configure_threads
    from difffeat_tune.probe.objective import Objective
    from difffeat_tune.search.runner import parse_storage_url, run_search

    parse_storage_url(settings.search.storage_url())  # a malformed URL or a missing driver, before any extraction
    finished = _finished_summary(settings, report=report)
    if finished is not None:
        if report and not quiet:
            _say_report_is_current(settings.search.runs / "reports" / finished.study_name / REPORT_PAGE)
        return finished
    prepared = _prepare(settings, quiet)
    settings = settings.with_space(prepared.space)
    configure_threads(settings.search.workers, settings.search.threads)
    name = settings.search.study_name_for(prepared.view.folder.name)
    objective = Objective(prepared.view, settings.probe, device=settings.device)
    with _trial_progress(quiet, f"{settings.search.sampler} search ({name})") as callback:
        summary = run_search(settings, prepared.view, callbacks=[callback], objective=objective)
    if report:
        _report(settings, summary.study_name, objective, quiet)
    return summary


def _finished_summary(settings: Settings, *, report: bool) -> SearchSummary | None:
    """The summary of a study with nothing left to do, read without loading backbones or features.

    A finished plan, the best configuration already evaluated (when asked) and, unless
    ``report`` is off, a report newer than the study's last trial: a re-run then only reads the
    storage. Anything else (or no such study yet) returns ``None``: the full path runs.
    """
    import optuna

    from difffeat_tune.features import data_modalities
    from difffeat_tune.search import _attrs as A
    from difffeat_tune.search._samplers import plan_state
    from difffeat_tune.search._storage import open_storage
    from difffeat_tune.search.runner import summarize
    from difffeat_tune.store import FeatureStore

    dataset = settings.data.load()
    settings = settings.with_space(settings.space.restricted_to(data_modalities(dataset)))
    search = settings.search
    name = search.study_name_for(FeatureStore(settings.store.features).dataset_dir(dataset.name,
                                                                                   dataset.fingerprint()).name)
    storage = open_storage(search.storage_url())
    if name not in {s.study_name for s in storage.get_all_studies()}:
        return None
    study = optuna.load_study(study_name=name, storage=storage)
    if not plan_state(study, settings.space, search).finished:
        return None
    try:
        best = study.best_trial
    except ValueError:
        return None
    if search.evaluate_best and study.user_attrs.get(A.EVAL_TRIAL) != best.number:
        return None
    if report and not _report_is_current(storage, study, search.runs / "reports" / name / REPORT_PAGE):
        return None
    return summarize(study)


def _say_report_is_current(page: Path) -> None:
    console.print(escape(f"Report: {page} (up to date; `difffeat-tune report` redraws it)"))


def _report_is_current(storage: optuna.storages.BaseStorage, study: optuna.Study, page: Path) -> bool:
    """Whether ``page`` was written after the last change of every study it draws: the study, and
    the other study of a ``compare`` pair when the storage holds it (its comparison figure)."""
    import optuna

    from difffeat_tune.search._options import companion_name

    if not page.is_file():
        return False
    studies = [study]
    other = companion_name(study.study_name)
    if other is not None and other in {s.study_name for s in storage.get_all_studies()}:
        studies.append(optuna.load_study(study_name=other, storage=storage))
    written = datetime.fromtimestamp(page.stat().st_mtime)  # local time, as Optuna's datetimes
    for each in studies:
        trials = each.get_trials(deepcopy=False)
        changes = [t.datetime_complete or t.datetime_start for t in trials]
        if any(t.datetime_complete is None for t in trials) or None in changes:
            return False
        if not all(change < written for change in changes):  # type: ignore[operator]
            return False
    return True


def _report(settings: Settings, study_name: str, objective: object, quiet: bool) -> None:
    """Write the study's report (figures, page, dashboard note) and say where it is; keep an up-to-date one."""
    from difffeat_tune.report import write_report

    import optuna

    from difffeat_tune.search._storage import open_storage

    folder = settings.search.runs / "reports" / study_name
    storage = open_storage(settings.search.storage_url(), heartbeat=False)
    study = optuna.load_study(study_name=study_name, storage=storage)
    if _report_is_current(storage, study, folder / REPORT_PAGE):
        if not quiet:
            _say_report_is_current(folder / REPORT_PAGE)
        return
    written = write_report(storage, study_name, folder,
                           device=settings.device, objective=objective, space=settings.space)  # type: ignore[arg-type]
    if not quiet:
        console.print(escape(f"Report: {written.html} ({len(written.figures)} figures, {written.seconds:.1f} s)"))
        for what, why in written.skipped.items():
            console.print(escape(f"  not in the report: {what}: {why}"))


def _compare(settings: Settings, quiet: bool, *, report: bool = True):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from difffeat_tune._device import configure_threads
    from difffeat_tune.probe.objective import Objective
    from difffeat_tune.search._options import study_name
    from difffeat_tune.search.compare import Comparison
    from difffeat_tune.search.runner import open_storage, parse_storage_url, run_search

    parse_storage_url(settings.search.storage_url())
    prepared = _prepare(settings, quiet)
    settings = settings.with_space(prepared.space)
    configure_threads(settings.search.workers, settings.search.threads)
    base = settings.search.study_base(prepared.view.folder.name)
    objective = Objective(prepared.view, settings.probe, device=settings.device)
    summaries = {}
    for sampler in ("heuristic", "grid"):
        each = replace(settings, search=replace(settings.search, sampler=sampler, study_name=study_name(base, sampler)))
        with _trial_progress(quiet, f"{sampler} search ({study_name(base, sampler)})") as callback:
            summaries[sampler] = run_search(each, prepared.view, callbacks=[callback], objective=objective)
    comparison = Comparison(heuristic=summaries["heuristic"], grid=summaries["grid"])
    paths = comparison.save(settings.search.runs, base, open_storage(settings.search.storage_url(), heartbeat=False))
    if not quiet:
        from rich.table import Table

        table = Table(title=escape(f"heuristic vs grid on {base}"))
        for col in ("", "heuristic", "grid"):
            table.add_column(col)
        for row in comparison.rows():
            table.add_row(*(escape(cell) for cell in row))
        out.print(table)
        out.print(escape(f"{comparison.regret_sentence()} Saved {', '.join(str(p) for p in paths)} and a "
                         "note on both studies."))
    if report:  # the heuristic's report holds the comparison (the grid's landscape with the heuristic's pairs)
        _report(settings, f"{base}-heuristic", objective, quiet)
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


run_app.command("heuristic")(_search_command("heuristic"))
run_app.command("grid")(_search_command("grid"))
app.command("compare")(_search_command("compare"))


# -- report, dashboard, backbones -----------------------------------------------------------------

@app.command()
def report(
    storage: StorageOpt = None,
    study_name: Annotated[str, typer.Option(help="The study (e.g. shapes-heuristic).")] = "shapes-heuristic",
    runs: RunsOpt = DEFAULT_RUNS,
    out_dir: Annotated[Optional[Path], typer.Option(help="Report folder (default: <runs>/reports/<study>).")] = None,
    device: DeviceOpt = "auto",
    no_features: Annotated[bool, typer.Option("--no-features", help="Skip what re-trains from the feature store (test scores of the unimodal bests, per-class AP, t-SNE).")] = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Write a study's figures (A(t, b), fusion grid, best of each modality, t-SNE...) as HTML, PNG, PDF and into the dashboard."""
    _setup_logging(verbose)
    from difffeat_tune.report import write_report
    from difffeat_tune.search._storage import default_storage, open_storage

    url = storage or default_storage(local_folder(runs, "--runs"))
    opened = open_storage(url, heartbeat=False, create=False)  # first: a missing database is not created
    _check_paths(out_dir=out_dir or runs / "reports" / study_name)
    written = write_report(opened, study_name, out_dir or runs / "reports" / study_name, device=device,
                           features=not no_features)
    if as_json:
        out.print_json(json.dumps(written.as_dict(), default=str))
        return
    out.print(escape(f"Report of {study_name}: {written.html}"))
    out.print(escape(f"  {len(written.figures)} figures ({', '.join(written.figures)}), PNG and PDF beside it; "
                     f"saved into the study for the dashboard: {'yes' if written.dashboard else 'no'}"))
    for what, why in written.skipped.items():
        out.print(escape(f"  not in the report: {what}: {why}"))


# -- dashboard, backbones -------------------------------------------------------------------------

@app.command()
def dashboard(
    storage: StorageOpt = None,
    runs: RunsOpt = DEFAULT_RUNS,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="Port.")] = DEFAULT_PORT,
) -> None:
    """Start optuna-dashboard on the study storage."""
    from difffeat_tune.dashboard import check_address, serve_dashboard
    from difffeat_tune.search._storage import default_storage, open_storage

    check_address(host, port)
    url = storage or default_storage(local_folder(runs, "--runs"))
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
