"""Errors a user can fix: the CLI prints their message as one line and exits with code 2."""

from __future__ import annotations


class GlipkitUsageError(Exception):
    """A problem with the user's input or environment (bad path, missing model) that they can fix."""
