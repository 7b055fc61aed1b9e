"""SCS discriminators and transposed-SCS generators, with DCGAN and cosine-only baselines of the same topology."""

from .networks import (
    Discriminator,
    DiscriminatorConfig,
    Gain,
    Generator,
    GeneratorConfig,
    MinibatchStd,
    ModelConfig,
    Shortcut,
    build_discriminator,
    build_generator,
    count_parameters,
    rescale_scs_weights,
    scs_layers,
)

__all__ = [
    "Discriminator",
    "DiscriminatorConfig",
    "Gain",
    "Generator",
    "GeneratorConfig",
    "MinibatchStd",
    "ModelConfig",
    "Shortcut",
    "build_discriminator",
    "build_generator",
    "count_parameters",
    "rescale_scs_weights",
    "scs_layers",
]
