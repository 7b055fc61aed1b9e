"""scs_gan: generative adversarial networks built from sharpened cosine similarity (SCS) layers.

The layer library lives in :mod:`scs_gan.nn`; the ``scs-gan`` command (:mod:`scs_gan.cli`) runs the tools.
"""

__version__ = "0.1.0"
