"""Errors of the generative decoder."""

from __future__ import annotations


class SourceError(FileNotFoundError):
    """A model source (SD-Turbo, BLIP, tokenizer) is missing or unusable.

    The message always says which file to put where, or which option to pass.
    """
