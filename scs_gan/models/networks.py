"""Generators and discriminators of one DCGAN topology, built from SCS, cosine or convolution layers.

Topology for resolution ``R`` (a power of two, >= 8) and base width ``w``:

* Generator: latent ``z`` (``1x1``) -> transposed layer k4 s1 to ``4x4`` -> transposed layers k4 s2 p1 that
  double the size and halve the channels -> at ``R/2`` one more k4 s2 p1 layer to the image channels ->
  ``tanh``. The widths are ``w * 2**i`` counted from the image end (capped at ``max_channels``).
  ``extra_layers_at`` adds a k3 s1 p1 layer of the same width after the layer that reaches each named
  resolution. ``skip`` turns it into StyleGAN2's skip generator: every hidden resolution also maps its
  features to an image through a 1x1 layer, and the images are summed, each upsampled (bilinear) to the next
  resolution, before the output gain and ``tanh``.
* Discriminator: the mirror image: k4 s2 p1 layers from ``R`` down to ``4x4`` with widths ``w, 2w, ...``,
  then a k4 layer to one ``1x1`` logit.

With ``num_classes`` > 0 both networks are class-conditional: the class of a latent code is read from its
first coordinate (:func:`scs_gan.latents.classes_of`), the generator appends a learned embedding of it to
the code, and the discriminator's last layer has one output shared by all classes and one per class: an
image's logit is the sum of the shared one and its class's (as in projection discriminators, a class term
beside the unconditional one; measured, class terms alone let G collapse within each class).

The layer ``kind`` decides what the layers are: ``scs`` (sharpened cosine similarity), ``cosine`` (the
same with sharpening off) or ``conv`` (the DCGAN baseline: convolutions with batch norm and (leaky) ReLU).
SCS and cosine networks use no normalisation (SCS practice) but, by default, a LeakyReLU between layers
(measured: without it the SCS generator failed to learn MNIST), and end in a learned gain and bias, since
their outputs are cosines bounded by 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..latents import classes_of
from ..nn import MaxAbsPool2d, SCS2d, SCSTranspose2d

Kind = Literal["scs", "cosine", "conv"]
Activation = Literal["none", "relu", "lrelu", "abs"]


@dataclass
class GeneratorConfig:
    """The generator's architecture (``model.g.*``).

    Attributes:
        kind: ``scs``, ``cosine`` (sharpening off) or ``conv`` (DCGAN: transposed conv + batch norm + ReLU).
        channels: width of the last hidden layer (at half the resolution); doubles towards the latent.
        max_channels: cap on any layer's width.
        activation: between layers; ``auto`` is ``relu`` for conv (DCGAN) and ``lrelu`` (LeakyReLU 0.2) for
            scs/cosine: without it the SCS generator did not learn MNIST (docs/RESULTS.md).
        p_init, p_floor, q_init: initial exponent, its floor and the initial norm floor of SCS layers
            (p_init 1.1 measured better than 1.5 and 2.0 for GANs: docs/RESULTS.md).
        p_init_max: if set, each channel's initial exponent is drawn uniformly from [p_init, p_init_max]
            (the SCS practice is [1, 3], with p_floor below 1) instead of all being p_init.
        out_gain: initial value of the learned gain before ``tanh`` (scs/cosine).
        gain_lr_mul: learning-rate multiplier of that gain and its bias (see :class:`Gain`).
        extra_layers_at: resolutions (``4``, ``8``, ... below the image's) after whose upsampling layer one
            more layer of the same width follows: kernel 3, stride 1, padding 1 (with its own batch norm and
            activation), as in generators with two layers per resolution; empty (the default) for DCGAN's
            one layer per resolution.
        skip: StyleGAN2's skip generator (see the module docstring); off by default.
        class_norm: in a class-conditional generator (``model.num_classes`` > 0), the norm of the class embedding
            appended to the latent code (the embedding is normalised to it). The first layer's weights can align
            with the embedding, which then adds about ``class_norm`` times their norm to each output, while the
            random code adds a projection of about their norm: at 1 the two weigh alike. Measured: at the code's
            own norm (sqrt(z_dim)) the class outweighed the code and G drew about one image per class; 0.5 (the
            default) and 0.25 scored best (docs/RESULTS.md, rounds 29 and 30). 0 appends no embedding: the class
            then reaches G only through ``class_mod`` (which it requires), as in BigGAN's class-conditional batch norm.
        class_mod: in a class-conditional generator, also condition every hidden layer on the class: a learned
            per-class, per-channel gain and bias (:class:`Modulation`, initialised to the identity) act on
            each hidden layer's output before its activation, as class-conditional batch norm does in BigGAN's
            generator, without the normalisation. Off by default (the class then enters only through the code).
        latent_mod: condition every hidden layer on the latent code in the same way: a gain and bias per channel,
            a learned linear function of the code (initialised to zero), as BigGAN's generator feeds its code to
            every conditional batch norm (its hierarchical latent); summed with ``class_mod``'s. Off by default.
        class_dim: the length of that embedding; 0 (the default) gives it the code's length, ``model.z_dim``,
            which doubles the first layer's input. A shorter one makes that layer (the generator's largest)
            smaller, but measured, the step costs about the same (1.02x against 1.04x the unconditional one's
            at 16 and 128) and three seeds at 16 scored worse and spread wider (docs/RESULTS.md, round 30).
    """

    kind: Kind = "scs"
    channels: int = 32
    max_channels: int = 256
    activation: Literal["auto", "none", "relu", "lrelu", "abs"] = "auto"
    p_init: float = 1.1
    p_init_max: float | None = None
    p_floor: float = 1.0
    q_init: float = 0.1
    out_gain: float = 2.0
    gain_lr_mul: float = 50.0
    extra_layers_at: list[int] = field(default_factory=list)
    skip: bool = False
    class_norm: float = 0.5
    class_dim: int = 0
    class_mod: bool = False
    latent_mod: bool = False


@dataclass
class DiscriminatorConfig:
    """The discriminator's architecture (``model.d.*``).

    Attributes:
        kind: ``scs``, ``cosine`` or ``conv`` (DCGAN: conv + batch norm + LeakyReLU(0.2)).
        channels: width of the first layer; doubles at every halving of the resolution.
        max_channels: cap on any layer's width.
        downsample: ``stride`` (k4 s2 layers) or ``maxabspool`` (k3 s1 layers, then MaxAbsPool2d(2)).
        activation: ``auto`` is ``lrelu`` (LeakyReLU 0.2) for every kind (measured better than none for SCS).
        p_init, p_init_max, p_floor, q_init: as for the generator, but by default each channel's exponent starts
            anywhere in [1, 3] above a floor of 0.5 (the SCS practice), and with ``train.pq_lr_mul`` 10 D's
            exponents spread to about 0.8-3.4 (layer means 1.2-2.1): with the 2-pixel translation three seeds
            scored 18.5 ± 0.9 against 18.8 ± 1.0 with p starting at 1.1, and with the 4-pixel one 19.0 ± 0.7
            against 20.6 ± 0.8 (docs/RESULTS.md, round 32).
        out_gain: initial value of the learned gain of the logit (scs/cosine, ``head: cosine``).
        gain_lr_mul: learning-rate multiplier of that gain and its bias.
        head: the last layer of scs/cosine discriminators, from the ``4x4`` features to the logit: ``cosine``
            (one more SCS/cosine layer, a cosine times the learned gain) or ``linear`` (a k4 convolution
            with a bias, as SCS classifiers end in a linear layer; the logit is then unbounded and can use
            the features' magnitude). Conv discriminators always end in a convolution.
        mbstd_group: if > 0, the minibatch standard deviation of StyleGAN (:class:`MinibatchStd`) over groups
            of this many images is appended to the ``4x4`` features as one more channel before the last
            layer, so that D can see a batch's lack of variety; 0 turns it off.
        skip: give each downsampling layer a linear shortcut (:class:`Shortcut`: 2x2 average pooling and a 1x1
            convolution without bias, added to the layer's activated output, the sum scaled by 1/sqrt(2)), as
            residual discriminators have; off (the DCGAN topology) by default. It adds 0.5% of D's
            parameters and, measured, about 10% to the default's step (the small D runs three times per step).
    """

    kind: Kind = "scs"
    channels: int = 32
    max_channels: int = 256
    downsample: Literal["stride", "maxabspool"] = "stride"
    activation: Literal["auto", "none", "relu", "lrelu", "abs"] = "auto"
    p_init: float = 1.0
    p_init_max: float | None = 3.0
    p_floor: float = 0.5
    q_init: float = 0.1
    out_gain: float = 4.0
    gain_lr_mul: float = 50.0
    head: Literal["cosine", "linear"] = "cosine"
    mbstd_group: int = 0
    skip: bool = False


def _validate_layers(c: GeneratorConfig | DiscriminatorConfig, section: str, num_classes: int | str) -> None:
    if c.channels < 1 or c.max_channels < 1:
        raise UserError(f"{section}.channels and {section}.max_channels must be at least 1")
    if c.kind != "conv":
        if c.p_floor < 0 or (c.kind == "scs" and not c.p_init > c.p_floor):
            raise UserError(f"{section}.p_floor must be >= 0 and {section}.p_init greater than it")
        if c.p_init_max is not None and not c.p_init_max >= c.p_init:
            raise UserError(f"{section}.p_init_max ({c.p_init_max}) must be at least {section}.p_init ({c.p_init})")
        if not c.q_init > 0:
            raise UserError(f"{section}.q_init must be positive")
        if not c.gain_lr_mul > 0:
            raise UserError(f"{section}.gain_lr_mul must be positive")
    if isinstance(c, GeneratorConfig) and not c.class_norm >= 0:
        raise UserError(f"{section}.class_norm must be positive, or 0 with class_mod on, got {c.class_norm}")
    # checked once the class count is known: auto is resolved by the trainer, which validates again
    if isinstance(c, GeneratorConfig) and c.class_norm == 0 and not c.class_mod and num_classes not in (0, "auto"):
        raise UserError(
            f"{section}.class_norm=0 leaves the class out of the code; it needs {section}.class_mod=true to "
            "reach the generator some other way"
        )
    if isinstance(c, GeneratorConfig) and c.class_dim < 0:
        raise UserError(f"{section}.class_dim must be 0 (the latent code's length) or positive, got {c.class_dim}")
    if isinstance(c, GeneratorConfig) and len(set(c.extra_layers_at)) != len(c.extra_layers_at):
        raise UserError(f"{section}.extra_layers_at names a resolution twice: {c.extra_layers_at}")
    if isinstance(c, DiscriminatorConfig) and c.mbstd_group < 0:
        raise UserError(f"{section}.mbstd_group must be 0 (off) or a group size of at least 1, got {c.mbstd_group}")


@dataclass
class ModelConfig:
    """Both networks (``model.*``): latent size, classes, image shape (from the data section) and architectures.

    ``num_classes`` > 0 makes both networks class-conditional (see the module docstring); it must equal the
    number of classes of the training set's labels. 0 trains an unconditional GAN. ``auto`` is resolved by the
    trainer to the training set's class count: conditional on a dataset with labels, unconditional on one
    without; the run's ``config.yaml`` records the number it became.
    """

    z_dim: int = 128
    num_classes: int | Literal["auto"] = "auto"
    g: GeneratorConfig = field(default_factory=GeneratorConfig)
    d: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)

    def validate(self) -> None:
        """Raise :class:`UserError` for values no network can be built from."""
        if self.z_dim < 1:
            raise UserError(f"model.z_dim must be at least 1, got {self.z_dim}")
        if self.num_classes != "auto" and self.num_classes < 0:
            raise UserError(
                f"model.num_classes must be 0 (unconditional), the number of classes or auto, got {self.num_classes}"
            )
        _validate_layers(self.g, "model.g", self.num_classes)
        _validate_layers(self.d, "model.d", self.num_classes)


class Gain(nn.Module):
    """``y = gain * x + bias`` with one learned scalar gain and bias: rescales bounded cosine outputs.

    Adam moves every parameter by about the learning rate per step, far too slowly for a scalar that has
    to travel by whole units; ``lr_mul`` stores both scaled down by that factor (StyleGAN's equalised
    learning rate), so they move ``lr_mul`` times faster.
    """

    def __init__(self, gain: float = 1.0, lr_mul: float = 1.0) -> None:
        super().__init__()
        self.init_gain, self.lr_mul = float(gain), float(lr_mul)
        self.gain_raw = nn.Parameter(torch.tensor(float(gain) / lr_mul))
        self.bias_raw = nn.Parameter(torch.zeros(()))

    @property
    def gain(self) -> Tensor:
        return self.gain_raw * self.lr_mul

    @property
    def bias(self) -> Tensor:
        return self.bias_raw * self.lr_mul

    def forward(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.bias, x, self.gain)

    def extra_repr(self) -> str:
        return f"init_gain={self.init_gain}, lr_mul={self.lr_mul}"


class MinibatchStd(nn.Module):
    """Append the minibatch standard deviation as one more channel (StyleGAN's minibatch discrimination).

    The batch is split into groups of ``group`` images (the largest divisor of the batch size that is at most
    ``group``, so any batch works; image ``n`` is in group ``n mod (N / group)``); per group, the standard
    deviation of every feature over the group's images is averaged into one number, which becomes a
    constant channel of each of the group's images. A generator that collapses to few outputs gives
    small values there, which D can learn to punish.
    """

    def __init__(self, group: int) -> None:
        super().__init__()
        self.group = int(group)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = next(d for d in range(min(self.group, n), 0, -1) if n % d == 0)
        y = x.reshape(g, n // g, c, h, w)
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt()  # (n / g, c, h, w): std over each group
        y = y.mean(dim=(1, 2, 3)).view(n // g, 1, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group={self.group}"


class Shortcut(nn.Module):
    """``(block(x) + conv1x1(avg_pool2d(x, 2))) / sqrt(2)``: a downsampling block with a linear shortcut.

    The shortcut is the cheapest path that matches the block's output shape: average pooling halves the size,
    a 1x1 convolution without bias maps the channels (initialised with variance 1 / in_channels, or DCGAN's
    N(0, 0.02) in conv discriminators, like their other convolutions). Dividing the
    sum by sqrt(2) keeps the scale of two unit-variance terms, as in residual GAN discriminators.
    """

    def __init__(self, block: nn.Module, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = block
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        nn.init.normal_(self.shortcut.weight, 0.0, in_channels**-0.5)

    def forward(self, x: Tensor) -> Tensor:
        return (self.block(x) + self.shortcut(nn.functional.avg_pool2d(x, 2))) * (0.5**0.5)


class Modulation(nn.Module):
    """``x * (1 + gain) + bias`` per channel, the gain and bias learned functions of each image's class and code.

    With ``num_classes`` > 0, a table holds a gain and bias per class (``model.g.class_mod``); with ``z_dim`` > 0,
    a linear map of the latent code gives another (``model.g.latent_mod``, BigGAN's hierarchical latent); both
    are summed. Everything starts at zero, so a new layer is the identity. Applied to a hidden layer's output
    before its activation, it lets the class and the code steer every resolution of the generator, not only
    its first layer.
    """

    def __init__(self, channels: int, num_classes: int = 0, z_dim: int = 0) -> None:
        super().__init__()
        self.channels = channels
        self.table: nn.Embedding | None = None
        self.latent: nn.Linear | None = None
        if num_classes:
            self.table = nn.Embedding(num_classes, 2 * channels)
            nn.init.zeros_(self.table.weight)
        if z_dim:
            self.latent = nn.Linear(z_dim, 2 * channels, bias=False)
            nn.init.zeros_(self.latent.weight)

    def forward(self, x: Tensor, classes: Tensor | None, z: Tensor) -> Tensor:
        terms = []
        if self.table is not None:
            assert classes is not None
            terms.append(self.table(classes))
        if self.latent is not None:
            terms.append(self.latent(z.to(self.latent.weight.dtype)))
        both = terms[0] if len(terms) == 1 else terms[0] + terms[1]
        gain, bias = both.to(x.dtype).view(x.shape[0], 2 * self.channels, 1, 1).chunk(2, dim=1)
        return torch.addcmul(x + bias, x, gain)


class Abs(nn.Module):
    """``|x|``: the activation the one prior SCS-GAN used in its discriminator."""

    def forward(self, x: Tensor) -> Tensor:
        return x.abs()


def _activation(name: str) -> nn.Module | None:
    return {
        "none": None,
        "relu": nn.ReLU(),
        "lrelu": nn.LeakyReLU(0.2),
        "abs": Abs(),
    }[name]


def _levels(resolution: int) -> int:
    """Number of k4 s2 resampling layers between ``4x4`` and ``resolution``."""
    if resolution < 8 or resolution & (resolution - 1):
        raise UserError(f"data.resolution must be a power of two >= 8 for these networks, got {resolution}")
    return int(math.log2(resolution)) - 2


def _width(base: int, level: int, cap: int) -> int:
    return min(base * 2**level, cap)


class Generator(nn.Module):
    """Latent codes ``(N, z_dim)`` to images ``(N, C, R, R)`` in [-1, 1]; see the module docstring.

    A conditional generator (``num_classes`` > 0) holds the training set's cumulative class frequencies as
    the buffer ``class_cdf`` (set by the trainer, saved with the weights), so that the classes of random
    latent codes come out as often as in the training set.
    """

    class_cdf: Tensor

    def __init__(
        self, config: GeneratorConfig, z_dim: int, resolution: int, channels: int, num_classes: int = 0
    ) -> None:
        super().__init__()
        if config.channels < 1 or config.max_channels < 1 or z_dim < 1 or num_classes < 0:
            raise UserError("model.g.channels, model.g.max_channels and model.z_dim must be positive")
        self.config, self.z_dim, self.resolution, self.img_channels = config, z_dim, resolution, channels
        self.num_classes = num_classes
        self.embed: nn.Embedding | None = None
        self.class_dim = (config.class_dim or z_dim) if num_classes and config.class_norm > 0 else 0
        if self.class_dim:
            self.embed = nn.Embedding(num_classes, self.class_dim)
            nn.init.normal_(self.embed.weight)
        if num_classes:
            self.register_buffer("class_cdf", torch.arange(1, num_classes + 1, dtype=torch.float64) / num_classes)
        levels = _levels(resolution)
        kind = config.kind
        activation = config.activation if config.activation != "auto" else ("relu" if kind == "conv" else "lrelu")
        widths = [_width(config.channels, levels - 1 - i, config.max_channels) for i in range(levels)]
        hidden = [4 * 2**i for i in range(levels)]  # the resolution after each layer of `widths`
        wrong = sorted(set(config.extra_layers_at) - set(hidden))
        if wrong:
            raise UserError(
                f"model.g.extra_layers_at {wrong} is not among this generator's hidden resolutions {hidden} "
                f"(the image is {resolution}x{resolution})"
            )
        layers: list[nn.Module] = []
        self._taps: list[int] = []  # index in `net` of the last module of each hidden resolution
        self._mod_at: list[int] = []  # index in `net` of each hidden layer's last module before its activation
        mods: list[nn.Module] = []
        in_ch = z_dim + self.class_dim
        for i, out_ch in enumerate(widths):
            stride, padding = (1, 0) if i == 0 else (2, 1)
            blocks = [(4, stride, padding)] + ([(3, 1, 1)] if hidden[i] in config.extra_layers_at else [])
            for k, s, p in blocks:
                layers.append(self._layer(in_ch, out_ch, s, p, bias=False, kernel=k))
                if kind == "conv":
                    layers.append(nn.BatchNorm2d(out_ch))
                if (num_classes and config.class_mod) or config.latent_mod:
                    self._mod_at.append(len(layers) - 1)
                    table = num_classes if config.class_mod else 0
                    mods.append(Modulation(out_ch, table, z_dim if config.latent_mod else 0))
                act = _activation(activation)
                if act is not None:
                    layers.append(act)
                in_ch = out_ch
            self._taps.append(len(layers) - 1)
        layers.append(self._layer(in_ch, channels, 2, 1, bias=kind == "conv"))
        if kind != "conv":
            layers.append(Gain(config.out_gain, config.gain_lr_mul))
        layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)
        self.mods: nn.ModuleList | None = nn.ModuleList(mods) if mods else None
        self.to_image: nn.ModuleList | None = None  # skip: a 1x1 layer from each hidden resolution to an image
        if config.skip:
            self.to_image = nn.ModuleList(
                self._layer(w, channels, 1, 0, bias=kind == "conv", kernel=1, transposed=False) for w in widths
            )

    def _layer(
        self, in_ch: int, out_ch: int, stride: int, padding: int, bias: bool, kernel: int = 4, transposed: bool = True
    ) -> nn.Module:
        c = self.config
        if c.kind == "conv":
            return (nn.ConvTranspose2d if transposed else nn.Conv2d)(in_ch, out_ch, kernel, stride, padding, bias=bias)
        return (SCSTranspose2d if transposed else SCS2d)(
            in_ch,
            out_ch,
            kernel,
            stride,
            padding,
            bias=bias,
            p_init=c.p_init,
            p_init_max=c.p_init_max,
            p_floor=c.p_floor,
            q_init=c.q_init,
            sharpen=c.kind == "scs",
        )

    def classes(self, z: Tensor) -> Tensor | None:
        """The class each latent code of ``z`` asks for (int64 ``(N,)``), or None if G is unconditional."""
        return classes_of(z, self.class_cdf) if self.num_classes else None

    def forward(self, z: Tensor) -> Tensor:
        x = z.view(z.shape[0], self.z_dim, 1, 1)
        classes = self.classes(z)
        if self.embed is not None:
            assert classes is not None
            label = nn.functional.normalize(self.embed(classes), dim=1) * self.config.class_norm
            label = label.to(x.dtype)
            x = torch.cat([x, label.view(z.shape[0], self.class_dim, 1, 1)], dim=1)
        if self.to_image is None and self.mods is None:
            return self.net(x)
        mods = {} if self.mods is None else dict(zip(self._mod_at, self.mods, strict=True))
        image: Tensor | None = None
        to_image = {} if self.to_image is None else dict(zip(self._taps, self.to_image, strict=True))
        last = self._taps[-1] + 1  # the k4 s2 layer to the image
        for i, layer in enumerate(self.net[:last]):
            x = layer(x)
            if i in mods:
                x = mods[i](x, classes, z)
            if i in to_image:
                image = self._add_image(image, to_image[i](x))
        if self.to_image is None:
            return self.net[last:](x)
        image = self._add_image(image, self.net[last](x))
        return self.net[last + 1 :](image)

    @staticmethod
    def _add_image(image: Tensor | None, new: Tensor) -> Tensor:
        if image is None:
            return new
        return new + nn.functional.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False)


class Discriminator(nn.Module):
    """Images ``(N, C, R, R)`` (with their classes ``(N,)`` if conditional) to logits ``(N,)``; see the module
    docstring."""

    def __init__(self, config: DiscriminatorConfig, resolution: int, channels: int, num_classes: int = 0) -> None:
        super().__init__()
        if config.channels < 1 or config.max_channels < 1:
            raise UserError("model.d.channels and model.d.max_channels must be positive")
        self.config, self.resolution, self.img_channels = config, resolution, channels
        self.num_classes = num_classes
        outputs = 1 + num_classes
        levels = _levels(resolution)
        kind = config.kind
        activation = "lrelu" if config.activation == "auto" else config.activation
        layers: list[nn.Module] = []
        in_ch = channels
        for i in range(levels):
            out_ch = _width(config.channels, i, config.max_channels)
            level: list[nn.Module] = []
            if config.downsample == "maxabspool" and kind != "conv":
                level += [self._layer(in_ch, out_ch, 3, 1, 1), MaxAbsPool2d(2)]
            else:
                level.append(self._layer(in_ch, out_ch, 4, 2, 1))
            if kind == "conv" and i > 0:
                level.append(nn.BatchNorm2d(out_ch))
            act = _activation(activation)
            if act is not None:
                level.append(act)
            layers += [Shortcut(nn.Sequential(*level), in_ch, out_ch)] if config.skip else level
            in_ch = out_ch
        if config.mbstd_group > 0:
            layers.append(MinibatchStd(config.mbstd_group))
            in_ch += 1
        if kind == "conv" or config.head == "linear":
            layers.append(nn.Conv2d(in_ch, outputs, 4, 1, 0, bias=True))
        else:
            layers += [self._layer(in_ch, outputs, 4, 1, 0), Gain(config.out_gain, config.gain_lr_mul)]
        self.net = nn.Sequential(*layers)

    def _layer(self, in_ch: int, out_ch: int, k: int, stride: int, padding: int, bias: bool = False) -> nn.Module:
        c = self.config
        if c.kind == "conv":
            return nn.Conv2d(in_ch, out_ch, k, stride, padding, bias=bias)
        return SCS2d(
            in_ch,
            out_ch,
            k,
            stride,
            padding,
            bias=bias,
            p_init=c.p_init,
            p_init_max=c.p_init_max,
            p_floor=c.p_floor,
            q_init=c.q_init,
            sharpen=c.kind == "scs",
        )

    def forward(self, images: Tensor, classes: Tensor | None = None) -> Tensor:
        logits = self.net(images).view(images.shape[0], -1)
        if not self.num_classes:
            return logits.view(images.shape[0])
        if classes is None:
            raise ValueError("a conditional discriminator needs each image's class")
        return logits[:, 0] + logits[:, 1:].gather(1, classes.view(-1, 1)).view(images.shape[0])


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN's initialisation for the convolution baseline: N(0, 0.02) weights, BN gains N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _classes(model: ModelConfig) -> int:
    # auto is conditional on labels; built without a dataset there are none (the trainer resolves it first)
    return 0 if model.num_classes == "auto" else model.num_classes


def build_generator(model: ModelConfig, resolution: int, channels: int) -> Generator:
    """The generator ``model`` describes, for images of ``resolution`` and ``channels``. ``model.num_classes``
    ``auto`` builds an unconditional one: without a dataset there are no labels (the trainer resolves ``auto``
    against its training set before building)."""
    g = Generator(model.g, model.z_dim, resolution, channels, _classes(model))
    if model.g.kind == "conv":
        init_dcgan_weights(g)
    return g


def build_discriminator(model: ModelConfig, resolution: int, channels: int) -> Discriminator:
    """The discriminator ``model`` describes."""
    d = Discriminator(model.d, resolution, channels, _classes(model))
    if model.d.kind == "conv":
        init_dcgan_weights(d)
    return d


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@torch.no_grad()
def rescale_scs_weights(module: nn.Module, rms: float) -> None:
    """Rescale the weight of every SCS and cosine layer of ``module``, in place, to root mean square ``rms``.

    Their outputs do not depend on the weights' scale (each output is a cosine), so this leaves what
    ``module`` computes unchanged (to rounding, and for the ``eps`` in the norms) and sets how far an
    optimiser step of a given size turns the weights. Each layer's weight is scaled as one tensor.
    """
    for layer in scs_layers(module).values():
        weight = layer.weight
        weight.mul_(rms / weight.float().square().mean().sqrt().clamp_min(1e-30).to(weight.dtype))


def scs_layers(module: nn.Module) -> dict[str, nn.Module]:
    """The SCS layers of ``module`` by name (for the p and q statistics)."""
    return {n: m for n, m in module.named_modules() if isinstance(m, SCS2d | SCSTranspose2d)}
