"""FID, KID, precision/recall, density/coverage and IS on the standard TF-Inception features, offline and
distributed."""
