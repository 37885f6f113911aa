"""Gaussian-mixture experiment: exact ELBO with a factorized or a consistent encoder."""
