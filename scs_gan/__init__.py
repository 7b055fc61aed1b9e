"""scs_gan: generative adversarial networks built from sharpened cosine similarity (SCS) layers.

The layer library lives in :mod:`scs_gan.nn`; the ``scs-gan`` command (:mod:`scs_gan.cli`) runs the tools;
``scs_gan.load_generator(path)`` returns a trained generator ready for sampling.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_generator"]


def __getattr__(name: str):
    if name == "load_generator":  # imported lazily: `import scs_gan` stays light
        from .snapshot import load_generator

        return load_generator
    raise AttributeError(f"module 'scs_gan' has no attribute {name!r}")
