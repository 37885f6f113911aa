"""The faces protocol's factors: each switch does what the reference code does for that factor,
`reference_protocol` sets all of them, and our FID is pytorch-fid's own on the same files."""

import copy
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import config_section

from vae_approx.common import Progress
from vae_approx.config import stage_json, stage_section
from vae_approx.images import settings as S
from vae_approx.images.__main__ import main
from vae_approx.images.evaluate import Models, image_batches, one_at_a_time, write_sets
from vae_approx.images.model import Encoder, GaussianDecoder, Generator, weights_init
from vae_approx.images.settings import IMAGE_SETS as SETS
from vae_approx.images.settings import VaeSettings
from vae_approx.images.train import EMA_DECAY, ground_truth, train_vae

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
NZ = 4
CORRECTED_SAMPLING = {name: S.FACTORS[name].corrected for name in S.SAMPLING_FACTORS}


def quiet():
    return Progress("test", 10, 1, stream=io.StringIO())


def random_running_stats(*models):
    """Running statistics unlike any batch's, so eval and training mode differ visibly."""
    for m in models:
        for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)


def tiny_models(seed=0, same_decoder=False):
    torch.manual_seed(seed)
    truth = ground_truth(Generator(NZ, 4, 1, 32), 0.05)
    with torch.no_grad():  # images that vary visibly with z (the initial last layer gives about +-0.005)
        truth.generator.main[-2].weight.mul_(50)
    pre, enc = Encoder(NZ, 4, 1, 32, "normal"), Encoder(NZ, 4, 1, 32, "normal")
    random_running_stats(truth, pre, enc)
    joint = GaussianDecoder(copy.deepcopy(truth.generator), 0.05)
    if not same_decoder:  # a joint decoder that moved away from the truth
        with torch.no_grad():
            for p in joint.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return Models(truth, pre, enc, joint).eval(CPU, False)


def batches(models, n, batch, seed, **factors):
    """image_batches with the corrected protocol's sampling factors and fp32, but for `factors`."""
    return image_batches(models, n, batch, seed, CPU, **{**CORRECTED_SAMPLING, "bf16": False, **factors})


def sets(models, n=6, batch=6, seed=3, **factors):
    return {k: torch.cat(v) for k, v in _stack(batches(models, n, batch, seed, **factors)).items()}


def _stack(batches):
    out = {name: [] for name in SETS}
    for b in batches:
        for name in SETS:
            out[name].append(b[name])
    return out


