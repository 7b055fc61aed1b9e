"""The training loop: mechanics only (the losses are in losses.py, the networks in scs_gan.models, the
checkpoints in checkpoint.py).

One step = one discriminator update and one generator update on ``train.batch`` real images over all
processes, each process working through micro-batches of ``train.batch_gpu`` with exact gradient
accumulation. Every ``train.tick_kimg`` the loop writes a line of statistics; every few ticks a sample grid
from the EMA generator, an inference snapshot and a resumable checkpoint. See the README for the run
directory and for resume.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, broadcast_object_list, set_seed
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..config import dump_yaml, to_dict
from ..data import InfiniteLoader, build_dataset, to_float
from ..data.dataset import spread_subset
from ..errors import UserError
from ..images import image_grid, save_image_grid
from ..io import atomic_write, atomic_write_text
from ..latents import latents_for_seeds, with_class
from ..metrics.evaluate import Evaluator, describe
from ..metrics.weights import resolve_fid_weights
from ..models import build_discriminator, build_generator, count_parameters, rescale_scs_weights
from ..snapshot import save_snapshot
from . import trackers
from .augment import AdaptiveStrength, augment
from .checkpoint import (
    Progress,
    list_checkpoints,
    load_checkpoint,
    replicas_identical,
    resolve_resume,
    save_checkpoint,
    verify_checkpoint,
)
from .config import RunConfig, changed_options, load_run_config, merge_for_resume
from .ema import ema_beta, update_ema
from .losses import d_loss, g_loss, lecam_penalty, mode_seeking_penalty, r1_loss
from .rundir import RunLock, RunLog, append_jsonl, create_run_dir, keep_previous, truncate_jsonl
from .signals import StopSignals
from .stats import layer_stats, peak_memory_mb


class TrainingStopped(Exception):
    """The run stopped early with its state saved; ``exit_code`` tells the CLI what to return."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def param_groups(module: nn.Module, lr: float, pq_lr_mul: float) -> list[dict[str, Any]]:
    """Adam parameter groups: the SCS exponents and norm floors get ``lr * pq_lr_mul``, the rest ``lr``."""
    pq, rest = [], []
    for name, param in module.named_parameters():
        (pq if name.endswith(("p_raw", "q_raw")) else rest).append(param)
    groups = [{"params": rest, "lr": lr, "base_lr": lr}]
    if pq:
        groups.append({"params": pq, "lr": lr * pq_lr_mul, "base_lr": lr * pq_lr_mul})
    return groups


def lr_factor(cur_nimg: int, kimg: float, rampdown: float) -> float:
    """The learning rates' multiplier after ``cur_nimg`` images: 1, then falling linearly to 0 over the last
    ``rampdown`` fraction of ``kimg`` (constant 1 when ``rampdown`` is 0)."""
    if rampdown <= 0:
        return 1.0
    remaining = 1.0 - cur_nimg / (kimg * 1000)
    return max(0.0, min(1.0, remaining / rampdown))


def set_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Scale every parameter group's learning rate to ``factor`` times its base rate (checkpoints from before
    the schedule existed kept a constant rate, which is their base)."""
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("base_lr", group["lr"]) * factor


def nimg_label(nimg: int) -> str:
    """The image count in file names (``000200000`` = 200 kimg): unique per save, sorted by name."""
    return f"{nimg:09d}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _read_phase(
    accelerator: Accelerator, values: list[Tensor], flags: list[Tensor | bool]
) -> tuple[list[float], list[bool]]:
    """The one host read of a training phase: local ``values`` as floats, and ``flags`` ANDed over all
    processes (every process must call this). Everything before it stays queued on the device."""
    device = accelerator.device
    local = torch.stack([torch.as_tensor(f).to(device=device, dtype=torch.float32) for f in flags])
    if accelerator.num_processes > 1:
        local = accelerator.gather(local.unsqueeze(0)).min(dim=0).values
    host = torch.cat([torch.stack([v.to(device=device, dtype=torch.float32) for v in values]), local]).tolist()
    return host[: len(values)], [v > 0.5 for v in host[len(values) :]]


def _grads_finite(module: nn.Module) -> Tensor:
    """Whether every gradient of ``module`` is finite, as a device scalar (no host synchronisation)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.ones((), dtype=torch.bool)
    device = grads[0].device
    if all(g.device == device and g.dtype == torch.float32 for g in grads):
        # one multi-tensor pass (the check GradScaler runs) instead of three small ops per parameter; the
        # "unscale" multiplies by exactly 1, which leaves every value, NaN and -0.0 included, as it was
        found = torch.zeros(1, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, torch.ones(1, device=device))
        return found[0] == 0
    return torch.stack([torch.isfinite(g).all() for g in grads]).all()


def apply_step(optimizer: torch.optim.Optimizer, ok: bool, scaler: torch.amp.GradScaler | None) -> None:
    """Step ``optimizer`` if ``ok`` (the gradients are finite everywhere), then clear the gradients.

    Under fp16, a step skipped here is one the gradient scaler never saw overflow in (the loss itself was
    not finite, e.g. an overflowing R1 penalty), so the scale is backed off here as ``scaler.step`` would
    have done; otherwise the same overflow would be skipped again and again at the same scale.
    """
    if ok:
        optimizer.step()
    elif scaler is not None:
        scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
    optimizer.zero_grad(set_to_none=True)


