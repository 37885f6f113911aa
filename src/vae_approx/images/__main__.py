"""Stages of the faces experiment, each a file-to-file step a rule calls: python -m vae_approx.images <stage>.

--settings: the stage's keys of the config's `images` section as JSON (settings.STAGE_KEYS); --run: a per-run
stage's identity as JSON (settings.RUNS), the first columns of every CSV the stage writes; --features-file: the
digits classifier or the Inception weights (<torch_home>/hub/checkpoints/...), as images.features says.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from ..common import Progress, StageTable, resume_path, save_csv, save_torch, stage_seed, with_run
from ..provenance import log_environment
from ..tables import load_published, read_records, write_claims, write_shown, write_table
from . import data as D
from . import results as R
from . import settings as S
from .evaluate import (choose_generator, generate_sets, heldout, likelihood, load_models,
                       make_extractor, set_distances, write_grids)
from .model import (check_pretrained, classifier_file, epoch_files, joint_file, load_generator, load_pretrained,
                    pretrained_file)
from .plots import likelihood_figure, training_curves
from .train import joint, pretrain, train_classifier, train_gan_into


# The command line, stage by stage (@stage beside each function): common.StageTable.
TABLE = StageTable("images", S.STAGE_KEYS, S.RUNS)
STAGES, stage = TABLE.stages, TABLE.stage


@stage("prepare-digits", "scikit-learn's digits as a uint8 image array + labels", "out labels", takes="settings")
def cmd_prepare_digits(args) -> None:
    images, labels = D.digits_images(args.section["image_size"])
    D.save_array(labels, args.labels)
    D.save_array(images, args.out)
    print(f"[images prepare-digits] {images.shape} uint8 -> {args.out}, labels -> {args.labels}", file=sys.stderr)


@stage("synth-celeba-zip", "a small zip of JPEGs in CelebA's layout (tests, dry runs)",
       "n:int out", optional=("--seed", {"type": int, "default": 0}))
def cmd_synth_celeba_zip(args) -> None:
    D.write_synthetic_celeba_zip(args.out, args.n, args.seed)
    print(f"[images synth-celeba-zip] {args.n} JPEGs in CelebA's layout -> {args.out}", file=sys.stderr)


@stage("fetch-celeba", "download img_align_celeba.zip (else: say where to put it)", "out")
def cmd_fetch_celeba(args) -> None:
    D.fetch_celeba(args.out)


@stage("prepare-celeba", "the zip's JPEGs, resized and centre-cropped, as a uint8 array", "zip out", takes="settings")
def cmd_prepare_celeba(args) -> None:
    progress, size = Progress("images prepare-celeba", 0, 1), args.section["image_size"]
    celeba = args.section["celeba"]
    n = D.prepare_celeba(args.zip, args.out, size, celeba["expected_count"], progress, md5=celeba["md5"])
    progress.message(f"{n} images of {size}x{size}x3 -> {args.out}")


@stage("fetch-inception", "pytorch-fid's Inception weights into TORCH_HOME", "torch-home", takes="settings",
       optional=("--url", {"default": "", "help": "default: pytorch-fid's FID_WEIGHTS_URL"}))
def cmd_fetch_inception(args) -> None:
    path = D.fetch_inception(args.torch_home, args.section["inception_sha256"], args.url or None,
                             None if args.url else D.INCEPTION_SHA256_PREFIX)
    print(f"[images fetch-inception] {path}", file=sys.stderr)


@stage("train-classifier", "the digits classifier whose features give fd_digits",
       "images labels out metrics", takes="settings device",
       optional=("--val-fraction", {"type": float, "default": 0.2}))
def cmd_train_classifier(args) -> None:
    c = args.section["classifier"]
    images = D.load_images(args.images)
    labels = D.load_labels(args.labels, len(images))
    environment = log_environment("images train-classifier", args.on)
    model, rows = train_classifier(images, labels, c["width"], c["epochs"], c["batch_size"], c["lr"], c["seed"],
                                   args.val_fraction, args.on, Progress("images train-classifier", c["epochs"], 1))
    save_csv(pd.DataFrame(rows), args.metrics)
    save_torch({**classifier_file(model), "environment": environment}, args.out)


@stage("train-gan", "DCGAN; the generator of every epoch into --out-dir",
       "images out-dir losses", takes="settings device")
def cmd_train_gan(args) -> None:
    settings = S.GanSettings.from_section(args.section)
    log_environment("images train-gan", args.on)  # the generator of every epoch records it too
    train_gan_into(D.load_images(args.images), settings, Path(args.out_dir), Path(args.losses), args.on)


@stage("choose-generator", "the ground truth: a given epoch or the lowest distance",
       "generators images features-file out distances", takes="settings device")
def cmd_choose_generator(args) -> None:
    s, files, images = args.section, epoch_files(args.generators), D.load_images(args.images)
    features = make_extractor(s["features"], args.on, args.features_file, images.shape[1], s["inception_sha256"],
                              s["inception_unverified_ok"])
    frame, chosen = choose_generator(files, s["generator_epoch"], images, features, s["choose"]["n_samples"],
                                     s["evaluate"]["batch_size"], s["choose"]["seed"], args.on)
    saved, _ = load_generator(files[chosen])
    save_csv(frame, args.distances)
    save_torch(saved, args.out)


@stage("pretrain", "encoder by log q(z|x) on ground-truth samples",
       "generator out metrics", takes="settings run device")
def cmd_pretrain(args) -> None:
    run, (gsaved, g) = args.identity, load_generator(args.generator)
    # the stage's stream of the replicate, the same for every protocol: protocols differ by their factors, not draws
    settings = S.VaeSettings.pretrain(args.section, run, stage_seed(run["seed"], "pretrain"))
    resume, environment = resume_path(args.out), log_environment("images pretrain", args.on)
    rows, encoder = pretrain(g, settings, args.on, resume, f"generator of epoch {gsaved['epoch']}")
    save_csv(with_run(run, rows), args.metrics)
    save_torch({**pretrained_file(encoder, g, gsaved["epoch"], asdict(settings)), "environment": environment}, args.out)
    resume.unlink(missing_ok=True)


@stage("joint", "encoder + a copy of the decoder by ELBO", "generator encoder out metrics", takes="settings run device")
def cmd_joint(args) -> None:
    run, (_, g), (esaved, encoder) = args.identity, load_generator(args.generator), load_pretrained(args.encoder)
    check_pretrained(esaved, args.encoder, g, args.generator, run["decoder_bn"])
    settings = S.VaeSettings.joint(args.section, run, stage_seed(run["seed"], "joint"), esaved["sigma"],
                                   esaved["encoder_spec"]["ndf"])
    resume, environment = resume_path(args.out), log_environment("images joint", args.on)
    rows, encoder, decoder = joint(g, encoder, settings, args.on, resume)
    save_csv(with_run(run, rows), args.metrics)
    save_torch({**joint_file(encoder, g, decoder, asdict(settings)), "environment": environment}, args.out)
    resume.unlink(missing_ok=True)


@stage("generate", "the image sets of one run as uint8 arrays",
       "generator pretrained joint out-dir", takes="settings run device")
def cmd_generate(args) -> None:
    s, run, ev = args.section, args.identity, args.section["evaluate"]
    models = load_models(args.generator, args.pretrained, args.joint).eval(args.on, s["channels_last"])
    generate_sets(models, ev["n_samples"], ev["batch_size"], stage_seed(run["seed"], "evaluate"), args.on,
                  run["sampling"], run["pixel_noise"], run["z_pairing"], s["bf16"], Path(args.out_dir))


@stage("grids", "a PNG grid of each image set, and the comparison figure", "samples out-dir", takes="settings run")
def cmd_grids(args) -> None:
    write_grids(Path(args.samples), Path(args.out_dir), args.section["evaluate"]["grid_size"])
    print(f"[images grids] {', '.join(f'{k} {v}' for k, v in args.identity.items())} -> {args.out_dir}",
          file=sys.stderr)


@stage("distances", "Frechet distance of every image set to the ground truth",
       "samples features-file out", takes="settings run device")
def cmd_distances(args) -> None:
    s, channels = args.section, D.load_images(Path(args.samples) / f"{S.IMAGE_SETS[0]}.npy").shape[1]
    features = make_extractor(s["features"], args.on, args.features_file, channels, s["inception_sha256"],
                              s["inception_unverified_ok"])
    rows = set_distances(Path(args.samples), features, s["evaluate"]["batch_size"])
    save_csv(with_run(args.identity, rows), args.out)


@stage("heldout", "held-out ELBOs, decoder drift and sigma, in eval mode",
       "generator pretrained joint out", takes="settings run device")
def cmd_heldout(args) -> None:
    s, run = args.section, args.identity
    rows = heldout(load_models(args.generator, args.pretrained, args.joint), s["evaluate"]["n_eval"],
                   s["evaluate"]["batch_size"], stage_seed(run["seed"], "heldout"), args.on, s["channels_last"])
    save_csv(with_run(run, rows), args.out)


@stage("likelihood", "log p(x) of held-out ground-truth images: AIS sandwich, BDMC, IWAE, ELBO",
       "generator pretrained joint out", takes="settings run device")
def cmd_likelihood(args) -> None:
    settings, run = S.LikelihoodSettings.from_section(args.section), args.identity
    models = load_models(args.generator, args.pretrained, args.joint)
    progress = Progress("images likelihood", len(settings.steps), 1)
    progress.message(f"{', '.join(f'{k} {v}' for k, v in run.items())}: {settings}")
    rows = likelihood(models, settings, stage_seed(run["seed"], "likelihood"), args.on, progress)
    save_csv(with_run(run, rows)[[*run, *S.LIKELIHOOD_COLUMNS]], args.out)


@stage("curves", "training curves, one thin line per seed and the mean", "pretrain:+ joint:+ out", takes="settings")
def cmd_curves(args) -> None:
    training_curves(read_records(args.pretrain, "pretraining curve", [*S.TRAINED_RUN, "step", "loss"]),
                    read_records(args.joint, "joint-training curve", [*S.JOINT_RUN, "step", "elbo", "kl"]),
                    S.setting_name(args.section), args.out)


def run_records(args) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The distances, held-out metrics and joint curves of every run the table is over."""
    return (read_records(args.distances, "images distances", R.RUN + R.DISTANCE_COLUMNS),
            read_records(args.heldout, "images held-out metrics", R.TRAINING + R.DISTANCE_COLUMNS),
            read_records(args.curves, "joint-training curve", R.TRAINING + R.CURVE_COLUMNS))