def first_draws(n, seed=3):
    """The first random numbers image_batches draws for a batch of n: z_ref, then z_other."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((n, NZ), generator=gen), torch.randn((n, NZ), generator=gen)


# ---------------------------------------------------------------- the factors and reference_protocol


def test_reference_protocol_sets_every_factor_and_the_schema_knows_each_value():
    config = config_section("images")
    assert S.configured_protocol(config) == S.corrected() == config["protocol"]  # the default is the corrected one
    assert S.configured_protocol({**config, "reference_protocol": True}) == S.reference()
    assert all(S.reference()[name] != S.corrected()[name] for name in S.FACTORS)
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    images = schema["properties"]["images"]["properties"]
    assert {name: tuple(spec["enum"]) for name, spec in images["protocol"]["properties"].items()} == {
        name: f.values for name, f in S.FACTORS.items()}
    assert tuple(images["ablation"]["properties"]["rows"]["items"]["enum"]) == S.ABLATION_ROWS
    assert tuple(images["sigma_variants"]["items"]["enum"]) == S.SIGMA_VARIANTS
    assert S.ALLOWED["protocol.pixel_noise"] == S.FACTORS["pixel_noise"].values
    # an ablation row flips exactly its factor; reference flips all
    for row in S.FACTORS:
        flipped = {k for k, v in S.ablation_protocol(row).items() if v != S.corrected()[k]}
        assert flipped == {row}
    # the path templates' wildcards are the identity columns, one folder level per part of the identity, and
    # their paths stay those of earlier versions
    assert S.wildcards(S.TRAINED) == tuple(S.TRAINED_RUN) and S.wildcards(S.JOINT) == tuple(S.JOINT_RUN)
    assert S.wildcards(S.SAMPLED) == tuple(S.SAMPLED_RUN)
    assert all(set(S.wildcards(template)) <= set(S.SAMPLED_RUN) for template in S.PATHS.values())
    run = S.identity(3, S.reference(), "learned")
    assert S.path("results/x", "fid").format(**run) == (
        "results/x/images/seed3/bn-train_init-normal/sigma-learned/sampling-train_batch1_noise-joint_z-shared/fid.csv")
    assert S.SAMPLED.format(**run) == "seed3/bn-train_init-normal/sigma-learned/" \
        "sampling-train_batch1_noise-joint_z-shared"
    values = {v for allowed in S.SAMPLED_RUN.values() if allowed is not int for v in allowed}
    for name, pattern in S.wildcard_constraints().items():  # a wildcard takes exactly its allowed values
        assert {v for v in values if re.fullmatch(pattern, v)} == set(S.SAMPLED_RUN[name])
    assert "training mode, one image at a time" in S.describe(S.reference())
    assert S.describe(S.corrected()).startswith("the corrected protocol")


def test_the_paper_preset_picks_the_reproductions_generator():
    """The reproduction kept generator-44.pt, which its script saves after its 0-based epoch 44, i.e.
    after 45 epochs; generator_epoch counts completed epochs (train-gan's epoch_045.pt)."""
    reference_file_epoch = 44  # train_celeba_01_gan.py: for epoch in range(num_epochs): ... f"generator-{epoch}.pt"
    paper = config_section("images", "paper.yaml")
    assert paper["generator_epoch"] == reference_file_epoch + 1
    assert S.configured_protocol(paper) == S.corrected()  # the main paper run: the corrected protocol
    assert "reference" in paper["ablation"]["rows"] and "corrected" in paper["ablation"]["rows"]


def test_a_gan_epoch_file_holds_the_generator_after_that_many_epochs(tmp_path):
    from vae_approx.images.settings import GanSettings
    from vae_approx.images.train import train_gan

    images = np.random.default_rng(0).integers(0, 256, (12, 1, 32, 32), dtype=np.uint8)
    settings = GanSettings(epochs=2, batch_size=6, lr=2e-4, beta1=0.5, nz=4, ngf=4, ndf=4, seed=1, checkpoint_every=100,
                           log_every=10)
    train_gan(images, settings, tmp_path / "two", CPU, None, quiet())
    train_gan(images, GanSettings(**{**settings.__dict__, "epochs": 1}), tmp_path / "one", CPU, None, quiet())
    one, two = (torch.load(tmp_path / d / "epoch_001.pt", weights_only=False) for d in ("one", "two"))
    assert one["epoch"] == two["epoch"] == 1
    assert all(torch.equal(one["state"][k], two["state"][k]) for k in one["state"])  # after exactly 1 epoch
    last = torch.load(tmp_path / "two" / "epoch_002.pt", weights_only=False)
    assert not all(torch.equal(one["state"][k], last["state"][k]) for k in one["state"])


# ---------------------------------------------------------------- sampling factors


def test_train_batch1_normalises_each_image_by_its_own_statistics():
    models = tiny_models()
    before = {k: v.clone() for k, v in models.truth.state_dict().items()}
    drawn = sets(models, sampling="train_batch1")
    z_ref, _ = first_draws(6)
    net = copy.deepcopy(models.truth).train()
    alone = torch.cat([net(z_ref[i:i + 1]) for i in range(6)])
    assert torch.allclose(drawn["ground_truth"], alone, atol=1e-6)
    # not what eval mode or a training-mode batch gives
    with torch.no_grad():
        assert not torch.allclose(drawn["ground_truth"], models.truth(z_ref), atol=1e-3)
        assert not torch.allclose(drawn["ground_truth"], net(z_ref), atol=1e-3)
        # each image is independent of the others: the first alone equals the first among six
        assert torch.allclose(net(z_ref[:1]), alone[:1], atol=1e-6)
    assert all(torch.equal(v, models.truth.state_dict()[k]) for k, v in before.items())  # running stats untouched
    assert models.truth.training is False
    batched = sets(models, sampling="eval")
    assert torch.allclose(batched["ground_truth"], models.truth(z_ref), atol=1e-6)


def test_one_at_a_time_stacks_tuples_as_a_batch_would():
    enc = Encoder(NZ, 4, 1, 32, "normal").train()
    x = torch.randn(3, 1, 32, 32)
    mu, log_s = one_at_a_time(enc)(x)
    assert mu.shape == log_s.shape == (3, NZ)
    assert torch.allclose(mu[1:2], enc(x[1:2])[0], atol=1e-6)


def test_shared_z_pairing_draws_the_data_from_the_reference_sets_z():
    # with a joint decoder equal to the truth, the joint decoder's prior set at z_x is the truth at z_x
    models = tiny_models(same_decoder=True)
    shared, independent = sets(models, z_pairing="shared"), sets(models, z_pairing="independent")
    assert torch.allclose(shared["joint_prior"], shared["ground_truth"], atol=1e-6)
    assert torch.allclose(independent["joint_prior"], independent["ground_truth_resample"], atol=1e-6)
    assert not torch.allclose(independent["joint_prior"], independent["ground_truth"], atol=1e-3)
    # the same draws either way: the two reference sets and the floor are identical
    for name in ("ground_truth", "ground_truth_resample"):
        assert torch.equal(shared[name], independent[name])
    # shared: a reconstruction of a noisy copy of the reference image is nearer it than an independent one
    models = tiny_models()
    shared, independent = sets(models, n=64, batch=64, z_pairing="shared"), sets(models, n=64, batch=64)
    near = (shared["pretrained_reconstruction"] - shared["ground_truth"]).pow(2).mean()
    far = (independent["pretrained_reconstruction"] - independent["ground_truth"]).pow(2).mean()
    assert near < far


@pytest.mark.parametrize("noise,noisy", [("joint", {"joint_reconstruction"}), ("every", set(SETS))])
def test_pixel_noise_goes_on_the_sets_it_names(noise, noisy):
    models = tiny_models()
    plain, with_noise = sets(models, n=200, batch=100), sets(models, n=200, batch=100, pixel_noise=noise)
    for name in SETS:
        diff = with_noise[name] - plain[name]
        if name in noisy:
            assert diff.std().item() == pytest.approx(0.05, rel=0.05), name  # sigma * eps
        else:
            assert torch.equal(diff, torch.zeros_like(diff)), name


def test_unknown_sampling_values_are_refused():
    with pytest.raises(ValueError, match="batch2"):
        sets(tiny_models(), sampling="batch2")


def test_the_sets_are_stored_as_memory_mappable_uint8_files(tmp_path):
    models = tiny_models()
    write_sets(batches(models, 10, 4, 3), 10, tmp_path)
    for name in SETS:
        array = np.load(tmp_path / f"{name}.npy", mmap_mode="r")
        assert array.shape == (10, 1, 32, 32) and array.dtype == np.uint8
    assert not list(tmp_path.glob(".*tmp"))
    # a generator that stops early leaves no set behind
    def broken():
        yield next(batches(models, 10, 4, 3))
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError, match="killed"):
        write_sets(broken(), 10, tmp_path / "broken")
    assert not list((tmp_path / "broken").iterdir())


