"""Faces experiment stages: resume after an interrupt, non-finite losses, the command-line chain from the
digits to the tables (the tables' arithmetic: tests/test_images_results.py)."""

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import config_section

from vae_approx.common import NonFiniteLossError, Progress, resume_path
from vae_approx.config import stage_json
from vae_approx.images import settings as S
from vae_approx.images.__main__ import STAGES, main
from vae_approx.images.model import Encoder, Generator
from vae_approx.images.settings import GanSettings, VaeSettings
from vae_approx.images.train import ground_truth, train_gan, train_vae

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


def quiet(total=10):
    return Progress("test", total, 1, stream=io.StringIO())


class Interrupt(Exception):
    pass


def stop_at(step):
    def on_step(s):
        if s == step:
            raise Interrupt

    return on_step


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def tiny_truth(seed=0):
    torch.manual_seed(seed)
    return ground_truth(Generator(4, 4, 1, 32), 0.05)


@pytest.mark.parametrize("phase,learn_sigma,decoder_bn", [("pretrain", False, "eval"), ("joint", False, "eval"),
                                                           ("joint", True, "eval"), ("joint", False, "train")])
def test_an_interrupted_run_resumes_to_the_same_numbers(tmp_path, phase, learn_sigma, decoder_bn):
    settings = VaeSettings(phase, iterations=7, batch_size=6, lr=1e-3, beta1=0.5, sigma=0.05, seed=3, log_every=2,
                           checkpoint_every=2, ndf=4, learn_sigma=learn_sigma, channels_last=False, bf16=False,
                           bn_batches=1, decoder_bn=decoder_bn, encoder_init="zero")

    def encoder():
        torch.manual_seed(1)
        return Encoder(4, 4, 1, 32, "zero")

    full_rows, full_enc, full_dec = train_vae(tiny_truth(), encoder(), settings, CPU, None, quiet())
    resume = resume_path(tmp_path / "out.pt")
    with pytest.raises(Interrupt):
        train_vae(tiny_truth(), encoder(), settings, CPU, resume, quiet(), on_step=stop_at(5))
    assert resume.is_file()
    torch.manual_seed(12345)  # the resumed run must not depend on the RNG state it starts in
    rows, enc, dec = train_vae(tiny_truth(), encoder(), settings, CPU, resume, quiet())
    assert rows == full_rows and [r["step"] for r in rows] == [2, 4, 6, 7]
    assert states_equal(enc, full_enc) and states_equal(dec, full_dec)
    if phase == "joint":
        assert not states_equal(dec, tiny_truth())  # the decoder copy was trained
        assert states_equal(tiny_truth(), tiny_truth())
    if learn_sigma:
        assert dec.sigma != 0.05


def test_an_interrupted_gan_resumes_to_the_same_generators(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (20, 1, 32, 32), dtype=np.uint8)
    settings = GanSettings(epochs=2, batch_size=8, lr=2e-4, beta1=0.5, nz=4, ngf=4, ndf=4, seed=9, checkpoint_every=2,
                           log_every=1)
    full = train_gan(images, settings, tmp_path / "full", CPU, None, quiet())
    resume = resume_path(tmp_path / "gens")
    with pytest.raises(Interrupt):
        train_gan(images, settings, tmp_path / "gens", CPU, resume, quiet(), on_step=stop_at(5))
    assert sorted(p.name for p in (tmp_path / "gens").iterdir()) == ["epoch_001.pt"]
    rows = train_gan(images, settings, tmp_path / "gens", CPU, resume, quiet())
    assert rows == full and [r["epoch"] for r in rows] == [1, 2] and rows[0]["step"] == 3
    for name in ("epoch_001.pt", "epoch_002.pt"):
        a, b = torch.load(tmp_path / "full" / name), torch.load(tmp_path / "gens" / name)
        assert a["epoch"] == b["epoch"] and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])


