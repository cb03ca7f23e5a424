"""Pure PyTorch models of tomeray: token merging, TempMe video encoder, VGGT + FastVGGT.

Nothing in this package imports Ray or reads/writes tomeray's file formats.
"""

from tomeray.models.errors import ConfigError, InputError, TomerayError, WeightsError

__all__ = ["ConfigError", "InputError", "TomerayError", "WeightsError"]