@stage("tabulate", "the table and claims of one protocol over seeds",
       "distances:+ heldout:+ curves:+ published per-seed csv md claims", takes="settings")
def cmd_tabulate(args) -> None:
    s = args.section
    table, per_seed, claims, unverified = R.faces_table(*run_records(args), load_published(args.published),
                                                        S.setting_name(s), s["fd_tolerance"])
    save_csv(per_seed, args.per_seed)
    write_table(table.frame, args.csv, args.md, title=table.title, note=table.note, shown=table.shown)
    if unverified:
        print(f"[images tabulate] WARNING: {args.distances} come from UNVERIFIED Inception weights: their 'fid' "
              "numbers are NOT FID, and the table and claims say so", file=sys.stderr, flush=True)
    write_claims(claims, args.claims)


@stage("ablate", "the protocol ablation's table and claims",
       "distances:+ heldout:+ curves:+ published csv md claims", takes="settings")
def cmd_ablate(args) -> None:
    s = args.section
    table, shown, claims = R.ablation_table(*run_records(args), load_published(args.published), S.setting_name(s),
                                            s["fd_tolerance"], s["ablation"]["rows"])
    save_csv(table.frame, args.csv)
    write_shown(shown, args.md, table.title, table.note, table.shown)
    write_claims(claims, args.claims)


@stage("tabulate-likelihood", "the likelihood's table, figure and claims over seeds",
       "likelihood:+ csv md claims figure", takes="settings")
def cmd_tabulate_likelihood(args) -> None:
    records = read_records(args.likelihood, "images likelihood", [*R.TRAINING, *S.LIKELIHOOD_COLUMNS])
    table, claims = R.likelihood_table(records, S.setting_name(args.section))
    save_csv(table.frame, args.csv)
    write_shown(R.likelihood_markdown(table.frame), args.md, table.title, table.note)
    write_claims(claims, args.claims)
    likelihood_figure(records, S.setting_name(args.section), args.figure)


def main(argv: list[str] | None = None) -> None:
    TABLE.main("python -m vae_approx.images", __doc__, argv)


if __name__ == "__main__":
    main()
