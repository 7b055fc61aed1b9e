"""FID and KID with the standard TF-Inception features through torchmetrics, offline and distributed."""
