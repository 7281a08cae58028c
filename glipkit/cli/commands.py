"""Imports every command module so that each registers itself on the app."""

# One import per command module; keep the list sorted.
