"""glipkit: pseudo-label image-text data with a GLIP teacher and train GLIP students on it."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so that `import glipkit` (and `glipkit --help`) does not pay for torch.
    if name == "GLIP":
        from glipkit.model.glip import GLIP

        return GLIP
    raise AttributeError(f"module 'glipkit' has no attribute {name!r}")
