"""Pure PyTorch models of tomeray: token merging, TempMe video encoder (and its training objective
and retrieval metrics), VGGT + FastVGGT.

Nothing in this package imports Ray or reads/writes tomeray's file formats; the only files it
touches are weights (checkpoints, TempMe adapter files).
"""

from tomeray.models.errors import ConfigError, InputError, TomerayError, WeightsError

__all__ = ["ConfigError", "InputError", "TomerayError", "WeightsError"]
