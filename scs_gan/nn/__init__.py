"""The shared SCS layer module: sharpened cosine similarity layers and MaxAbsPool, with functional forms.

>>> import torch
>>> from scs_gan.nn import SCS2d
>>> layer = SCS2d(3, 16, kernel_size=3, padding=1)
>>> layer(torch.randn(2, 3, 8, 8)).shape
torch.Size([2, 16, 8, 8])
"""

from . import functional
from .modules import (
    MaxAbsPool2d,
    SCS2d,
    SCSTranspose2d,
    SharpenedCosineSimilarity2d,
    SharpenedCosineSimilarityTranspose2d,
)

__all__ = [
    "MaxAbsPool2d",
    "SCS2d",
    "SCSTranspose2d",
    "SharpenedCosineSimilarity2d",
    "SharpenedCosineSimilarityTranspose2d",
    "functional",
]
