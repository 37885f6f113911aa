"""Faces experiment: a DCGAN generator as the ground-truth decoder, encoder pretraining by
conditional likelihood, joint training by ELBO, and the decoder's drift (ELBO up, FID up).

settings.py  torch-free: the protocol's factors, allowed values, each stage's config keys, run identities, paths
data.py      the uint8 image arrays (digits, CelebA from its zip), downloads, the Inception weights' check
model.py     DCGAN generator/discriminator, encoder, Gaussian log-densities and the ELBO, the digits classifier
train.py     the classifier's, the GAN's, pretraining's and joint training's loops, with resume
evaluate.py  Frechet distances (Inception FID, digits-classifier fd_digits), image sets, held-out ELBOs,
             decoder drift, the ground-truth generator's choice, grids
plots.py     the training curves over seeds
results.py   records -> the results table, the ablation table, their claims
__main__.py  the stage command line: python -m vae_approx.images <stage> ...
"""