def _loss_scale(accelerator: Accelerator) -> float:
    """The fp16 gradient scaler's current scale (1 without one): R1 differentiates the scaled logits."""
    return accelerator.scaler.get_scale() if accelerator.scaler is not None else 1.0


def check_classes(dataset: Any, num_classes: int) -> None:
    """Refuse a conditional GAN (``model.num_classes`` > 0) on a dataset whose labels do not fit it."""
    if dataset.labels is None:
        where = "" if dataset.images is not None else " (it is streamed; labels need an in-memory dataset)"
        raise UserError(
            f"model.num_classes={num_classes} asks for a class-conditional GAN, but dataset {dataset.name} has no "
            f"class labels{where}; set model.num_classes=0"
        )
    if dataset.num_classes != num_classes:
        raise UserError(
            f"model.num_classes is {num_classes}, but dataset {dataset.name} has {dataset.num_classes} classes; "
            f"set model.num_classes={dataset.num_classes} (or 0 for an unconditional GAN)"
        )


def compiles(setting: bool | str, device: torch.device, processes: int = 1) -> bool:
    """Whether ``train.compile`` (true, false or ``auto``) compiles the training steps of ``processes``
    processes on ``device``: ``auto`` does on one CUDA process, where it was measured to pay, and not
    elsewhere (several processes compile under DDP, which no one has measured here yet)."""
    return setting if isinstance(setting, bool) else device.type == "cuda" and processes == 1


@dataclass
class CompiledSteps:
    """The ``torch.compile`` forms of the training steps' pieces (``train.compile``), sharing G's and D's
    parameters: ``generate(z)`` is G's forward; ``d_losses(reals, fakes, real_classes, fake_classes)`` D's
    forward on both (already augmented; the classes None unless conditional) with the D loss, returning the loss
    and the real and fake logits; ``g_loss(fakes, fake_classes, real_logits, keep)`` D's forward on the
    augmented fakes with the G loss (``real_logits``: None, or the relativistic loss's; ``keep``: None, or top-k
    training's count)."""

    generate: Callable[[Tensor], Tensor]
    d_losses: Callable[[Tensor, Tensor, Tensor | None, Tensor | None], tuple[Tensor, Tensor, Tensor]]
    g_loss: Callable[[Tensor, Tensor | None, Tensor | None, Tensor | None], Tensor]


