"""Errors raised by difffeat-tune: each names what is wrong and says what to do."""

from __future__ import annotations


class DiffFeatError(Exception):
    """Base class of every error the package raises on bad input or bad state.

    The message names the file, field or value at fault; ``hint`` (if given) says what to do.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  -> {hint}")


class DataError(DiffFeatError):
    """A data set, manifest, image or caption is missing or malformed."""


class BackboneError(DiffFeatError):
    """A backbone cannot be built or loaded, or was asked for something it cannot provide."""


class StoreError(DiffFeatError):
    """The feature store is missing a shard, or a shard is corrupt or inconsistent."""


class ConfigError(DiffFeatError):
    """A configuration, search space or command-line value is invalid.

    ``field`` names the setting at fault as the message spells it (``TrainRecipe.epochs``), so
    that the command line can name its own option instead (:meth:`named`).
    """

    def __init__(self, message: str, hint: str | None = None, *, field: str | None = None) -> None:
        super().__init__(message, hint)
        self.field = field

    def named(self, label: str) -> ConfigError:
        """The same error with its field called ``label`` (e.g. ``--epochs``)."""
        if self.field is None:
            return self
        hint = None if self.hint is None else self.hint.replace(self.field, label)
        return ConfigError(self.message.replace(self.field, label), hint, field=label)


class StorageError(DiffFeatError):
    """The Optuna study storage (a database) cannot be reached, or its tables cannot be prepared."""


def check_int(field: str, value: object, minimum: int, *, optional: bool = False) -> None:
    """Raise :class:`ConfigError` naming ``field`` (``SearchOptions.workers``) unless ``value`` is an
    integer (not a bool) of at least ``minimum``; ``None`` passes when ``optional``."""
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{field} must be an integer of at least {minimum}, got {value!r}", field=field)
