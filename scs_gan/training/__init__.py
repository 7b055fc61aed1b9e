"""Training: the run configuration, the loop, losses, EMA, checkpoints and the run directory.

config.py      RunConfig (data + model + train + metrics options), loading and the resume merge
trainer.py     the loop: D and G steps, ticks, samples, snapshots, metrics (``train``)
losses.py      the GAN losses and the lazy R1 penalty
ema.py         the generator's moving average
checkpoint.py  where a run is (Progress), resumable checkpoints, replica checks
rundir.py      the run directory: numbering, log, stats lines, the lock
signals.py     Ctrl-C/SIGTERM as a request to stop with the state saved
stats.py       per-tick statistics of the SCS layers and memory
trackers.py    wandb and TensorBoard through Accelerate
bench.py       ``scs-gan bench train``
"""

from .config import RunConfig, load_config
from .trainer import Trainer, TrainingStopped, train

__all__ = ["RunConfig", "Trainer", "TrainingStopped", "load_config", "train"]
