"""Networks and Gaussian log-densities of the faces experiment.

The ground-truth decoder is the generator g of a DCGAN (the PyTorch DCGAN tutorial,
https://pytorch.org/tutorials/beginner/dcgan_faces_tutorial.html) made probabilistic with
isotropic pixel noise: p(x|z) = N(x; g(z), sigma^2 I), p(z) = N(0, I). The encoder is the
discriminator's body with a last convolution to 2*nz outputs, q(z|x) = N(z; mu(x), diag s(x)^2).

Image size, channels and widths are parameters, so the same code serves 64x64x3 CelebA
(the paper: nz 100, ngf = ndf = 64) and 32x32x1 digits: a 32x32 network has one up- (down-)
sampling block fewer than a 64x64 one. The digits classifier, whose features give the quick
presets' Frechet distance (fd_digits), is here too. Every log-density is a sum over an image's pixels
(or a code's dimensions), never a mean, as in both papers: the published ELBOs
(-19072 after encoder pretraining, +5137 after joint training, Kyrylov et al. 2023, Table 1)
are nats per 64x64x3 image with sigma 0.05.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn

from ..common import InputError, load_torch
from .settings import FACTORS

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)  # log sqrt(2 pi) = 0.91894; the reference rounds it to 0.9189


# ---------------------------------------------------------------- networks


def _check_size(image_size: int) -> int:
    """Number of stride-2 blocks between 4x4 and image_size/2: 3 for 64, 2 for 32."""
    if image_size < 16 or image_size & (image_size - 1):
        raise ValueError(f"image size must be a power of two >= 16, got {image_size}")
    return int(math.log2(image_size)) - 3


def weights_init(module: nn.Module) -> None:
    """The tutorial's initialisation: convolutions N(0, 0.02), BatchNorm scales N(1, 0.02), shifts 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """DCGAN generator: z [B, nz] (or [B, nz, 1, 1]) -> image [B, channels, size, size] in (-1, 1).

    64x64: nz -> 8ngf@4x4 -> 4ngf@8 -> 2ngf@16 -> ngf@32 -> channels@64 (the tutorial);
    32x32: nz -> 4ngf@4x4 -> 2ngf@8 -> ngf@16 -> channels@32.
    """

    def __init__(self, nz: int, ngf: int, channels: int, image_size: int):
        super().__init__()
        blocks = _check_size(image_size)
        self.nz, self.ngf, self.channels, self.image_size = nz, ngf, channels, image_size
        mult = 2 ** blocks
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, ngf * mult, 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(ngf * mult), nn.ReLU(True)]
        for _ in range(blocks):
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ngf * mult // 2), nn.ReLU(True)]
            mult //= 2
        layers += [nn.ConvTranspose2d(ngf, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.apply(weights_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        return self.main(z)


def _body(channels: int, ndf: int, image_size: int) -> tuple[nn.Sequential, int]:
    """The discriminator's convolutions down to 4x4: returns the body and its output channels."""
    blocks = _check_size(image_size)
    layers: list[nn.Module] = [nn.Conv2d(channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    width = ndf
    for _ in range(blocks):
        layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2),
                   nn.LeakyReLU(0.2, inplace=True)]
        width *= 2
    return nn.Sequential(*layers), width


class Discriminator(nn.Module):
    """DCGAN discriminator: image -> one logit per image, [B].

    The tutorial ends in a Sigmoid and trains with BCELoss; returning the logit and training
    with BCEWithLogitsLoss is the same objective, computed without overflow in log(1 - D).
    """

    def __init__(self, ndf: int, channels: int, image_size: int):
        super().__init__()
        self.body, width = _body(channels, ndf, image_size)
        self.head = nn.Conv2d(width, 1, 4, 1, 0, bias=False)
        self.apply(weights_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).flatten()