# ---------------------------------------------------------------- training factors


def vae_settings(phase, **kw):
    base = dict(phase=phase, iterations=3, batch_size=6, lr=1e-3, beta1=0.5, sigma=0.05, seed=0, log_every=1,
                checkpoint_every=100, ndf=4, learn_sigma=False, channels_last=False, bf16=False, bn_batches=0,
                decoder_bn="eval", encoder_init="zero")
    return VaeSettings(**{**base, **kw})


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_decoder_bn_train_normalises_training_batches_by_their_own_statistics(mode):
    truth = tiny_models().truth
    stats = {k: v.clone() for k, v in truth.state_dict().items() if "running" in k}
    _, encoder, _ = train_vae(truth, Encoder(NZ, 4, 1, 32, "zero"), vae_settings("pretrain", decoder_bn=mode), CPU,
                              None, quiet())
    moved = any(not torch.equal(truth.state_dict()[k], v) for k, v in stats.items())
    assert moved == (mode == "train")  # only training mode updates the running statistics from the batches
    truth = tiny_models().truth
    _, _, decoder = train_vae(truth, encoder, vae_settings("joint", decoder_bn=mode), CPU, None, quiet())
    state = decoder.state_dict()
    moved = any(not torch.equal(state[k], v) for k, v in stats.items())
    assert moved == (mode == "train")