class Trainer:
    """Holds the state of one run; ``run()`` trains until ``train.kimg`` or until stopped.

    With ``resume`` (``latest``, a run directory or a checkpoint), the run's saved configuration is used,
    with the options in ``given`` (the dotted keys the user set; None: those that differ from the saved
    configuration) taken from ``config`` where they may change (see :func:`merge_for_resume`).
    """

    def __init__(self, config: RunConfig, resume: str | None = None, given: set[str] | None = None) -> None:
        trackers.check_installed(config.train.trackers)
        checkpoint, self.resume_changes = None, []
        if resume is not None:
            checkpoint = resolve_resume(resume, config.train.runs_dir)
            saved = load_run_config(checkpoint.parent.parent)
            config = merge_for_resume(saved, config, given)
            self.resume_changes = changed_options(saved, config)
        self.accelerator = acc = Accelerator(
            mixed_precision=config.train.mixed_precision,
            log_with=config.train.trackers or None,
            # the run directory does not exist yet; trackers.start points the logging dir into it
            project_config=ProjectConfiguration(project_dir=config.train.runs_dir, logging_dir=config.train.runs_dir),
            # DDP would copy rank 0's batch-norm statistics into every replica at each forward, in place,
            # between D's two forwards of one step (a failing backward on CUDA, diverged replicas on gloo);
            # the statistics are averaged over processes after each step instead (_sync_buffers)
            kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        )
        self.main = acc.is_main_process
        if checkpoint is not None:
            run_dir = checkpoint.parent.parent
        else:
            run_dir = (
                create_run_dir(config.train.runs_dir, config.train.desc or config.describe()) if self.main else None
            )
            run_dir = broadcast_object_list([run_dir])[0]
        self.config, self.run_dir = config, Path(run_dir)
        self.lock = RunLock(self.run_dir) if self.main else None  # a second process on this run stops here
        self.log = RunLog(self.run_dir / "log.txt" if self.main else None, sys.stdout if self.main else None)
        try:
            self._setup(checkpoint)
        except BaseException:
            if checkpoint is None:
                self._discard_unstarted_run()
            raise

    # ------------------------------------------------------------------------------------------- setup

    def _setup(self, checkpoint: Path | None) -> None:
        """Everything after the run directory: data, networks, optimisers, loader, metrics, the resumed state."""
        config, acc = self.config, self.accelerator
        t = config.train
        self.batch_gpu, self.accum = self._batch_split()
        with acc.main_process_first():
            self.dataset = build_dataset(config.data)
        if config.model.num_classes == "auto":  # conditional where the data has labels
            config.model.num_classes = self.dataset.num_classes
            config.model.validate()  # what depends on the class count
        if self.main and checkpoint is None:
            atomic_write_text(self.run_dir / "config.yaml", dump_yaml(config))
        self.conditional = config.model.num_classes > 0
        if self.conditional:
            check_classes(self.dataset, config.model.num_classes)
        torch.manual_seed(t.seed)  # identical initial weights on every process
        generator = build_generator(config.model, config.data.resolution, config.data.channels)
        if self.conditional:
            generator.class_cdf.copy_(self.dataset.class_frequencies().cumsum(0))
        self.classes_of = generator.classes  # the classes latents ask for (None: unconditional)
        discriminator = build_discriminator(config.model, config.data.resolution, config.data.channels)
        if t.scs_weight_rms is not None:
            rescale_scs_weights(generator, t.scs_weight_rms)
            rescale_scs_weights(discriminator, t.scs_weight_rms)
        # copied before prepare(), which wraps G's forward in autocast: the EMA copy runs in float32, the
        # same as a snapshot loaded by `scs-gan metrics` or `generate`
        self.G_ema = copy.deepcopy(generator).eval().requires_grad_(False).to(acc.device)
        opt_g = torch.optim.Adam(param_groups(generator, t.g_lr, t.pq_lr_mul), betas=tuple(t.betas))
        opt_d = torch.optim.Adam(param_groups(discriminator, t.d_lr, t.pq_lr_mul), betas=tuple(t.betas))
        self.G, self.D, self.opt_G, self.opt_D = acc.prepare(generator, discriminator, opt_g, opt_d)
        # train.lookahead_k: the slow weights of G and D (Lookahead-minmax), one copy per parameter
        self.slow = (
            [q.detach().clone() for net in (generator, discriminator) for q in net.parameters()]
            if t.lookahead_k
            else []
        )
        self.loader = InfiniteLoader(
            self.dataset,
            self.batch_gpu,
            seed=t.seed,
            rank=acc.process_index,
            world_size=acc.num_processes,
            workers=config.data.workers if self.dataset.images is None else 0,
            hflip=config.data.hflip,
            pin_memory=acc.device.type == "cuda",
            labels=self.conditional,
        )
        self.progress = Progress()
        self.compiled: CompiledSteps | None = None  # built on first use when train.compile is on
        self._fakes: list[tuple[Tensor, Tensor | None, Tensor]] = []  # with train.share_fakes: the D step's fakes
        # (with G's graph), their classes and codes, for the G step
        self._real_logits: list[Tensor] = []  # with train.loss=relativistic: the D step's real logits, for the G step
        self._real_classes: list[Tensor | None] = []  # the D step's real labels, for the G step's fake classes
        self.strength = AdaptiveStrength(t.augment_p, t.ada_target, t.ada_interval, t.ada_kimg) if t.augment else None
        self.grid_latents = latents_for_seeds(range(t.grid_seeds), config.model.z_dim, acc.device)
        self.evaluator = self._make_evaluator()
        self.checkpoint = self._resume(checkpoint) if checkpoint is not None else None
        if checkpoint is None:
            set_seed(t.seed, device_specific=True)  # different latents on every process
        self.stop = StopSignals()
        self.trackers = trackers.start(acc, config, self.run_dir, self.progress)

    def _discard_unstarted_run(self) -> None:
        """Remove the new run directory of a run that failed before its first step (bad data, missing weights,
        Ctrl-C): it holds nothing but an unfinished log, and would otherwise stay behind as a run that is not one."""
        self.log.close()
        if self.lock is not None:
            self.lock.release()
        if self.main:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _batch_split(self) -> tuple[int, int]:
        t, world = self.config.train, self.accelerator.num_processes
        batch_gpu = t.batch_gpu or t.batch // world
        if batch_gpu < 1 or t.batch % (batch_gpu * world):
            raise UserError(
                f"train.batch ({t.batch}) must be a multiple of train.batch_gpu ({batch_gpu}) times the number of "
                f"processes ({world})"
            )
        if t.mode_seeking > 0 and batch_gpu % 2:
            raise UserError(
                f"train.mode_seeking pairs the fakes of each micro-batch, and {batch_gpu} images are not pairs; "
                "use an even train.batch (or train.batch_gpu), or set train.mode_seeking=0"
            )
        return batch_gpu, t.batch // (batch_gpu * world)

    def _make_evaluator(self) -> Evaluator | None:
        """The FID/KID evaluator (weights resolved now, so a missing file fails before training, not after)."""
        m = self.config.metrics
        if not m.names:
            return None
        with self.accelerator.main_process_first():  # the main process converts and caches; others read
            state, source = resolve_fid_weights(m.fid_weights)
        show = self.main and self.config.train.progress
        evaluator = Evaluator(self.dataset, state, source, self.accelerator.device, m.batch, progress=show, floors=True)
        evaluator.check(m.names)  # e.g. is<N> without logits weights: refused now, not after training
        return evaluator

    def _resume(self, chosen: Path) -> Path:
        """Load the newest intact checkpoint up to ``chosen``, setting damaged ones aside; returns the one used."""
        acc = self.accelerator
        candidates = [c for c in list_checkpoints(self.run_dir) if c.name <= chosen.name] or [chosen]
        damaged: list[tuple[Path, str]] = []
        for checkpoint in reversed(candidates):
            problem = verify_checkpoint(checkpoint, acc.num_processes, lookahead=bool(self.slow))
            if problem is None:
                break
            damaged.append((checkpoint, problem))
        else:
            reasons = "; ".join(f"{c.name}: {why}" for c, why in damaged)
            raise UserError(f"cannot resume {self.run_dir}: no intact checkpoint ({reasons})")
        acc.wait_for_everyone()  # every process has verified before any folder is renamed
        for bad, problem in damaged:
            if self.main:
                kept = keep_previous(bad, "damaged")
                self.log(
                    f"checkpoint {bad.name} is damaged ({problem}); kept as {kept.name}, resuming from an older one"
                )
        acc.wait_for_everyone()
        self.progress = load_checkpoint(acc, checkpoint, self.G_ema, self.slow)
        self.loader.load_state_dict(self.progress.loader)
        if self.strength is not None and self.progress.augment is not None:
            self.strength.load_state_dict(self.progress.augment)
        if self.main:
            kimg = self.progress.cur_nimg / 1000
            for path in [self.run_dir / "stats.jsonl", *self.run_dir.glob("metric-*.jsonl")]:
                truncate_jsonl(path, lambda r: r.get("kimg", 0) <= kimg + 1e-9)
        return checkpoint

    # ---------------------------------------------------------------------------------------- one step

    def _micro_batches(self) -> list[tuple[Tensor, Tensor | None]]:
        """The reals of one step's micro-batches, as floats on the device, each with its classes (None if
        the GAN is unconditional)."""
        out: list[tuple[Tensor, Tensor | None]] = []
        device = self.accelerator.device
        for _ in range(self.accum):
            batch = next(self.loader)
            images, classes = batch if isinstance(batch, tuple) else (batch, None)
            out.append((to_float(images, device), None if classes is None else classes.to(device)))
        return out

    def _z(self, real_classes: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Random latents for one micro-batch, with the classes they ask for (None if unconditional); with
        ``train.fake_classes=batch``, the classes of ``real_classes`` (of every other one for mode-seeking
        pairs)."""
        t = self.config.train
        z = torch.randn(self.batch_gpu, self.config.model.z_dim, device=self.accelerator.device)
        if real_classes is not None and t.fake_classes == "batch":
            wanted = real_classes[0::2].repeat_interleave(2) if t.mode_seeking > 0 else real_classes
            z = with_class(z, wanted, self.accelerator.unwrap_model(self.G).class_cdf)
        if t.mode_seeking > 0:  # pairs of codes that ask for the same class (the first coordinate)
            z[1::2, 0] = z[0::2, 0]
        return z, self.classes_of(z)

    def _augment(self, images: Tensor) -> Tensor:
        """What D sees: ``images`` augmented with the current strength (draws from the checkpointed RNG)."""
        if self.strength is None:
            return images
        t = self.config.train
        return augment(images, t.augment, self.strength.p, shift=t.augment_shift)

    def _d_losses(
        self, reals: Tensor, fakes: Tensor, real_classes: Tensor | None = None, fake_classes: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """D's loss on augmented reals and fakes (of the given classes, if conditional), and its logits on both
        (for ADA's sign statistics, the relativistic G loss and LeCam's averages)."""
        real_logits, fake_logits = self._D(reals, real_classes), self._D(fakes, fake_classes)
        return d_loss(self.config.train.loss, real_logits, fake_logits), real_logits, fake_logits

    def _g_loss(
        self,
        fakes: Tensor,
        classes: Tensor | None = None,
        real_logits: Tensor | None = None,
        keep: Tensor | None = None,
    ) -> Tensor:
        """G's loss on augmented fakes (for the relativistic loss with the D phase's real logits; with
        ``keep``, over the fakes D scores highest)."""
        return g_loss(self.config.train.loss, self._D(fakes, classes), real_logits, keep)

    def _D(self, images: Tensor, classes: Tensor | None) -> Tensor:
        """D's logits; an unconditional D is called without classes (DDP's forward takes what it is given)."""
        return self.D(images) if classes is None else self.D(images, classes)

    def _topk_keep(self) -> Tensor | None:
        """How many fakes of a micro-batch count in G's loss now (``train.g_topk``), or None for all."""
        t = self.config.train
        if t.g_topk is None:
            return None
        fraction = max(t.g_topk, t.g_topk_decay ** (self.progress.cur_nimg / len(self.dataset)))
        return torch.tensor(max(1, round(fraction * self.batch_gpu)), device=self.accelerator.device)

    def _compiled_steps(self) -> CompiledSteps | None:
        """The compiled step pieces when ``train.compile`` is on (created on first use), else None.

        The augmentation stays outside (eager), so a compiled run draws the same random numbers as an eager
        one. ``dynamic=False``: the batch per process never changes, so each piece compiles once per grad
        mode (G runs without gradients in the D step).
        """
        t = self.config.train
        if not compiles(t.compile, self.accelerator.device, self.accelerator.num_processes):
            return None
        if self.compiled is None:
            self.log(f"compiling G and D with torch.compile (backend {t.compile_backend}): the first steps are slow")
            options: dict[str, Any] = {"backend": t.compile_backend, "dynamic": False}
            self.compiled = CompiledSteps(
                generate=torch.compile(self.G, **options),
                d_losses=torch.compile(self._d_losses, **options),
                g_loss=torch.compile(self._g_loss, **options),
            )
        return self.compiled

    def _reduce_signs(self, signs_sum: float, count: int) -> tuple[float, int]:
        total = torch.tensor([signs_sum, count], dtype=torch.float64, device=self.accelerator.device)
        total = self.accelerator.reduce(total, reduction="sum")
        return total[0].item(), int(total[1].item())

    def _d_step(self, reals: list[tuple[Tensor, Tensor | None]], do_r1: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """D's gradients over the micro-batches; returns the mean loss, the mean R1 penalty (0 without R1),
        the sum of sign(D(augmented reals)) and D's mean logits on reals and on fakes (a 2-vector), all on
        the device (read once, in :meth:`step`)."""
        acc, t = self.accelerator, self.config.train
        compiled = self._compiled_steps()
        generate = self.G if compiled is None else compiled.generate
        # the R1 penalty is a gradient through D (create_graph) that backward differentiates again, which
        # AOTAutograd-compiled graphs do not support: R1 steps run D eagerly
        d_losses = self._d_losses if compiled is None or do_r1 else compiled.d_losses
        losses, penalties, signs, means = [], [], [], []
        anchors = self.progress.lecam if t.lecam > 0 else None
        self._fakes, self._real_logits = [], []
        self._real_classes = [real_classes for _, real_classes in reals]
        for i, (real, real_classes) in enumerate(reals):
            sync = contextlib.nullcontext() if i == len(reals) - 1 else acc.no_sync(self.D)
            with sync:
                z, fake_classes = self._z(real_classes)
                if t.share_fakes:
                    # kept, with G's graph, for the G step; DDP must not expect G's backward before that (its
                    # gradients are averaged over processes by _average_g_gradients instead)
                    with acc.no_sync(self.G):
                        fake = generate(z)
                    self._fakes.append((fake, fake_classes, z))
                else:
                    with torch.no_grad():
                        fake = generate(z)
                if do_r1:
                    real = real.detach().requires_grad_(True)
                # R1 differentiates through the augmentation; reals are augmented first, then fakes
                loss, real_logits, fake_logits = d_losses(
                    self._augment(real), self._augment(fake.detach()), real_classes, fake_classes
                )
                signs.append(real_logits.detach().sign().sum())
                means.append(torch.stack([real_logits.detach().float().mean(), fake_logits.detach().float().mean()]))
                if anchors is not None:
                    loss = loss + t.lecam * lecam_penalty(real_logits, fake_logits, *anchors)
                if t.loss == "relativistic":
                    self._real_logits.append(real_logits.detach())
                if do_r1:
                    weighted, penalty = r1_loss(real_logits, real, t.r1_gamma, t.r1_interval, _loss_scale(acc))
                    loss = loss + weighted
                    penalties.append(penalty.detach())
                acc.backward(loss / len(reals))
                losses.append(loss.detach())
        penalty = torch.stack(penalties).mean() if penalties else torch.zeros((), device=acc.device)
        return torch.stack(losses).mean(), penalty, torch.stack(signs).sum(), torch.stack(means).mean(dim=0)

    def _g_step(self) -> Tensor:
        """G's gradients over the micro-batches; returns the mean loss as a device scalar."""
        acc = self.accelerator
        compiled = self._compiled_steps()
        generate, loss_of = (self.G, self._g_loss) if compiled is None else (compiled.generate, compiled.g_loss)
        losses = []
        shared, self._fakes = self._fakes, []
        real_logits, self._real_logits = self._real_logits, []
        keep = self._topk_keep()
        self.D.requires_grad_(False)
        try:
            for i in range(self.accum):
                sync = contextlib.nullcontext() if i == self.accum - 1 and not shared else acc.no_sync(self.G)
                with sync, acc.no_sync(self.D):
                    if shared:
                        fake, classes, z = shared[i]
                    else:
                        z, classes = self._z(self._real_classes[i])
                        fake = generate(z)
                    loss = loss_of(self._augment(fake), classes, real_logits[i] if real_logits else None, keep)
                    if self.config.train.mode_seeking > 0:
                        loss = loss + self.config.train.mode_seeking * mode_seeking_penalty(fake, z)
                    acc.backward(loss / self.accum)
                    losses.append(loss.detach())
        finally:
            self.D.requires_grad_(True)
        if shared:
            self._average_g_gradients()
        return torch.stack(losses).mean()

    def _update_lecam(self, real_mean: float, fake_mean: float) -> None:
        """Move LeCam's averages of D's mean logits towards this step's (the first step sets them)."""
        p, decay = self.progress, self.config.train.lecam_decay
        if p.lecam is None:
            p.lecam = [real_mean, fake_mean]
        else:
            p.lecam = [decay * a + (1 - decay) * m for a, m in zip(p.lecam, (real_mean, fake_mean), strict=True)]

    def _average_g_gradients(self) -> None:
        """Average G's gradients over processes in one reduction (what DDP does in backward when G's forward
        ran in sync mode; with shared fakes every G forward runs under ``no_sync``)."""
        if self.accelerator.num_processes == 1:
            return
        grads = [p.grad for p in self.G.parameters() if p.grad is not None]
        flat = self.accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
        for grad, mean in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            grad.copy_(mean.view_as(grad))

    def _sync_buffers(self) -> None:
        """Average the floating-point buffers (batch-norm statistics) of G and D over processes."""
        if self.accelerator.num_processes == 1:
            return
        for module in (self.G, self.D):
            for buffer in self.accelerator.unwrap_model(module).buffers():
                if buffer.is_floating_point():
                    buffer.copy_(self.accelerator.reduce(buffer, reduction="mean"))

    def step(self) -> tuple[dict[str, float | None], bool]:
        """One D update and one G update; returns the losses with D's mean logits on (augmented) reals and
        fakes in its D step, and whether any process was asked to stop."""
        t, p = self.config.train, self.progress
        do_r1 = t.r1_gamma > 0 and p.step % t.r1_interval == 0
        check_grads = t.mixed_precision != "fp16"  # under fp16 the gradient scaler skips inf steps itself
        yes = torch.ones((), dtype=torch.bool)
        # the rate of this step is that at its first image; the last step is the one that ends near 0
        factor = lr_factor(p.cur_nimg, t.kimg, t.lr_rampdown)
        set_learning_rates(self.opt_D, factor)
        set_learning_rates(self.opt_G, factor)
        # each phase reads the device once (losses, the augmentation statistic, finiteness, the stop signal)
        loss_d, r1, signs, means = self._d_step(self._micro_batches(), do_r1)
        if t.lecam > 0 and self.accelerator.num_processes > 1:
            means = self.accelerator.reduce(means, reduction="mean")
        (loss_d, r1, signs, real_mean, fake_mean), (ok_d, no_signal) = _read_phase(
            self.accelerator,
            [loss_d, r1, signs, *means.unbind()],
            [torch.isfinite(loss_d) & (_grads_finite(self.D) if check_grads else yes), self.stop.received is None],
        )
        apply_step(self.opt_D, ok_d, self.accelerator.scaler)
        if t.lecam > 0 and ok_d:
            self._update_lecam(real_mean, fake_mean)
        if t.scs_weight_rms is not None:
            rescale_scs_weights(self.D, t.scs_weight_rms)
        if self.strength is not None:
            self.strength.accumulate(signs, self.batch_gpu * self.accum)
            self.strength.step(t.batch, self._reduce_signs if self.accelerator.num_processes > 1 else None)
            p.augment = self.strength.state_dict()
        loss_g = self._g_step()
        (loss_g,), (ok_g,) = _read_phase(
            self.accelerator, [loss_g], [torch.isfinite(loss_g) & (_grads_finite(self.G) if check_grads else yes)]
        )
        apply_step(self.opt_G, ok_g, self.accelerator.scaler)
        if t.scs_weight_rms is not None:
            rescale_scs_weights(self.G, t.scs_weight_rms)
        self._sync_buffers()
        p.cur_nimg += t.batch
        p.step += 1
        if t.lookahead_k and p.step % t.lookahead_k == 0:
            self._lookahead(t.lookahead_alpha)
        beta = ema_beta(t.batch, t.ema_kimg, p.cur_nimg, t.ema_rampup)
        update_ema(self.G_ema, self.accelerator.unwrap_model(self.G), beta)
        if ok_d and ok_g:
            p.consecutive_bad = 0
        else:
            p.nan_skips += 1
            p.consecutive_bad += 1
        p.loader = self.loader.state_dict()
        losses = {"loss_D": loss_d, "loss_G": loss_g, "r1": r1 if do_r1 else None}
        return {**losses, "logit_real": real_mean, "logit_fake": fake_mean}, not no_signal

    @torch.no_grad()
    def _lookahead(self, alpha: float) -> None:
        """Lookahead-minmax: move the slow weights of G and D a fraction ``alpha`` towards the fast ones, and
        restart the fast ones from there."""
        nets = (self.accelerator.unwrap_model(self.G), self.accelerator.unwrap_model(self.D))
        fast = [q for net in nets for q in net.parameters()]
        torch._foreach_lerp_(self.slow, fast, alpha)
        torch._foreach_copy_(fast, self.slow)

    # ---------------------------------------------------------------------------------- ticks & outputs

    def save_checkpoint(self) -> Path:
        """Save the full training state (collective: every process must call it)."""
        keep = self.config.train.keep_checkpoints
        return save_checkpoint(self.accelerator, self.run_dir, self.G_ema, self.progress, keep, self.slow)

    def _save_fakes(self) -> None:
        if not self.main:
            return
        with torch.no_grad():
            images = torch.cat([self.G_ema(z) for z in self.grid_latents.split(64)])
        path = self.run_dir / f"fakes{nimg_label(self.progress.cur_nimg)}.png"
        keep_previous(path)
        save_image_grid(images, path)
        self.trackers.log_grid("fakes", image_grid(images), self.progress.cur_nimg)

    def _snapshot_path(self) -> Path:
        return self.run_dir / "snapshots" / f"network-snapshot-{nimg_label(self.progress.cur_nimg)}.safetensors"

    def _save_snapshot(self) -> None:
        if self.main:
            extra = {"kimg": self.progress.cur_nimg / 1000, "dataset": self.dataset.summary()}
            keep_previous(self._snapshot_path())
            save_snapshot(self.G_ema, self._snapshot_path(), to_dict(self.config), extra)

    def evaluate_metrics(self) -> None:
        """Compute the configured metrics with G_ema (collective), log them, keep the best snapshot by FID."""
        if self.evaluator is None:
            return
        p = self.progress
        kimg = p.cur_nimg / 1000
        snapshot = self._snapshot_path()
        results = self.evaluator.evaluate(
            self.G_ema, self.config.model.z_dim, self.config.metrics.names, {"kimg": kimg, "snapshot": str(snapshot)}
        )
        if not self.main:
            return
        values = {n: r["value"] for n, r in results.items()}
        for name, record in results.items():
            values.update({f"{name}_{k}": record[k] for k in ("recall", "coverage") if k in record})
            if (record.get("floor") or {}).get("value") is not None:
                values[f"{name}_floor"] = record["floor"]["value"]
        self.trackers.log_metrics(values, p.cur_nimg)
        for name, record in results.items():
            append_jsonl(self.run_dir / f"metric-{name}.jsonl", record)
            self.log(f"{describe(record)} at kimg {kimg:.2f} ({record['seconds']:.0f} s)")
        fids = [r for n, r in results.items() if n.startswith("fid")]
        if fids and snapshot.is_file() and (p.best_fid is None or fids[0]["value"] < p.best_fid):
            p.best_fid = fids[0]["value"]
            best = self.run_dir / "snapshots" / "best.safetensors"
            atomic_write(best, lambda tmp: shutil.copyfile(snapshot, tmp))
            atomic_write_text(best.with_suffix(".json"), json.dumps(fids[0], indent=2))

    def _write_start_files(self) -> None:
        if not self.main:
            return
        atomic_write_text(self.run_dir / "dataset.json", json.dumps(self.dataset.summary(), indent=2))
        count = min(self.config.train.grid_seeds, len(self.dataset))
        reals = torch.stack([self.dataset[int(i)] for i in spread_subset(len(self.dataset), count)])
        save_image_grid(to_float(reals), self.run_dir / "reals.png")

    def _describe_start(self) -> None:
        c, acc = self.config, self.accelerator
        g_params = count_parameters(acc.unwrap_model(self.G))
        d_params = count_parameters(acc.unwrap_model(self.D))
        self.log(f"run directory: {self.run_dir}")
        self.log(self.dataset.summary_line())
        self.log(
            f"generator: {c.model.g.kind}, {g_params:,} parameters; "
            f"discriminator: {c.model.d.kind}, {d_params:,} parameters; "
            + (f"conditional on {c.model.num_classes} classes" if self.conditional else "unconditional")
        )
        self.log(
            f"{acc.num_processes} process(es) on {acc.device.type}, batch {c.train.batch} = {self.batch_gpu} per "
            f"process x {acc.num_processes} x {self.accum} accumulation step(s), mixed precision "
            f"{c.train.mixed_precision}, {c.train.kimg:g} kimg"
        )

    def _tick_record(self, sums: dict[str, list[float]], tick_time: float) -> dict[str, Any]:
        acc, p = self.accelerator, self.progress
        means = {}
        for key, values in sums.items():
            local = torch.tensor([sum(values), float(len(values))], device=acc.device, dtype=torch.float64)
            total = acc.reduce(local, reduction="sum") if acc.num_processes > 1 else local
            means[key] = (total[0] / total[1]).item() if total[1] > 0 else None
        nimg = p.cur_nimg - p.tick_start_nimg
        return {
            "tick": p.tick,
            "kimg": p.cur_nimg / 1000,
            "step": p.step,
            "time_s": round(p.elapsed_s, 3),
            "sec_per_tick": round(tick_time, 3),
            "sec_per_kimg": round(tick_time / max(nimg / 1000, 1e-9), 3),
            "images_per_s": round(nimg / max(tick_time, 1e-9), 1),
            "peak_mem_mb": round(peak_memory_mb(acc.device), 1),
            "nan_skips": p.nan_skips,
            **means,
            **({"augment_p": self.strength.p, "ada_rt": self.strength.rt} if self.strength is not None else {}),
            **layer_stats({"G": acc.unwrap_model(self.G), "D": acc.unwrap_model(self.D)}),
        }

    def _log_tick(self, record: dict[str, Any]) -> None:
        self.log(
            f"tick {record['tick']:<4d} kimg {record['kimg']:<8.2f} time {record['time_s']:<8.1f} "
            f"sec/kimg {record['sec_per_kimg']:<7.2f} img/s {record['images_per_s']:<8.1f} "
            f"loss_D {_fmt(record['loss_D'])} loss_G {_fmt(record['loss_G'])} r1 {_fmt(record.get('r1'))} "
            f"nan_skips {record['nan_skips']}"
            + (f" augment_p {record['augment_p']:.3f}" if "augment_p" in record else "")
        )

    # -------------------------------------------------------------------------------------------- run

    def run(self) -> Path:
        """Train until ``train.kimg``; returns the run directory."""
        t, p = self.config.train, self.progress
        total_nimg = int(t.kimg * 1000)
        self._describe_start()
        if self.checkpoint is not None:
            self.log(f"resumed from {self.checkpoint} at kimg {p.cur_nimg / 1000:.2f}")
            for change in self.resume_changes:
                self.log(f"changed on resume: {change}")
        else:
            self._write_start_files()
            self._save_fakes()
        sums: dict[str, list[float]] = {k: [] for k in ("loss_D", "loss_G", "r1", "logit_real", "logit_fake")}
        bar = tqdm(
            total=t.kimg,
            initial=p.cur_nimg / 1000,
            unit="kimg",
            disable=not (self.main and t.progress),
            dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {n:.2f}/{total:g} kimg [{elapsed}<{remaining}{postfix}]",
        )
        if not bar.disable:
            self.log.printer = bar.write
        tick_start = time.perf_counter()
        try:
            with self.stop:
                while p.cur_nimg < total_nimg:
                    step_start = time.perf_counter()
                    losses, stop_requested = self.step()
                    p.elapsed_s += time.perf_counter() - step_start
                    for key in sums:
                        if losses[key] is not None and math.isfinite(losses[key]):
                            sums[key].append(losses[key])
                    bar.update(t.batch / 1000)
                    if p.consecutive_bad >= t.nan_patience:
                        path = self.save_checkpoint()
                        raise TrainingStopped(
                            f"training diverged: {p.consecutive_bad} steps in a row had non-finite losses or "
                            f"gradients (kimg {p.cur_nimg / 1000:.2f}); the state is saved in {path}; lower the "
                            "learning rates, set train.r1_gamma, or use train.mixed_precision=no",
                            3,
                        )
                    done = p.cur_nimg >= total_nimg
                    if done or stop_requested or p.cur_nimg >= p.tick_start_nimg + t.tick_kimg * 1000:
                        record = self._tick_record(sums, time.perf_counter() - tick_start)
                        self.trackers.log_stats(record, p.cur_nimg)
                        if self.main:
                            append_jsonl(self.run_dir / "stats.jsonl", record)
                            self._log_tick(record)
                            bar.set_postfix_str(
                                f"img/s {record['images_per_s']:.0f} D {_fmt(record['loss_D'])} "
                                f"G {_fmt(record['loss_G'])}"
                            )
                        p.tick += 1
                        p.tick_start_nimg = p.cur_nimg
                        sums = {k: [] for k in sums}
                        every = self.config.metrics.every_ticks
                        if done or p.tick % t.snapshot_ticks == 0 or (every and p.tick % every == 0):
                            self._save_fakes()
                            self._save_snapshot()
                        if done or (every and p.tick % every == 0):
                            self.evaluate_metrics()
                        if done or stop_requested or p.tick % t.checkpoint_ticks == 0:
                            path = self.save_checkpoint()
                        tick_start = time.perf_counter()
                    if stop_requested:
                        raise TrainingStopped(
                            f"stopped by {self.stop.name} at kimg {p.cur_nimg / 1000:.2f}; the state is saved in "
                            f"{path}; continue with: scs-gan train --resume {self.run_dir}",
                            self.stop.exit_code,
                        )
        finally:
            bar.close()
            self.log.printer = None
        self._finish()
        return self.run_dir

    def _finish(self) -> None:
        acc = self.accelerator
        in_sync = replicas_identical(acc, [acc.unwrap_model(self.G), acc.unwrap_model(self.D)])
        if self.main:
            summary = {
                "kimg": self.progress.cur_nimg / 1000,
                "steps": self.progress.step,
                "train_seconds": round(self.progress.elapsed_s, 1),
                "nan_skips": self.progress.nan_skips,
                "processes": acc.num_processes,
                "replicas_identical": in_sync,
                "snapshot": str(self._snapshot_path()),
            }
            atomic_write_text(self.run_dir / "final.json", json.dumps(summary, indent=2))
        self.log(f"replicas identical across {acc.num_processes} process(es): {'yes' if in_sync else 'NO'}")
        self.log(f"done: {self.run_dir}")

    def close(self) -> None:
        """Free the prepared objects before ending (avoids gloo aborting at exit), end the trackers, unlock."""
        self.log.close()
        for name in ("compiled", "G", "D", "opt_G", "opt_D", "G_ema", "loader"):
            if hasattr(self, name):
                delattr(self, name)
        self.accelerator.free_memory()
        gc.collect()
        self.accelerator.end_training()
        if self.lock is not None:
            self.lock.release()


def train(config: RunConfig, resume: str | None = None, given: set[str] | None = None) -> Path:
    """Train ``config`` (or resume a run, see :class:`Trainer`) and return its run directory."""
    trainer = Trainer(config, resume, given)
    try:
        return trainer.run()
    finally:
        trainer.close()
