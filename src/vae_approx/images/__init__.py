"""Faces experiment: a DCGAN generator as the ground-truth decoder, encoder pretraining by
conditional likelihood, joint training by ELBO, and the decoder's drift (ELBO up, FID up).

data.py      the uint8 image arrays (digits, CelebA from its zip), downloads
model.py     DCGAN generator/discriminator, encoder, Gaussian log-densities and the ELBO
train.py     GAN training, encoder pretraining and joint training, with resume
metrics.py   Frechet distances (Inception FID, digits-classifier fd_digits), the classifier
evaluate.py  image sets, held-out ELBOs, decoder drift, grids
__main__.py  the stage command line: python -m vae_approx.images <stage> ...
"""
