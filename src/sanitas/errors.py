"""Errors raised by sanitas.

Every error a user can cause is a :class:`SanitasError` whose message says what was wrong
and what to do about it. The subclasses also derive from the closest built-in exception so
that generic ``except ValueError`` code keeps working.
"""

from __future__ import annotations


class SanitasError(Exception):
    """Base class: a problem the user can fix. The message names the problem and the fix."""


class UnknownNameError(SanitasError, ValueError):
    """A registry name (model, dataset, method, metric, ...) that does not exist."""


class DatasetNotFoundError(SanitasError, FileNotFoundError):
    """A dataset that is not on this machine and could not be downloaded."""


class DataFormatError(SanitasError, ValueError):
    """A data file that is malformed: bad magic number, wrong size, unreadable image."""


class ChecksumError(SanitasError):
    """A downloaded or cached file whose SHA-256 does not match the expected one."""


class DownloadError(SanitasError, OSError):
    """A download that failed after retries."""


class InputError(SanitasError, ValueError):
    """Bad tensors: wrong shape or dtype, NaN or infinite values, targets out of range."""


class ModelError(SanitasError):
    """A model sanitas cannot use as given (no parameters, wrong output shape, ...)."""


class NotApplicableError(ModelError):
    """A method that cannot be applied to this model or these inputs (a layer its rules do not cover,
    no convolutional layer, inputs that are not images). A check records the method as refused,
    with this message, and runs the others."""


class UnsupportedLayerError(NotApplicableError):
    """A layer type a method cannot handle; the message names the layer."""


class ConfigError(SanitasError, ValueError):
    """An invalid option or configuration value."""


class CacheError(SanitasError):
    """A problem with the on-disk cache that sanitas cannot repair by itself."""


class StorageError(SanitasError, OSError):
    """A file or directory sanitas cannot write or read back (read-only, full, damaged, in use)."""


class ResultsBusyError(StorageError):
    """A results directory that another sanitas run is writing (an OS file lock holds it)."""


class NonFiniteError(SanitasError, ValueError):
    """NaN or infinite numbers where finite ones are needed: an option, the logits or the maps."""
