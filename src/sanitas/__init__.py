"""sanitas: can this explanation of a neural network's decision be trusted?

Attribution methods, the sanity checks of Adebayo et al. (2018), competition for pixels,
and the decision-flip evaluation of explanation quality, for any PyTorch classifier.
"""

from sanitas.errors import (CacheError, ChecksumError, ConfigError, DataFormatError, DatasetNotFoundError,
                            DownloadError, InputError, ModelError, NonFiniteError, NotApplicableError,
                            ResultsBusyError, SanitasError, StorageError, UnknownNameError, UnsupportedLayerError)

__version__ = "0.1.0"

__all__ = ["__version__", "SanitasError", "UnknownNameError", "DatasetNotFoundError", "DataFormatError",
           "ChecksumError", "DownloadError", "InputError", "ModelError", "NotApplicableError", "UnsupportedLayerError",
           "ConfigError", "CacheError", "StorageError", "ResultsBusyError", "NonFiniteError"]