def test_encoder_init_normal_is_the_reference_scripts_weights_init():
    torch.manual_seed(0)
    zero, normal = Encoder(NZ, 8, 1, 32, "zero"), Encoder(NZ, 8, 1, 32, "normal")
    assert torch.count_nonzero(zero.last.weight) == 0 and torch.count_nonzero(zero.last.bias) == 0
    # the reference: the class zeroes the layer, then weights_init redraws every Conv weight from N(0, 0.02)
    reference = Encoder(NZ, 8, 1, 32, "zero")
    reference.apply(weights_init)
    for enc in (normal, reference):
        assert torch.count_nonzero(enc.last.bias) == 0
        assert enc.last.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert abs(enc.last.weight.mean().item()) < 0.002
    x = torch.randn(2, 1, 32, 32)
    assert torch.count_nonzero(zero.eval()(x)[0]) == 0 and torch.count_nonzero(normal.eval()(x)[0]) > 0
    with pytest.raises(ValueError, match="uniform"):
        Encoder(NZ, 8, 1, 32, "uniform")


def test_the_reference_elbo_statistic_is_its_scripts_moving_average():
    truth = tiny_models().truth
    rows, _, _ = train_vae(truth, Encoder(NZ, 4, 1, 32, "normal"), vae_settings("joint", iterations=5), CPU, None,
                           quiet())
    ema = 0.0
    for row in rows:  # log_every 1: each row is one step's ELBO
        ema = EMA_DECAY * ema + (1 - EMA_DECAY) * row["elbo"]
        assert row["elbo_ema"] == pytest.approx(ema, rel=1e-12)
    assert abs(rows[-1]["elbo_ema"]) < abs(rows[-1]["elbo"])  # from 0, not bias-corrected: far below the ELBO


# ---------------------------------------------------------------- FID: ours against pytorch-fid's own tool


