"""vae-approx."""