class Encoder(nn.Module):
    """q(z|x) = N(mu(x), diag exp(2 log_sigma(x))): the discriminator body + a 4x4 convolution to 2*nz.

    The body has the tutorial's initialisation. The last layer starts at zero (weights and
    bias) with `last_init="zero"`, so training starts from q(z|x) = N(0, I) for every x, as the
    protocol says; `last_init="normal"` is what the reference code ends with: its encoder class
    zeroes the layer and its script's `weights_init` then redraws every convolution's weights
    from N(0, 0.02), leaving the bias at zero.
    """

    def __init__(self, nz: int, ndf: int, channels: int, image_size: int, last_init: str):
        super().__init__()
        if last_init not in FACTORS["encoder_init"].values:
            raise ValueError(f"unknown last-layer initialisation '{last_init}'; expected one of "
                             f"{FACTORS['encoder_init'].values}")
        self.nz, self.ndf, self.channels, self.image_size = nz, ndf, channels, image_size
        self.body, width = _body(channels, ndf, image_size)
        self.body.apply(weights_init)
        self.last = nn.Conv2d(width, 2 * nz, 4, 1, 0, bias=True)
        nn.init.zeros_(self.last.bias)
        zero, _ = FACTORS["encoder_init"].values  # zero or normal
        if last_init == zero:
            nn.init.zeros_(self.last.weight)
        else:
            nn.init.normal_(self.last.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (mu, log_sigma), each [B, nz]."""
        out = self.last(self.body(x)).flatten(1)
        return out[:, : self.nz], out[:, self.nz:]


class GaussianDecoder(nn.Module):
    """p(x|z) = N(x; g(z), sigma^2 I) with the generator g; sigma fixed (a buffer) or learned.

    log sigma is stored (one scalar for all pixels); with `learn_sigma` it is a parameter that
    joint training optimises, starting from the ground truth's sigma (the original paper's
    second variant), else a buffer.
    """

    def __init__(self, generator: Generator, sigma: float, learn_sigma: bool = False):
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.generator = generator
        self.learn_sigma = learn_sigma
        log_sigma = torch.tensor(math.log(sigma))
        if learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    @property
    def sigma(self) -> float:
        return float(self.log_sigma.detach().exp())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The mean g(z)."""
        return self.generator(z)

    def sample(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x = g(z) + sigma * eps, eps ~ N(0, I)."""
        mean = self.generator(z)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + self.log_sigma.exp() * noise


# ---------------------------------------------------------------- Gaussian log-densities


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, sigma^2) = -log sigma - (x - mean)^2 / (2 sigma^2) - log sqrt(2 pi)."""
    return -log_sigma - 0.5 * ((x - mean) * torch.exp(-log_sigma)) ** 2 - LOG_SQRT_2PI


def log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """log N(x; g(z), sigma^2 I) summed over an image's pixels: [B, C, H, W] -> [B]."""
    return gaussian_log_density(x, mean, log_sigma).flatten(1).sum(1)


def log_q(z: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """log q(z|x) = sum_i log N(z_i; mu_i(x), s_i(x)^2): [B, nz] -> [B]."""
    return gaussian_log_density(z, mu, log_sigma).sum(1)


def kl_to_standard_normal(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag s^2) || N(0, I)) = 1/2 sum_i (s_i^2 + mu_i^2 - 1 - 2 log s_i): [B, nz] -> [B]."""
    return 0.5 * (torch.exp(2 * log_sigma) + mu ** 2 - 1 - 2 * log_sigma).sum(1)


def reparameterize(mu: torch.Tensor, log_sigma: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mu + s * eps, eps ~ N(0, I), differentiable in mu and s."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(log_sigma) * eps


def elbo_terms(x: torch.Tensor, encoder: Encoder, decoder: GaussianDecoder,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction, KL) per image, [B] each; ELBO = reconstruction - KL.

    As in the reference code: one reparameterised sample z ~ q(z|x) estimates
    E_q[log p(x|z)] (summed over pixels), and KL(q(z|x) || p(z)) is analytic.
    """
    mu, log_s = encoder(x)
    z = reparameterize(mu, log_s, generator)
    mean = decoder(z)
    return log_likelihood(x, mean, decoder.log_sigma), kl_to_standard_normal(mu, log_s)


def elbo(x: torch.Tensor, encoder: Encoder, decoder: GaussianDecoder,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """The ELBO per image, [B] (nats): E_q[log p(x|z)] - KL(q(z|x) || N(0, I)), one sample of z."""
    rec, kl = elbo_terms(x, encoder, decoder, generator)
    return rec - kl


# ---------------------------------------------------------------- model files


def generator_spec(g: Generator) -> dict:
    return {"nz": g.nz, "ngf": g.ngf, "channels": g.channels, "image_size": g.image_size}


def encoder_spec(e: Encoder) -> dict:
    return {"nz": e.nz, "ndf": e.ndf, "channels": e.channels, "image_size": e.image_size}


def build_generator(spec: dict, state: dict | None = None) -> Generator:
    g = Generator(spec["nz"], spec["ngf"], spec["channels"], spec["image_size"])
    if state is not None:
        g.load_state_dict(state)
    return g


def build_encoder(spec: dict, state: dict) -> Encoder:
    # the state replaces every weight, so the last layer's initialisation does not matter
    e = Encoder(spec["nz"], spec["ndf"], spec["channels"], spec["image_size"], FACTORS["encoder_init"].corrected)
    e.load_state_dict(state)
    return e


def pretrained_file(encoder: Encoder, g: Generator, generator_epoch: int, settings: dict) -> dict:
    """What pretrain saves: the encoder, the generator's spec and epoch, sigma and decoder_bn (joint checks them)."""
    return {"kind": "pretrained encoder", "encoder_spec": encoder_spec(encoder), "encoder": encoder.cpu().state_dict(),
            "generator_spec": generator_spec(g), "generator_epoch": generator_epoch, "sigma": settings["sigma"],
            "decoder_bn": settings["decoder_bn"], "settings": settings}


def joint_file(encoder: Encoder, g: Generator, decoder: GaussianDecoder, settings: dict) -> dict:
    """What joint saves: the jointly trained encoder and decoder."""
    return {"kind": "joint vae", "encoder_spec": encoder_spec(encoder), "encoder": encoder.cpu().state_dict(),
            "generator_spec": generator_spec(g), "decoder": decoder.cpu().state_dict(),
            "learn_sigma": settings["learn_sigma"], "sigma_truth": settings["sigma"], "settings": settings}


def load_generator(path) -> tuple[dict, Generator]:
    saved = load_torch(path, "generator")
    if not isinstance(saved, dict) or saved.get("kind") != "dcgan generator":
        raise InputError(f"generator {path}: not a generator file (written by train-gan or choose-generator)")
    return saved, build_generator(saved["spec"], saved["state"]).eval()


def load_pretrained(path) -> tuple[dict, Encoder]:
    saved = load_torch(path, "pretrained encoder")
    if not isinstance(saved, dict) or saved.get("kind") != "pretrained encoder":
        raise InputError(f"pretrained encoder {path}: not an encoder file (written by pretrain)")
    return saved, build_encoder(saved["encoder_spec"], saved["encoder"]).eval()


def load_joint(path) -> tuple[dict, Encoder, GaussianDecoder]:
    saved = load_torch(path, "jointly trained VAE")
    if not isinstance(saved, dict) or saved.get("kind") != "joint vae":
        raise InputError(f"jointly trained VAE {path}: not a joint model file (written by joint)")
    encoder = build_encoder(saved["encoder_spec"], saved["encoder"]).eval()
    decoder = GaussianDecoder(build_generator(saved["generator_spec"]), 1.0, saved["learn_sigma"])
    decoder.load_state_dict(saved["decoder"])
    return saved, encoder, decoder.eval()


def check_same(spec_a: dict, spec_b: dict, what: str, keys=("nz", "channels", "image_size")) -> None:
    """Two model files' specs agree in `keys`; else an InputError naming `what`."""
    for key in keys:
        if spec_a[key] != spec_b[key]:
            raise InputError(f"{what}: {key} {spec_a[key]} does not match {spec_b[key]}")


def check_pretrained(saved: dict, path, g: Generator, generator, decoder_bn: str) -> None:
    """The pretrained encoder file `saved` (from `path`) is of generator g (from `generator`) and was pretrained with
    decoder BatchNorm `decoder_bn`, the mode joint training is asked for: both stages of a protocol use one."""
    check_same(saved["generator_spec"], generator_spec(g), f"pretrained encoder {path} vs generator {generator}",
               ("nz", "ngf", "channels", "image_size"))
    if saved["decoder_bn"] != decoder_bn:
        raise InputError(f"joint --run decoder_bn {decoder_bn}: the pretrained encoder {path} was trained with decoder "
                         f"BatchNorm {saved['decoder_bn']}; both stages of a protocol use one mode")


def epoch_files(directory) -> dict[int, Path]:
    """train-gan's generator files epoch_NNN.pt, by epoch."""
    directory = Path(directory)
    files = {int(p.stem.split("_")[1]): p for p in directory.glob("epoch_*.pt")} if directory.is_dir() else {}
    if not files:
        raise InputError(f"{directory}: no generator files epoch_NNN.pt (written by train-gan)")
    return dict(sorted(files.items()))


# ---------------------------------------------------------------- the digits classifier


class DigitsClassifier(nn.Module):
    """Three 3x3 convolution blocks, global average pooling (the features), a linear head.

    The features are the pooled output of the last block (4 * width values), the
    counterpart of Inception's pool3 features that FID uses.
    """

    def __init__(self, channels: int, width: int, n_classes: int):
        super().__init__()
        self.channels, self.width, self.n_classes = channels, width, n_classes
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(True), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(True), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * w, n_classes)

    @property
    def feature_dim(self) -> int:
        return 4 * self.width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def classifier_file(model: DigitsClassifier) -> dict:
    return {"kind": "digits classifier", "channels": model.channels, "width": model.width,
            "n_classes": model.n_classes, "state": model.state_dict()}


def load_classifier(path) -> DigitsClassifier:
    saved = load_torch(path, "digits classifier")
    if not isinstance(saved, dict) or saved.get("kind") != "digits classifier":
        raise InputError(f"digits classifier {path}: not a classifier file")
    model = DigitsClassifier(saved["channels"], saved["width"], saved["n_classes"])
    model.load_state_dict(saved["state"])
    return model.eval()
