"""Low-rank matrices ``B @ A`` and their optimal (SVD) fit."""

from .module import LowRank

__all__ = ["LowRank"]
