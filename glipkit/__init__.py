"""glipkit: pseudo-label image-text data with a GLIP teacher and train GLIP students on it.

The Python API: `Predictor(GLIP.from_pretrained("glip-t")).predict(images, prompts=...)`.
"""

__version__ = "0.2.0"

# Lazy so that `import glipkit` (and `glipkit --help`) does not pay for torch.
_LAZY = {
    "GLIP": "glipkit.model.glip",
    "Predictor": "glipkit.engine.predictor",
    "PredictorSettings": "glipkit.engine.predictor",
    "Prediction": "glipkit.engine.predictor",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'glipkit' has no attribute {name!r}")
