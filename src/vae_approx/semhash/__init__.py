"""Semantic hashing experiment: 20 Newsgroups bag of words, Bernoulli VAE, DisARM/ARM gradients."""
