"""scs_gan: generative adversarial networks built from sharpened cosine similarity (SCS) layers.

The layer library lives in :mod:`scs_gan.nn`; the ``scs-gan`` command (:mod:`scs_gan.cli`) runs the tools;
``scs_gan.load_generator(path)`` returns a trained generator ready for sampling, and
``scs_gan.save_pretrained(generator, directory)`` saves one in the Hugging Face Hub layout.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_generator", "save_pretrained"]


def __getattr__(name: str):
    if name in ("load_generator", "save_pretrained"):  # imported on first use, so `import scs_gan` stays light
        from . import snapshot

        return getattr(snapshot, name)
    raise AttributeError(f"module 'scs_gan' has no attribute {name!r}")
