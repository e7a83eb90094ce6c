"""Reading a trial's configuration: the one way objectives ask Optuna for a Diff-Feat configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING

from difffeat_tune.config import (
    P_FUSION, P_IMAGE_B, P_IMAGE_T, P_MODALITY, P_TEXT_B, P_TEXT_T, TRIAL_MODALITIES, TrialConfig,
)

if TYPE_CHECKING:
    import optuna

    from difffeat_tune.space import SearchSpace


def suggest_config(trial: optuna.Trial, space: SearchSpace) -> TrialConfig:
    """Suggest one configuration of ``space`` through ``trial``, a conditional (define-by-run) space.

    The parameters are suggested in this order, each as a categorical parameter named by the
    constants of :mod:`difffeat_tune.config`:

    1. ``modality`` in ``("image", "text", "fusion")`` (the space's modalities; fusion when it has both);
    2. for image and fusion trials, ``image_t`` and ``image_b`` over the space's image axes;
    3. for text and fusion trials, ``text_t`` and ``text_b`` over the space's text axes;
    4. for fusion trials, ``fusion`` over ``space.fusion_methods``.

    Parameters absent from a modality are never suggested, so an image trial holds no text
    parameters. The function works with any sampler: with
    :class:`~difffeat_tune.search._heuristic.HeuristicSampler` (which serves the configuration it
    claimed for the trial), with ``optuna.samplers.GridSampler(space.grid_axes(...))`` (whose
    grid fixes ``modality`` to ``"fusion"``), with enqueued trials
    (``study.enqueue_trial(config.to_params())``) and with generic samplers such as
    ``RandomSampler`` or ``TPESampler``.

    Example:

        .. code-block:: python

            import optuna

            from difffeat_tune.search._heuristic import HeuristicSampler
            from difffeat_tune.search._suggest import suggest_config
            from difffeat_tune.space import load_space

            space = load_space("paper")


            def objective(trial):
                config = suggest_config(trial, space)
                return train_probe_and_score(config)  # validation mAP


            study = optuna.create_study(direction="maximize", sampler=HeuristicSampler(space))
            study.optimize(objective)

    Args:
        trial: The live trial (from ``study.optimize`` or ``study.ask``).
        space: The search space; use the one the sampler was built with.

    Returns:
        The configuration, with ``d_alg`` taken from the space.

    Raises:
        optuna.TrialPruned: With :class:`~difffeat_tune.search._heuristic.HeuristicSampler`, for a
            surplus trial created after the plan was exhausted (it has nothing to evaluate).
    """
    modalities = [m for m in TRIAL_MODALITIES if m == "fusion" and space.has_fusion or space.has(m)]
    modality = trial.suggest_categorical(P_MODALITY, modalities)
    image = text = None
    fusion = None
    if modality in ("image", "fusion"):
        axes = space.axes("image")
        image = (int(trial.suggest_categorical(P_IMAGE_T, list(axes.t))),
                 int(trial.suggest_categorical(P_IMAGE_B, list(axes.b))))
    if modality in ("text", "fusion"):
        axes = space.axes("text")
        text = (int(trial.suggest_categorical(P_TEXT_T, list(axes.t))),
                int(trial.suggest_categorical(P_TEXT_B, list(axes.b))))
    if modality == "fusion":
        fusion = str(trial.suggest_categorical(P_FUSION, list(space.fusion_methods)))
    return TrialConfig(modality=modality, image=image, text=text, fusion=fusion,  # type: ignore[arg-type]
                       d_alg=space.d_alg)
