"""Imports every command module so that each registers itself on the app."""

# One import per command module; keep the list sorted.
from glipkit.cli import demo  # noqa: F401
from glipkit.cli import evaluate  # noqa: F401
from glipkit.cli import export  # noqa: F401
from glipkit.cli import extract_phrases  # noqa: F401
from glipkit.cli import models  # noqa: F401
from glipkit.cli import predict  # noqa: F401
from glipkit.cli import pseudo_label  # noqa: F401
from glipkit.cli import report  # noqa: F401
from glipkit.cli import show  # noqa: F401
from glipkit.cli import train_student  # noqa: F401