def test_a_non_finite_loss_names_the_stage_and_step():
    truth = tiny_truth()
    with torch.no_grad():
        truth.generator.main[0].weight.fill_(float("nan"))
    settings = VaeSettings("pretrain", 3, 4, 1e-3, 0.5, 0.05, 0, 1, 10, ndf=4, learn_sigma=False, channels_last=False,
                           bf16=False, bn_batches=1, decoder_bn="eval", encoder_init="zero")
    with pytest.raises(NonFiniteLossError, match="images pretrain: non-finite loss .* at step 1"):
        train_vae(truth, Encoder(4, 4, 1, 32, "zero"), settings, CPU, None, quiet())


def stage(*args):
    """One stage through the command line, on one CPU thread."""
    args = [str(a) for a in args]
    if "device" in STAGES[args[0]]["takes"]:  # the stages that take the rule's threads and device
        args += ["--threads", "1", "--device", "cpu"]
    main(args)


def settings_of(section, name):
    return stage_json(section, S.STAGE_KEYS[name])


def test_the_stage_chain_on_digits(tmp_path):
    d = tmp_path
    section = config_section("images")
    section.update(image_size=32, encoder_ndf=4, log_every=2, checkpoint_every=2, bn_batches=1, seeds=[0],
                   classifier={"width": 4, "epochs": 1, "batch_size": 128, "lr": 1e-3, "seed": 0},
                   gan={"nz": 4, "ngf": 4, "ndf": 4, "epochs": 2, "batch_size": 16, "lr": 2e-4, "beta1": 0.5,
                        "seed": 999, "checkpoint_every": 2},
                   choose={"n_samples": 30, "seed": 0},
                   pretrain={"iterations": 4, "batch_size": 8, "lr": 1e-3, "beta1": 0.5},
                   joint={"iterations": 4, "batch_size": 8, "lr": 1e-3, "beta1": 0.5},
                   evaluate={"n_samples": 40, "batch_size": 16, "n_eval": 20, "grid_size": 16, "keep_samples": True},
                   ablation={"rows": ["corrected", "reference"]}, fd_tolerance=0,
                   likelihood={"rows": ["corrected", "reference"], "images": 3, "steps": [2, 4], "leapfrog": 2,
                               "chains": 2, "start": "encoder", "step_size": 0.1, "iwae_samples": 20})
    stage("prepare-digits", "--settings", settings_of(section, "prepare-digits"), "--out", d / "images.npy",
          "--labels", d / "labels.npy")
    stage("train-classifier", "--images", d / "images.npy", "--labels", d / "labels.npy",
          "--settings", settings_of(section, "train-classifier"), "--out", d / "clf.pt", "--metrics", d / "clf.csv")
    # a GAN on 1797 images is too slow for a unit test: two epochs on the first 40 images
    np.save(d / "few.npy", np.load(d / "images.npy")[:40])
    stage("train-gan", "--images", d / "few.npy", "--settings", settings_of(section, "train-gan"),
          "--out-dir", d / "gens", "--losses", d / "gan.csv")
    assert sorted(p.name for p in (d / "gens").iterdir()) == ["epoch_001.pt", "epoch_002.pt"]
    assert not resume_path(d / "gens").exists() and not (d / ".gens.partial").exists()
    assert list(pd.read_csv(d / "gan.csv").epoch) == [1, 2]
    choose = ["--generators", d / "gens", "--images", d / "images.npy", "--features-file", d / "clf.pt"]
    stage("choose-generator", *choose, "--settings", settings_of(section, "choose-generator"),
          "--out", d / "generator.pt", "--distances", d / "distances.csv")
    distances = pd.read_csv(d / "distances.csv")
    assert list(distances.epoch) == [1, 2] and distances.chosen.sum() == 1
    assert distances.fd_digits[distances.chosen].iloc[0] == distances.fd_digits.min()
    with pytest.raises(SystemExit, match="no generator of epoch 44"):
        stage("choose-generator", *choose, "--settings", settings_of({**section, "generator_epoch": 44},
              "choose-generator"), "--out", d / "g44.pt", "--distances", d / "d44.csv")
    with pytest.raises(SystemExit, match="choose-generator --settings: missing .*features"):
        stage("choose-generator", *choose, "--settings", json.dumps({"generator_epoch": "auto"}),
              "--out", d / "g.pt", "--distances", d / "d.csv")
    root = str(d / "results")
    files = {}
    for name, protocol in (("corrected", S.corrected()), ("reference", S.reference())):
        run = S.identity(0, protocol, "fixed")
        path = {key: S.path(root, key).format(**run) for key in S.PATHS}
        trained, joint = (json.dumps({k: run[k] for k in keys}) for keys in (S.TRAINED_RUN, S.JOINT_RUN))
        stage("pretrain", "--generator", d / "generator.pt", "--settings", settings_of(section, "pretrain"),
              "--run", trained, "--out", path["pretrained"], "--metrics", path["pretrain_curve"])
        stage("joint", "--generator", d / "generator.pt", "--encoder", path["pretrained"],
              "--settings", settings_of(section, "joint"), "--run", joint, "--out", path["joint"],
              "--metrics", path["joint_curve"])
        models = ["--generator", d / "generator.pt", "--pretrained", path["pretrained"], "--joint", path["joint"]]
        stage("heldout", *models, "--settings", settings_of(section, "heldout"), "--run", joint,
              "--out", path["heldout"])
        stage("likelihood", *models, "--settings", settings_of(section, "likelihood"), "--run", joint,
              "--out", path["likelihood"])
        samples = Path(path["fd_digits"]).parent / "samples"
        stage("generate", *models, "--settings", settings_of(section, "generate"), "--run", json.dumps(run),
              "--out-dir", samples)
        stage("distances", "--samples", samples, "--features-file", d / "clf.pt", "--settings",
              settings_of(section, "distances"), "--run", json.dumps(run), "--out", path["fd_digits"])
        files[name] = path
    # every CSV a per-run stage writes leads with the run's identity, in every row
    run = S.identity(0, S.corrected(), "fixed")
    for key, columns in (("pretrain_curve", S.TRAINED_RUN), ("joint_curve", S.JOINT_RUN), ("heldout", S.JOINT_RUN),
                         ("likelihood", S.JOINT_RUN), ("fd_digits", S.SAMPLED_RUN)):
        written = pd.read_csv(files["corrected"][key], keep_default_na=False)
        assert list(written.columns[:len(columns)]) == list(columns), key
        assert (written[list(columns)] == pd.Series({k: run[k] for k in columns})).all().all(), key
        assert np.isfinite(written.select_dtypes("number").drop(columns="seed")).all().all(), key
    assert list(pd.read_csv(files["corrected"]["joint_curve"]).columns) == [
        *S.JOINT_RUN, "phase", "step", "elbo", "reconstruction", "kl", "elbo_ema"]
    # both stages of a protocol use one BatchNorm mode
    with pytest.raises(SystemExit, match="trained with decoder BatchNorm train"):
        stage("joint", "--generator", d / "generator.pt", "--encoder", files["reference"]["pretrained"],
              "--settings", settings_of(section, "joint"), "--run",
              json.dumps({k: run[k] for k in S.JOINT_RUN}),
              "--out", d / "x.pt", "--metrics", d / "x.csv")
    with pytest.raises(SystemExit, match="decoder_bn 'batch' is not one of"):
        stage("heldout", *models, "--settings", settings_of(section, "heldout"), "--run",
              json.dumps({**json.loads(joint), "decoder_bn": "batch"}), "--out", d / "h.csv")
    grids = d / "grids"
    stage("grids", "--samples", Path(files["corrected"]["fd_digits"]).parent / "samples",
          "--settings", settings_of(section, "grids"), "--run", json.dumps(run), "--out-dir", grids)
    assert sorted(p.name for p in grids.iterdir()) == sorted(f"{name}.png" for name in (*S.IMAGE_SETS, "comparison"))
    stage("curves", "--pretrain", files["corrected"]["pretrain_curve"], "--joint", files["corrected"]["joint_curve"],
          "--settings", settings_of(section, "curves"), "--out", d / "curves.png")
    assert (d / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # the tables from the files the rules list (settings.table_files, ablation_files)
    table_files, ablation_files = S.table_files(section, root), S.ablation_files(section, root)
    assert table_files == {key: [files["corrected"][name]] for key, name in
                           (("distances", "fd_digits"), ("heldout", "heldout"), ("curves", "joint_curve"))}
    published = ["--published", "reference/published_results.csv"]
    out = d / "table"
    stage("tabulate", *(x for key, paths in table_files.items() for x in (f"--{key}", *paths)), *published,
          "--settings", settings_of(section, "tabulate"), "--per-seed", out / "p.csv", "--csv", out / "t.csv",
          "--md", out / "t.md", "--claims", out / "claims.csv")
    assert len(pd.read_csv(out / "claims.csv")) == 3 and "the corrected protocol" in (out / "t.md").read_text()
    assert list(pd.read_csv(out / "t.csv").stage) == list(S.PHASES.values())
    stage("ablate", *(x for key, paths in ablation_files.items() for x in (f"--{key}", *paths)), *published,
          "--settings", settings_of(section, "ablate"), "--csv", d / "a.csv", "--md", d / "a.md",
          "--claims", d / "a_claims.csv")
    assert list(pd.read_csv(d / "a.csv").protocol) == ["corrected", "reference"]
    assert len(pd.read_csv(d / "a_claims.csv")) == 1  # the reference's rise; no single factor ran
    # the likelihood: every estimate at every T, the table of both protocols, its claims and figure
    written = pd.read_csv(files["corrected"]["likelihood"])
    assert list(written.columns) == [*S.JOINT_RUN, *S.LIKELIHOOD_COLUMNS]
    assert sorted(written[written.estimate.str.startswith("ais")].steps.unique()) == [2, 4]
    assert len(written) == 2 * 5 + 4 and set(written.n) == {3}
    bounds = written.set_index(["decoder", "images", "estimate", "steps"]).value
    assert bounds["truth", "truth", "iwae", 0] >= bounds["truth", "truth", "elbo", 0]
    likelihood_files = S.likelihood_files(section, root)
    assert likelihood_files == [files[name]["likelihood"] for name in ("corrected", "reference")]
    stage("tabulate-likelihood", "--likelihood", *likelihood_files, "--settings",
          settings_of(section, "tabulate-likelihood"), "--csv", d / "l.csv", "--md", d / "l.md",
          "--claims", d / "l_claims.csv", "--figure", d / "l.png")
    assert list(dict.fromkeys(pd.read_csv(d / "l.csv").protocol)) == ["corrected", "reference"]
    assert len(pd.read_csv(d / "l_claims.csv")) == 4 and (d / "l.png").read_bytes()[:4] == b"\x89PNG"
    assert "| reference, sigma fixed |" in (d / "l.md").read_text() and (d / "l.html").is_file()
    # the two protocols: other distances and other training, from the same draws
    corrected, reference = (pd.read_csv(files[name]["fd_digits"]).value for name in ("corrected", "reference"))
    assert not corrected.equals(reference)
    # a row without runs, and records of another run than the table's files, are refused
    with pytest.raises(SystemExit, match="no runs of row 'z_pairing'"):
        stage("ablate", *(x for key, paths in table_files.items() for x in (f"--{key}", *paths)), *published,
              "--settings", settings_of({**section, "ablation": {"rows": ["z_pairing"]}}, "ablate"),
              "--csv", d / "b.csv", "--md", d / "b.md", "--claims", d / "b_claims.csv")
    with pytest.raises(SystemExit, match="no held-out metrics of seed 0, decoder_bn train"):
        stage("tabulate", "--distances", files["reference"]["fd_digits"], "--heldout", files["corrected"]["heldout"],
              "--curves", files["reference"]["joint_curve"], *published, "--settings", settings_of(section, "tabulate"),
              "--per-seed", d / "p.csv", "--csv", d / "t.csv", "--md", d / "t.md", "--claims", d / "c.csv")


def test_the_paper_path_celeba_zip_and_inception_features(tmp_path):
    """The paper preset's stages: CelebA's zip -> the image array -> the GAN -> the ground truth chosen by the
    Inception distance, with weights placed under TORCH_HOME (random ones, accepted only by the tests-only opt-out,
    and labelled so); fetch-inception with a pinned digest."""
    from vae_approx.common import sha256
    from vae_approx.images.data import write_random_inception_weights

    d = tmp_path
    section = config_section("images", "paper.yaml")
    section.update(celeba={"zip": "unused", "expected_count": 12, "md5": ""}, inception_unverified_ok=True, generator_epoch=1,
                   gan={**section["gan"], "nz": 4, "ngf": 4, "ndf": 4, "epochs": 1, "batch_size": 6},
                   choose={"n_samples": 4, "seed": 0}, evaluate={**section["evaluate"], "batch_size": 4})
    assert section["features"] == "inception" and section["image_size"] == 64
    stage("synth-celeba-zip", "--n", 12, "--out", d / "img_align_celeba.zip")
    stage("prepare-celeba", "--zip", d / "img_align_celeba.zip", "--settings", settings_of(section, "prepare-celeba"),
          "--out", d / "celeba.npy")
    assert np.load(d / "celeba.npy").shape == (12, 3, 64, 64)
    stage("train-gan", "--images", d / "celeba.npy", "--settings", settings_of(section, "train-gan"),
          "--out-dir", d / "gens", "--losses", d / "gan.csv")
    weights = d / "torch" / "hub" / "checkpoints" / S.INCEPTION_FILE
    write_random_inception_weights(weights)
    stage("choose-generator", "--generators", d / "gens", "--images", d / "celeba.npy", "--features-file", weights,
          "--settings", settings_of(section, "choose-generator"), "--out", d / "generator.pt",
          "--distances", d / "distances.csv")
    distances = pd.read_csv(d / "distances.csv")
    assert distances.epoch.tolist() == [1] and "fid" in distances and distances.inception_unverified.tolist() == [True]
    with pytest.raises(SystemExit, match="fail their SHA-256 check"):  # without the opt-out: refused
        stage("choose-generator", "--generators", d / "gens", "--images", d / "celeba.npy", "--features-file", weights,
              "--settings", settings_of({**section, "inception_unverified_ok": False}, "choose-generator"),
              "--out", d / "g.pt", "--distances", d / "d.csv")
    pinned = {**section, "inception_sha256": sha256(weights)}
    stage("fetch-inception", "--torch-home", d / "fetched", "--url", weights.as_uri(),
          "--settings", settings_of(pinned, "fetch-inception"))
    assert sha256(d / "fetched" / "hub" / "checkpoints" / S.INCEPTION_FILE) == pinned["inception_sha256"]


def test_batchnorm_recalibration_averages_the_final_statistics():
    from vae_approx.images.train import recalibrate_batchnorm

    torch.manual_seed(0)
    truth, encoder = tiny_truth(), Encoder(4, 4, 1, 32, "zero")
    weights = {k: v.clone() for k, v in encoder.state_dict().items() if "running" not in k and "num_batches" not in k}
    norm = next(m for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    norm.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].mean((0, 2, 3))))
    recalibrate_batchnorm(encoder, truth, batches=3, batch_size=5, device=CPU, channels_last=False)
    assert len(seen) == 3 and not encoder.training and norm.momentum == 0.1
    assert torch.allclose(norm.running_mean, torch.stack(seen).mean(0), atol=1e-6)
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in weights.items())