def test_our_fid_is_pytorch_fids_on_the_same_files(tmp_path, monkeypatch):
    """Our distances stage on uint8 files against pytorch-fid's calculate_fid_given_paths on the same
    images written as PNG folders, with random Inception weights in a temporary TORCH_HOME (the
    wiring is what is tested: the preprocessing, the features and the distance)."""
    from PIL import Image
    from pytorch_fid.fid_score import calculate_fid_given_paths

    from vae_approx.images.data import write_random_inception_weights

    torch_home = tmp_path / "torch"
    write_random_inception_weights(torch_home / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth",
                                   calibrate=True)
    rng = np.random.default_rng(0)
    samples = tmp_path / "samples"
    samples.mkdir()
    base = rng.integers(0, 256, (12, 3, 32, 32))
    for k, name in enumerate(SETS):  # five sets, each further from the first
        array = np.clip(base + rng.normal(0, 10 + 20 * k, base.shape), 0, 255).astype(np.uint8)
        np.save(samples / f"{name}.npy", array)
    settings = {"features": "inception", "inception_sha256": "", "inception_unverified_ok": True,
                "evaluate": {"batch_size": 10}}
    run = S.identity(0, S.corrected(), "fixed")
    main(["distances", "--samples", str(samples), "--features-file", str(torch_home / "hub" / "checkpoints" /
          S.INCEPTION_FILE), "--settings", json.dumps(settings), "--run", json.dumps(run), "--threads", "1",
          "--device", "cpu", "--out", str(tmp_path / "fid.csv")])
    ours = pd.read_csv(tmp_path / "fid.csv", keep_default_na=False)
    assert list(ours.columns[:len(run)]) == list(run) and (ours[list(run)] == pd.Series(run)).all().all()
    assert ours.value[ours.metric == "inception_unverified"].tolist() == [1]  # random weights: not FID, and said so
    ours = ours[ours.metric == "fid"].set_index("image_set")
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    for name in ("ground_truth", "joint_reconstruction"):
        folder = tmp_path / "png" / name
        folder.mkdir(parents=True)
        for i, image in enumerate(np.load(samples / f"{name}.npy")):
            Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{i}.png")
    theirs = calculate_fid_given_paths([str(tmp_path / "png" / "ground_truth"),
                                        str(tmp_path / "png" / "joint_reconstruction")],
                                       batch_size=10, device="cpu", dims=2048, num_workers=0)
    assert theirs > 1e-3  # distances of a size where a wrong preprocessing would show
    assert ours.loc["joint_reconstruction", "value"] == pytest.approx(theirs, rel=1e-3)
    assert ours.loc["joint_reconstruction", "metric"] == "fid"


def test_stage_settings_hold_exactly_the_stages_keys():
    config = config_section("images")
    for stage, keys in S.STAGE_KEYS.items():
        text = stage_json(config, keys)
        assert set(json.loads(text)) == {key.partition(".")[0] for key in keys}
        section = stage_section(text, keys, stage)
        for key in keys:
            top, _, sub = key.partition(".")
            assert (section[top][sub] if sub else section[key]) == (config[top][sub] if sub else config[key])
    # what only the grids or the workflow read re-draws no image set; the protocol comes with the run, not here
    generate = stage_json(config, S.STAGE_KEYS["generate"])
    assert "keep_samples" not in generate and "grid_size" not in generate and "protocol" not in generate
    assert not any("protocol" in key for keys in S.STAGE_KEYS.values() for key in keys)
    run = S.identity(7, {**S.corrected(), "decoder_bn": "train", "encoder_init": "normal"}, "learned")
    settings = VaeSettings.pretrain(config, run, 7)
    assert (settings.iterations, settings.decoder_bn, settings.encoder_init, settings.seed, settings.ndf) == (
        config["pretrain"]["iterations"], "train", "normal", 7, config["encoder_ndf"])
    settings = VaeSettings.joint(config, run, 8, 0.25, 5)
    assert (settings.lr, settings.sigma, settings.ndf, settings.learn_sigma) == (config["joint"]["lr"], 0.25, 5, True)


def test_bf16_autocast_is_a_cuda_option_the_cpu_ignores():
    """bf16 autocast applies on CUDA only: on the CPU the same settings give the fp32 numbers exactly."""
    runs = [train_vae(tiny_models().truth, Encoder(NZ, 4, 1, 32, "normal"), vae_settings("joint", bf16=bf16), CPU,
                      None, quiet())[0] for bf16 in (False, True)]
    assert runs[0] == runs[1]
    models = tiny_models()
    plain, with_bf16 = sets(models), sets(models, bf16=True)
    assert all(torch.equal(plain[name], with_bf16[name]) for name in SETS)
