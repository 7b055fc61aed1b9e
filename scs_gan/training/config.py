"""The whole run as one serialisable object: data, model and training options with their defaults.

The defaults are the default SCS-GAN on mnist5k (``configs/default.yaml`` states the choices that define
it; every other option keeps the default written here). A run is configured by an optional YAML file plus
dotted overrides: ``scs-gan train --config configs/x.yaml train.batch=128 model.g.channels=32``. On resume,
:func:`merge_for_resume` combines the saved configuration with the options the user gave.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import apply_overrides, from_dict, load_yaml, to_dict
from ..data import DataConfig
from ..errors import UserError
from ..metrics.protocol import parse_metric
from ..models import ModelConfig

_FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32


@dataclass
class TrainConfig:
    """Training options (``train.*``). Lengths are in thousands of real images shown to D (kimg).

    Attributes:
        kimg: training length.
        batch: images per optimiser step over all processes; batch_gpu: per process and micro-batch
            (default: batch / processes); gradients are accumulated exactly over the micro-batches.
        g_lr, d_lr, betas: Adam settings (1e-3 measured better than 5e-4 and 2e-4 for the SCS-GAN and the DCGAN alike).
        lr_rampdown: the fraction of the run, at its end, over which both learning rates fall linearly to
            zero (0 = constant). The default, the last half, measured better than constant rates at the
            default run's budget (three seeds: docs/RESULTS.md, round 9). The schedule follows ``kimg``:
            extending a run on resume moves the ramp-down to the new end, so only a run with constant rates
            extended on resume equals one trained that long from the start.
        pq_lr_mul: learning-rate multiplier for the SCS exponents and norm floors (``p_raw``, ``q_raw``) of G and
            D: Adam moves each by about the learning rate per step, so at 1 they barely leave their initial
            values. The default, 10, lets D's exponents spread (with ``model.d`` p0 in [1, 3]; G's stay at
            1.0-1.6; docs/RESULTS.md, round 32).
        scs_weight_rms: if set, the weights of every SCS and cosine layer (in G and D) are rescaled to this
            root mean square at the start and after every optimiser step. Those layers are invariant to their
            weights' scale, so this changes only how fast they turn: Adam moves each weight by about the
            learning rate per step, which turns a layer by about ``lr / rms`` radians; without it the norms
            grow (by about ``lr * sqrt(steps)``) and that rate falls as the run goes on, from a start that
            depends on each layer's fan-in (``scs_gan.models.rescale_scs_weights``). Null (the default): off.
        share_fakes: one G forward per step: the G step reuses the D step's fakes (and their graph) against
            the updated D, as the PyTorch DCGAN example does, instead of generating new ones; it saves a
            no-grad G forward per micro-batch (8-15% of the default step), and with gradient accumulation
            it keeps every micro-batch's G graph until the G step.
        loss: ``logistic`` (non-saturating), ``hinge`` or ``relativistic`` (RpGAN: D ranks each real above
            one fake, ``softplus(D(fake_i) - D(real_i))``; G's loss uses the real logits of the same step's D
            phase, taken before D's update, so that it costs no extra D pass). D's logits then mean something
            only relative to each other, so ADA's sign heuristic (``ada_target``) cannot be used with it.
        g_topk, g_topk_decay: top-k training of G (Sinha et al. 2020): G's loss counts only the fakes D scores
            highest, a fraction ``max(g_topk, g_topk_decay ** epochs)`` of each micro-batch (at least one
            image), with ``epochs`` the real images shown so far over the data set's size; null: all fakes.
        r1_gamma: R1 penalty weight (0 = off), applied lazily every r1_interval D steps.
        lecam, lecam_decay: the LeCam regulariser's weight (0 = off) and the decay of its moving averages
            (Tseng et al. 2021, for GANs on limited data): D's loss gains ``lecam * (mean(relu(D(real) -
            a_fake)^2) + mean(relu(a_real - D(fake))^2))``, with ``a_real``, ``a_fake`` moving averages of
            the mean logits on (augmented) reals and fakes over past D steps (over all processes), so that
            D's logits stay near where they have been rather than drifting apart. It costs no extra pass;
            the first step, which has no averages yet, runs without it.
        mode_seeking: the weight of MSGAN's mode-seeking term in G's loss (0 = off; Mao et al. 2019 use 1): the
            fakes come in pairs of codes that ask for the same class, and G's loss gains ``mode_seeking / (1e-5 +
            mean|G(z_a) - G(z_b)| / mean|z_a - z_b|)`` (:func:`scs_gan.training.losses.mode_seeking_penalty`),
            which rewards different images for different codes. It needs an even micro-batch. The default, 0.03,
            measured better than none (three seeds 20.6 ± 0.8 against 22.0 ± 1.7, precision and recall both
            higher); 0.1 and 1 traded too much precision for recall (docs/RESULTS.md, round 31).
        fake_classes: in a conditional GAN, the classes the fakes ask for: ``drawn`` (the default), each code's
            own at the data's class frequencies, independently of the reals; ``batch``, the labels of the real
            micro-batch beside them (pairs of the mode-seeking term take the label of every other real), so
            that D's per-class outputs see as many fakes as reals of each class in every D step. The G step
            reuses the classes of its micro-batch's D step. Either way a fake asks for class ``c`` as often as
            the data has it. No effect on an unconditional GAN.
        lookahead_k, lookahead_alpha: Lookahead-minmax (0: off): after every ``lookahead_k`` steps the weights of
            G and D become slow + alpha (fast - slow), where slow are their weights after the previous such step
            (kept in the checkpoints); it did not help the default run (docs/RESULTS.md, round 27).
        augment: differentiable augmentation of every image D sees (reals and fakes, in the D and G steps
            and the reals of R1): any of ``translation``, ``cutout``, ``color`` (DiffAugment); empty = off.
        augment_p: the probability with which each policy is applied to each image: fixed when ada_target
            is null (1 = classic DiffAugment), else ADA's starting strength. The default, DiffAugment
            translation at p = 1, measured better than none, translation+cutout and ADA at the default run's
            budget (three seeds: docs/RESULTS.md).
        augment_shift: ``translation``'s largest shift, as a fraction of the image size. The default, 1/16 (up
            to 2 pixels at 32 x 32), measured better on mnist5k's centred digits than DiffAugment's 1/8 (three
            seeds 18.8 ± 1.0 against 20.6 ± 0.8; docs/RESULTS.md, round 32); natural images have used 1/8.
        ada_target, ada_interval, ada_kimg: ADA's adaptive strength: every ada_interval D steps the mean sign
            of D on reals is compared with ada_target and ``p`` moves up or down at a speed that would take it
            from 0 to 1 in ada_kimg thousand images (see scs_gan/training/augment.py).
        ema_kimg, ema_rampup: half-life of the generator EMA in kimg, and its ramp-up (null = none).
        mixed_precision: ``no``, ``bf16`` or ``fp16``.
        compile: run G's forward, and D's forward with the loss, through ``torch.compile`` in the training
            steps (the augmentation, D's forward on R1 steps and the EMA generator stay eager); the first steps
            are slow while it compiles. The same maths, rounded differently, so it may change on resume.
            ``auto`` (the default) compiles where it was measured to pay: on one CUDA process (the SCS-GAN
            step 0.45x the eager one on an H200, whose eager SCS layers are many small kernels), not on the CPU
            (0.95x against a minute of compiling) and not with several processes (DDP; not measured yet); see
            docs/PERFORMANCE.md.
        compile_backend: the ``torch.compile`` backend (``inductor``; ``aot_eager`` traces without generating
            code, for checking).
        seed: seeds models, data order and latents (per process).
        tick_kimg: progress/statistics interval; snapshot_ticks: sample grid + G_ema snapshot interval;
            checkpoint_ticks: resumable checkpoint interval; keep_checkpoints: how many to keep.
        nan_patience: stop (with a checkpoint) after this many consecutive non-finite steps.
        grid_seeds: fixed latents (seeds 0..N-1) for the sample grids.
        runs_dir: where run directories are created; desc: their description (default from the config).
        progress: show a progress bar.
        trackers: ``wandb`` and/or ``tensorboard`` (scalars, metrics, sample grids, the config); wandb follows
            ``WANDB_MODE`` (online, offline, disabled); a resumed run continues the same wandb run.
        wandb_project: the wandb project.
    """

    kimg: float = 192.0
    batch: int = 64
    batch_gpu: int | None = None
    g_lr: float = 1e-3
    d_lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    lr_rampdown: float = 0.5
    pq_lr_mul: float = 10.0
    scs_weight_rms: float | None = None
    share_fakes: bool = False
    loss: Literal["logistic", "hinge", "relativistic"] = "logistic"
    g_topk: float | None = None
    g_topk_decay: float = 0.99
    r1_gamma: float = 0.0
    r1_interval: int = 16
    lecam: float = 0.0
    lecam_decay: float = 0.99
    mode_seeking: float = 0.03
    fake_classes: Literal["drawn", "batch"] = "drawn"
    lookahead_k: int = 0
    lookahead_alpha: float = 0.5
    augment: list[Literal["translation", "cutout", "color"]] = field(default_factory=lambda: ["translation"])
    augment_p: float = 1.0
    augment_shift: float = 0.0625
    ada_target: float | None = None
    ada_interval: int = 4
    ada_kimg: float = 100.0
    ema_kimg: float = 5.0
    ema_rampup: float | None = 0.05
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    compile: bool | Literal["auto"] = "auto"
    compile_backend: str = "inductor"
    seed: int = 0
    tick_kimg: float = 4.0
    snapshot_ticks: int = 5
    checkpoint_ticks: int = 5
    keep_checkpoints: int = 2
    nan_patience: int = 10
    grid_seeds: int = 64
    runs_dir: str = "runs"
    desc: str | None = None
    progress: bool = True
    trackers: list[Literal["wandb", "tensorboard"]] = field(default_factory=list)
    wandb_project: str = "scs_gan"


@dataclass
class MetricsConfig:
    """FID/KID during and after training (``metrics.*``); see scs_gan/metrics/evaluate.py for the names.

    Attributes:
        names: metrics by protocol name, e.g. ``[fid1k_1k, kid1k_1k]`` (1,000 generated vs 1,000 real) or
            ``[fid50k_full]``; empty turns metrics off.
        every_ticks: also evaluate every N ticks (0 = only at the end).
        fid_weights: a weights file (default: found or built offline, see ``scs-gan fid-weights``).
        batch: Inception batch size (0 = 8 on CPU, 128 on GPU).
    """

    names: list[str] = field(default_factory=lambda: ["fid1k_1k", "kid1k_1k", "pr1k_1k"])
    every_ticks: int = 0
    fid_weights: str | None = None
    batch: int = 0


@dataclass
class RunConfig:
    """Everything a run needs; saved as ``config.yaml`` in its run directory and inside every snapshot."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def validate(self) -> None:
        """Cross-field checks that single fields cannot express."""
        self.data.validate()
        for name in self.metrics.names:
            parse_metric(name)
        if self.metrics.every_ticks < 0 or self.metrics.batch < 0:
            raise UserError("metrics.every_ticks and metrics.batch must be >= 0")
        t = self.train
        if t.kimg <= 0 or t.tick_kimg <= 0:
            raise UserError("train.kimg and train.tick_kimg must be positive")
        if t.batch < 1 or (t.batch_gpu is not None and t.batch_gpu < 1):
            raise UserError("train.batch and train.batch_gpu must be positive")
        if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
            raise UserError(f"train.betas must be two numbers in [0, 1), got {t.betas}")
        if not (t.g_lr > 0 and t.d_lr > 0 and t.pq_lr_mul > 0):
            raise UserError("train.g_lr, train.d_lr and train.pq_lr_mul must be positive")
        if not max(t.g_lr, t.d_lr) * t.pq_lr_mul <= _FLOAT32_MAX:  # the rate of p and q, a float32 in Adam's step
            raise UserError(
                f"train.g_lr and train.d_lr times train.pq_lr_mul ({t.pq_lr_mul:g}) must stay within float32's range "
                f"(3.4e38), got {max(t.g_lr, t.d_lr):g}"
            )
        if not 0 <= t.lr_rampdown < 1:
            raise UserError(f"train.lr_rampdown must be in [0, 1), got {t.lr_rampdown}")
        if t.r1_gamma < 0 or t.r1_interval < 1:
            raise UserError("train.r1_gamma must be >= 0 and train.r1_interval >= 1")
        if t.lookahead_k < 0 or not 0 < t.lookahead_alpha <= 1:
            raise UserError(
                f"train.lookahead_k must be >= 0 (0: off) and train.lookahead_alpha in (0, 1], got "
                f"{t.lookahead_k} and {t.lookahead_alpha}"
            )
        if t.lecam < 0 or not 0 <= t.lecam_decay < 1:
            raise UserError(
                f"train.lecam must be >= 0 and train.lecam_decay in [0, 1), got {t.lecam} and {t.lecam_decay}"
            )
        if t.mode_seeking < 0:
            raise UserError(f"train.mode_seeking must be >= 0 (0: off), got {t.mode_seeking}")
        if len(set(t.augment)) != len(t.augment):
            raise UserError(f"train.augment names a policy twice: {t.augment}")
        if not 0 <= t.augment_p <= 1 or (t.ada_target is not None and not -1 <= t.ada_target <= 1):
            raise UserError("train.augment_p must be in [0, 1] and train.ada_target in [-1, 1] (or null: fixed p)")
        if not 0 < t.augment_shift < 1:
            raise UserError(
                f"train.augment_shift must be a fraction of the image size in (0, 1), got {t.augment_shift}"
            )
        if t.loss == "relativistic" and t.ada_target is not None:
            raise UserError(
                "train.ada_target needs D's logits to have a sign, which the relativistic loss leaves undefined "
                "(only differences between them count): use a fixed train.augment_p (train.ada_target=null)"
            )
        if t.ada_interval < 1 or not t.ada_kimg > 0:
            raise UserError("train.ada_interval must be at least 1 and train.ada_kimg positive")
        if t.g_topk is not None and not 0 < t.g_topk <= 1:
            raise UserError(f"train.g_topk must be in (0, 1] (or null for off), got {t.g_topk}")
        if not 0 < t.g_topk_decay <= 1:
            raise UserError(f"train.g_topk_decay must be in (0, 1], got {t.g_topk_decay}")
        if t.scs_weight_rms is not None and not t.scs_weight_rms > 0:
            raise UserError(f"train.scs_weight_rms must be positive (or null for off), got {t.scs_weight_rms}")
        if t.ema_kimg < 0 or (t.ema_rampup is not None and not t.ema_rampup > 0):
            raise UserError("train.ema_kimg must be >= 0 and train.ema_rampup positive (or null for none)")
        if t.compile_backend != "inductor":  # importing the compiler takes a second; inductor is always there
            _check_compile_backend(t.compile_backend)
        if t.seed < 0:
            raise UserError(f"train.seed must be >= 0, got {t.seed}")
        if min(t.snapshot_ticks, t.checkpoint_ticks, t.keep_checkpoints, t.nan_patience, t.grid_seeds) < 1:
            raise UserError(
                "train.snapshot_ticks, checkpoint_ticks, keep_checkpoints, nan_patience and grid_seeds "
                "must be at least 1"
            )
        self.model.validate()

    def describe(self) -> str:
        """A short run description: dataset, resolution and the two network kinds."""
        g, d = self.model.g.kind, self.model.d.kind
        nets = g if g == d else f"{d}D-{g}G"
        return f"{self.data.name}{self.data.resolution}-{nets}"


def _check_compile_backend(name: str) -> None:
    """Refuse a ``train.compile_backend`` that torch.compile does not know."""
    import difflib

    import torch._dynamo

    if name in torch._dynamo.list_backends(exclude_tags=()):
        return
    shown = sorted({"inductor", "eager", "aot_eager", *torch._dynamo.list_backends()})
    close = difflib.get_close_matches(name, shown, n=1)
    hint = f"; did you mean {close[0]!r}" if close else ""
    raise UserError(f"train.compile_backend {name!r} is not a torch.compile backend (try: {', '.join(shown)}){hint}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML file (if any), then the overrides; validated."""
    config = from_dict(RunConfig, load_yaml(path)) if path else RunConfig()
    config = apply_overrides(config, overrides or [])
    config.validate()
    return config


# Options added after runs had been saved whose default is not what those runs trained with: a saved
# config.yaml without the key trained with this value, so that is what its resume (and the study's record)
# uses; keys added with a default that keeps the old maths need no entry.
ADDED_LATER: dict[str, Any] = {
    "train.lr_rampdown": 0.0,  # constant rates before the ramp-down existed
    "train.share_fakes": False,  # two G forwards per step before the option existed
    "model.num_classes": 0,  # unconditional before conditional GANs existed
    "model.g.class_mod": False,  # the class only in the code before per-layer class modulation existed
    "model.g.latent_mod": False,  # the code only in the first layer before per-layer latent modulation existed
    "train.mode_seeking": 0.0,  # no mode-seeking term before it existed (round 31)
    "train.fake_classes": "drawn",  # every fake's class drawn on its own before the option existed (round 32)
    "train.augment_shift": 0.125,  # DiffAugment's 1/8 before the shift could be set (round 32)
    "train.pq_lr_mul": 1.0,  # p and q at the weights' rate before the multiplier existed
    "model.d.p_init_max": None,  # one initial exponent per layer before the spread existed
}


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved configuration saved in a run directory (``config.yaml``), with the values older runs
    trained with for options added since (:data:`ADDED_LATER`)."""
    data = load_yaml(Path(run_dir) / "config.yaml")
    if isinstance(data, dict):
        for dotted, value in ADDED_LATER.items():
            *sections, key = dotted.split(".")
            part: Any = data
            for section in sections:
                part = part.get(section) if isinstance(part, dict) else None
            if isinstance(part, dict) and key not in part:
                part[key] = value
    return from_dict(RunConfig, data)


def given_keys(path: str | Path | None, overrides: list[str] | None) -> set[str]:
    """The dotted keys a user set, in the YAML file and in the overrides, whatever their values."""
    keys = set(flatten(load_yaml(path))) if path else set()
    return keys | {o.split("=", 1)[0].strip() for o in overrides or []}


# Options that may change when a run is resumed: they do not change the training maths (``runs_dir`` only
# says where ``--resume latest`` looks; the run keeps its directory; ``compile`` and ``compile_backend`` run
# the same operations through the compiler, which may round differently).
RESUMABLE_TRAIN_KEYS = frozenset(
    {
        "kimg",
        "tick_kimg",
        "snapshot_ticks",
        "checkpoint_ticks",
        "keep_checkpoints",
        "progress",
        "nan_patience",
        "runs_dir",
        "desc",
        "compile",
        "compile_backend",
    }
)


# Options whose ``auto`` a run resolves at its start from what cannot change on resume (the data): a resumed
# run given ``auto`` keeps the value it resolved to (its config.yaml records the number)
RESOLVED_AT_START = frozenset({"model.num_classes"})


def merge_for_resume(saved: RunConfig, given: RunConfig, keys: Iterable[str] | None = None) -> RunConfig:
    """The configuration of a resumed run: the saved one, with the user's options where they may change.

    ``keys`` are the dotted keys the user gave (see :func:`given_keys`); each is taken from ``given`` whatever
    its value, and one that would change the training maths (anything but the length, the intervals, the
    progress bar, compilation and the metrics) is refused with a UserError. ``keys=None`` means every key
    whose value in ``given`` differs from the saved one.
    """
    saved_flat, given_flat = flatten(to_dict(saved)), flatten(to_dict(given))
    if keys is None:
        keys = [key for key, value in given_flat.items() if value != saved_flat[key]]
    merged = dict(saved_flat)
    for key in sorted(set(keys)):
        prefixed = [k for k in given_flat if k == key or k.startswith(f"{key}.")]  # a whole section may be given
        for full in prefixed:
            if given_flat[full] == saved_flat[full] or (full in RESOLVED_AT_START and given_flat[full] == "auto"):
                continue
            section, _, name = full.partition(".")
            if section != "metrics" and not (section == "train" and name in RESUMABLE_TRAIN_KEYS):
                raise UserError(
                    f"{full} cannot change when resuming (the run used {saved_flat[full]!r}, you gave "
                    f"{given_flat[full]!r}); start a new run instead"
                )
            merged[full] = given_flat[full]
    config = from_dict(RunConfig, _nest(merged))
    config.validate()
    return config


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested options as ``{"section.key": value}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, path) if isinstance(value, dict) else {path: value})
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def changed_options(before: RunConfig, after: RunConfig) -> list[str]:
    """``key: old -> new`` for every option that differs (what a resume changed)."""
    old, new = flatten(to_dict(before)), flatten(to_dict(after))
    return [f"{key}: {old[key]!r} -> {new[key]!r}" for key in new if new[key] != old[key]]
