"""Stages of the faces experiment, each a file-to-file step called by a rule.

    python -m vae_approx.images prepare-digits    --size 32 --out images.npy --labels labels.npy
    python -m vae_approx.images synth-celeba-zip  --n 300 --out img_align_celeba.zip
    python -m vae_approx.images fetch-celeba      --out resources/celeba/img_align_celeba.zip
    python -m vae_approx.images prepare-celeba    --zip img_align_celeba.zip --size 64 --out images.npy
    python -m vae_approx.images fetch-inception   --torch-home resources/torch [--sha256 HEX]
    python -m vae_approx.images train-classifier  --images images.npy --labels labels.npy --out classifier.pt ...
    python -m vae_approx.images train-gan         --images images.npy --out-dir generators/ --losses gan.csv ...
    python -m vae_approx.images choose-generator  --generators generators/ --images images.npy --epoch auto ...
    python -m vae_approx.images pretrain          --generator generator.pt --settings JSON --seed 0 --out encoder.pt ...
    python -m vae_approx.images joint             --generator generator.pt --encoder encoder.pt --settings JSON ...
    python -m vae_approx.images generate          --generator G --pretrained E --joint J --settings JSON --out-dir samples/ ...
    python -m vae_approx.images grids             --samples samples/ --grid-size 64 --out-dir grids/
    python -m vae_approx.images distances         --samples samples/ --features digits --classifier C --out fd.csv
    python -m vae_approx.images heldout           --generator G --pretrained E --joint J --settings JSON --out heldout.csv
    python -m vae_approx.images curves            --pretrain P.csv ... --joint J.csv ... --out curves.png
    python -m vae_approx.images tabulate          --distances D.csv ... --heldout H.csv ... --curves J.csv ... --csv --md --claims
    python -m vae_approx.images ablate            --rows corrected ... --distances D.csv ... --heldout H.csv ... --csv --md --claims

--settings is the stage's keys of the config's `images` section as JSON (settings.STAGE_KEYS); the protocol's
factors (--decoder-bn, --encoder-init, --sigma-variant, --sampling, --pixel-noise, --z-pairing) come from the path.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..common import (InputError, Progress, load_torch, parse_bool, resume_path, run_stage, save_csv, save_text,
                      save_torch, seed_everything, seed_of, select_device, set_threads, stage_seed)
from ..tables import (HOLDS, INCONCLUSIVE, load_published, markdown, mean_std, one_value, paired_verdict, published,
                      read_tidy, seeds_claim, with_published, with_spread, write_claims, write_table)
from . import data as D
from . import settings as S
from .evaluate import Models, heldout, image_batches, set_distances, write_grids, write_sets
from .metrics import (FEATURES, GaussianStats, classifier_file, frechet_distance, make_extractor,
                      train_classifier)
from .model import (GaussianDecoder, build_encoder, build_generator, encoder_spec, generator_spec, Encoder)
from .train import PHASES, GanSettings, VaeSettings, ground_truth, train_gan, train_vae

EXPERIMENT = "images"


# ---------------------------------------------------------------- model files


def load_generator(path) -> tuple[dict, torch.nn.Module]:
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
    for key in keys:
        if spec_a[key] != spec_b[key]:
            raise InputError(f"{what}: {key} {spec_a[key]} does not match {spec_b[key]}")


# ---------------------------------------------------------------- data stages


def cmd_prepare_digits(args) -> None:
    images, labels = D.digits_images(args.size)
    D.save_array(labels, args.labels)
    D.save_array(images, args.out)
    print(f"[images prepare-digits] {images.shape} uint8 -> {args.out}, labels -> {args.labels}", file=sys.stderr)


def cmd_synth_celeba_zip(args) -> None:
    D.write_synthetic_celeba_zip(args.out, args.n, args.seed)
    print(f"[images synth-celeba-zip] {args.n} JPEGs in CelebA's layout -> {args.out}", file=sys.stderr)


def cmd_fetch_celeba(args) -> None:
    D.fetch_celeba(args.out)


def cmd_prepare_celeba(args) -> None:
    progress = Progress("images prepare-celeba", 0, 1)
    n = D.prepare_celeba(args.zip, args.out, args.size, args.expected_count, progress)
    progress.message(f"{n} images of {args.size}x{args.size}x3 -> {args.out}")


def cmd_fetch_inception(args) -> None:
    path = D.fetch_inception(args.torch_home, args.sha256, args.url or None,
                             None if args.url else D.INCEPTION_SHA256_PREFIX)
    print(f"[images fetch-inception] {path}", file=sys.stderr)


# ---------------------------------------------------------------- training stages


def cmd_train_classifier(args) -> None:
    set_threads(args.threads)
    device = select_device(args.device)
    images = D.load_images(args.images)
    labels = D.load_labels(args.labels, len(images))
    progress = Progress("images train-classifier", args.epochs, 1)
    model, rows = train_classifier(images, labels, args.width, args.epochs, args.batch_size, args.lr, args.seed,
                                   args.val_fraction, device, progress)
    save_csv(pd.DataFrame(rows), args.metrics)
    save_torch(classifier_file(model), args.out)


def cmd_train_gan(args) -> None:
    set_threads(args.threads)
    device = select_device(args.device)
    images = D.load_images(args.images)
    settings = GanSettings(args.epochs, args.batch_size, args.lr, args.beta1, args.nz, args.ngf, args.ndf,
                           args.seed, args.checkpoint_every, args.log_every)
    out_dir = Path(args.out_dir)
    staging = out_dir.parent / f".{out_dir.name}.partial"  # beside the output, as the resume file
    steps = settings.epochs * -(-len(images) // settings.batch_size)
    progress = Progress("images train-gan", steps, args.log_every)
    progress.message(f"{images.shape[0]} images {images.shape[1:]}, {settings.epochs} epochs, on {device}, "
                     f"{torch.get_num_threads()} threads")
    resume = resume_path(out_dir)
    rows = train_gan(images, settings, staging, device, resume, progress)
    save_csv(pd.DataFrame(rows), args.losses)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    resume.unlink(missing_ok=True)


def epoch_files(directory) -> dict[int, Path]:
    directory = Path(directory)
    files = {int(p.stem.split("_")[1]): p for p in directory.glob("epoch_*.pt")} if directory.is_dir() else {}
    if not files:
        raise InputError(f"{directory}: no generator files epoch_NNN.pt (written by train-gan)")
    return dict(sorted(files.items()))


@torch.no_grad()
def cmd_choose_generator(args) -> None:
    set_threads(args.threads)
    device = select_device(args.device)
    files = epoch_files(args.generators)
    if args.epoch != "auto":
        try:
            chosen = int(args.epoch)
        except ValueError:
            raise InputError(f"--epoch must be 'auto' or an epoch number, got {args.epoch!r}") from None
        if chosen not in files:
            raise InputError(f"{args.generators}: no generator of epoch {chosen}; epochs {min(files)}..{max(files)}")
        scored = [chosen]
    else:
        scored = list(files)
    images = D.load_images(args.images)
    extractor = make_extractor(args.features, device, args.classifier, args.torch_home, images.shape[1],
                               args.inception_sha256, args.inception_unverified_ok)
    progress = Progress("images choose-generator", len(scored), 1)
    progress.message(f"distance: {extractor.label}")
    n = min(args.n_samples, len(images))
    subset = np.sort(np.random.default_rng(args.seed).choice(len(images), n, replace=False))
    data_stats = GaussianStats(extractor.dim)
    for start in range(0, n, args.batch_size):
        data_stats.update(extractor(D.to_float(images[subset[start:start + args.batch_size]])))
    rows = []
    for epoch in scored:
        _, g = load_generator(files[epoch])
        g = g.to(device).eval()
        gen = torch.Generator().manual_seed(args.seed)
        stats = GaussianStats(extractor.dim)
        for start in range(0, args.n_samples, args.batch_size):
            b = min(args.batch_size, args.n_samples - start)
            stats.update(extractor(g(torch.randn(b, g.nz, generator=gen).to(device))))
        rows.append({"epoch": epoch, extractor.metric: frechet_distance(stats, data_stats, extractor.frechet)})
        progress.log(len(rows), force=True, **{extractor.metric: rows[-1][extractor.metric]})
    frame = pd.DataFrame(rows)
    if args.epoch == "auto":
        chosen = int(frame.loc[frame[extractor.metric].idxmin(), "epoch"])
    frame["chosen"] = frame.epoch == chosen
    frame["rule"] = "lowest distance to the data" if args.epoch == "auto" else "fixed by the config"
    if extractor.kind == "inception":  # True: weights that failed their SHA-256 check (tests only), not FID
        frame["inception_unverified"] = not extractor.verified
    saved, _ = load_generator(files[chosen])
    save_csv(frame, args.distances)
    save_torch(saved, args.out)
    progress.message(f"chose epoch {chosen} ({'auto' if args.epoch == 'auto' else 'fixed'})")


def section_of(args, stage: str) -> dict:
    try:
        return S.stage_section(args.settings, stage)
    except ValueError as exc:  # json.JSONDecodeError is one
        raise InputError(f"images {stage} --settings: {exc}") from exc


def cmd_pretrain(args) -> None:
    set_threads(args.threads)
    device = select_device(args.device)
    gsaved, g = load_generator(args.generator)
    # the stage's stream of the replicate (--seed), the same for every protocol, so that protocols differ by
    # their factors and not by their draws
    settings = VaeSettings.from_section(section_of(args, "pretrain"), "pretrain", stage_seed(args.seed, "pretrain"),
                                        args.decoder_bn, args.encoder_init)
    seed_everything(settings.seed)
    encoder = Encoder(g.nz, settings.ndf, g.channels, g.image_size, settings.encoder_init)
    progress = Progress("images pretrain", settings.iterations, settings.log_every)
    progress.message(f"generator of epoch {gsaved['epoch']}, sigma {settings.sigma}, {settings.iterations} "
                     f"iterations of {settings.batch_size}, decoder BatchNorm {settings.decoder_bn}, last layer "
                     f"{settings.encoder_init}, on {device}, {torch.get_num_threads()} threads")
    resume = resume_path(args.out)
    rows, encoder, _ = train_vae(ground_truth(g, settings.sigma), encoder, settings, device, resume, progress)
    save_csv(pd.DataFrame(rows), args.metrics)
    save_torch({"kind": "pretrained encoder", "encoder_spec": encoder_spec(encoder),
                "encoder": encoder.cpu().state_dict(), "generator_spec": generator_spec(g),
                "generator_epoch": gsaved["epoch"], "sigma": settings.sigma, "decoder_bn": settings.decoder_bn,
                "settings": asdict(settings)}, args.out)
    resume.unlink(missing_ok=True)


def cmd_joint(args) -> None:
    set_threads(args.threads)
    device = select_device(args.device)
    gsaved, g = load_generator(args.generator)
    esaved, encoder = load_pretrained(args.encoder)
    check_same(esaved["generator_spec"], generator_spec(g), f"pretrained encoder {args.encoder} vs generator {args.generator}",
               ("nz", "ngf", "channels", "image_size"))
    if esaved["decoder_bn"] != args.decoder_bn:
        raise InputError(f"joint --decoder-bn {args.decoder_bn}: the pretrained encoder {args.encoder} was trained "
                         f"with decoder BatchNorm {esaved['decoder_bn']}; both stages of a protocol use one mode")
    settings = VaeSettings.from_section(section_of(args, "joint"), "joint", stage_seed(args.seed, "joint"),
                                        args.decoder_bn, learn_sigma=args.sigma_variant == "learned",
                                        sigma=esaved["sigma"])
    seed_everything(settings.seed)
    progress = Progress("images joint", settings.iterations, settings.log_every)
    progress.message(f"sigma {settings.sigma} ({'learned' if settings.learn_sigma else 'fixed'}), "
                     f"{settings.iterations} iterations of {settings.batch_size}, decoder BatchNorm "
                     f"{settings.decoder_bn}, on {device}, "
                     f"{torch.get_num_threads()} threads")
    resume = resume_path(args.out)
    rows, encoder, decoder = train_vae(ground_truth(g, settings.sigma), encoder, settings, device, resume, progress)
    save_csv(pd.DataFrame(rows), args.metrics)
    save_torch({"kind": "joint vae", "encoder_spec": encoder_spec(encoder), "encoder": encoder.cpu().state_dict(),
                "generator_spec": generator_spec(g), "decoder": decoder.cpu().state_dict(),
                "learn_sigma": settings.learn_sigma, "sigma_truth": settings.sigma, "settings": asdict(settings)},
               args.out)
    resume.unlink(missing_ok=True)


# ---------------------------------------------------------------- evaluation and tables


def load_models(args) -> Models:
    """The ground truth, the pretrained encoder and the jointly trained VAE of one protocol's run, checked to match."""
    _, g = load_generator(args.generator)
    esaved, pretrained = load_pretrained(args.pretrained)
    jsaved, joint_encoder, joint_decoder = load_joint(args.joint)
    check_same(esaved["generator_spec"], generator_spec(g), f"{args.pretrained} vs {args.generator}")
    check_same(jsaved["generator_spec"], generator_spec(g), f"{args.joint} vs {args.generator}")
    return Models(ground_truth(g, esaved["sigma"]), pretrained, joint_encoder, joint_decoder)


def cmd_generate(args) -> None:
    set_threads(args.threads)
    device = select_device(args.device)
    section = section_of(args, "generate")
    ev = section["evaluate"]
    models = load_models(args).eval(device, section["channels_last"])
    progress = Progress("images generate", ev["n_samples"], ev["batch_size"])
    progress.message(f"{ev['n_samples']} images per set, sampling {args.sampling}, pixel noise {args.pixel_noise}, "
                     f"z {args.z_pairing}, on {device}")
    batches = image_batches(models, ev["n_samples"], ev["batch_size"], stage_seed(args.seed, "evaluate"), device,
                            args.sampling, args.pixel_noise, args.z_pairing, section["bf16"])
    write_sets(batches, ev["n_samples"], Path(args.out_dir), progress)


def cmd_grids(args) -> None:
    write_grids(Path(args.samples), Path(args.out_dir), args.grid_size)


def cmd_distances(args) -> None:
    set_threads(args.threads)
    device = select_device(args.device)
    first = D.load_images(Path(args.samples) / "ground_truth.npy")
    extractor = make_extractor(args.features, device, args.classifier, args.torch_home, first.shape[1],
                               args.inception_sha256, args.inception_unverified_ok)
    progress = Progress("images distances", 1, 1)
    progress.message(f"distance: {extractor.label}, {len(first)} images per set in {args.samples}")
    rows = set_distances(Path(args.samples), extractor, args.batch_size, progress)
    if extractor.kind == "inception":  # 1: weights that failed their SHA-256 check (tests only): not FID
        rows.append({"stage": "all", "metric": "inception_unverified", "image_set": "",
                     "value": float(not extractor.verified), "n": 0})
    save_csv(pd.DataFrame(rows), args.out)


def cmd_heldout(args) -> None:
    set_threads(args.threads)
    device = select_device(args.device)
    section = section_of(args, "heldout")
    ev = section["evaluate"]
    models = load_models(args)
    rows = heldout(models, ev["n_eval"], ev["batch_size"], stage_seed(args.seed, "heldout"), device,
                   section["channels_last"])
    save_csv(pd.DataFrame(rows), args.out)




def cmd_curves(args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..common import plot_seeds, save_figure
    if len(args.pretrain) != len(args.joint) or [seed_of(p) for p in args.pretrain] != [seed_of(p) for p in args.joint]:
        raise InputError("images curves: --pretrain and --joint need one file per seed each, in the same seed order")
    pretrain = [read_tidy(p, "pretraining curve", ["step", "loss"]) for p in args.pretrain]
    joint = [read_tidy(p, "joint-training curve", ["step", "elbo", "reconstruction", "kl"]) for p in args.joint]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    plot_seeds(axes[0], [(c.step, c.loss) for c in pretrain], "tab:blue", "-log q(z|x)")
    axes[0].set_title("encoder pretraining")
    axes[0].set_ylabel("nats per image (training batches)")
    plot_seeds(axes[1], [(c.step, c.elbo) for c in joint], "tab:green", "ELBO")
    axes[1].set_title("joint training")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.legend(fontsize=8)
    fig.suptitle(f"Faces experiment, {args.setting}")
    fig.tight_layout()
    save_figure(fig, args.out, dpi=110)
    plt.close(fig)


DISTANCE_COLUMNS = ["stage", "metric", "image_set", "value"]
NOT_LOGGED = float("nan")  # the reference's pretraining script logs no ELBO, so there is no statistic to compare


def _values(path, what: str) -> pd.DataFrame:
    df = read_tidy(path, what, DISTANCE_COLUMNS)
    try:
        df["value"] = df["value"].astype(float)
    except ValueError as exc:
        raise InputError(f"{what} {path}: a value is not a number ({exc})") from None
    return df


def run_values(distances, held, curve) -> dict:
    """One run (a seed, a protocol, a sigma variant) from its three files: {distance name, floor, unverified,
    learned, stages: {stage: {column: value}}}."""
    what = f"images distances {distances}"
    dist = _values(distances, "images distances")
    found = [m for m in FEATURES.values() if m in set(dist.metric)]
    if len(found) != 1:
        raise InputError(f"{what}: expected exactly one distance among {sorted(FEATURES.values())}")
    fd = found[0]
    ho = _values(held, "images held-out metrics")

    def distance(image_set):
        return one_value(dist, what, metric=fd, image_set=image_set)

    def held_value(stage, metric):
        return one_value(ho, f"images held-out metrics {held}", stage=stage, metric=metric)

    joint_curve = read_tidy(curve, "joint-training curve", ["step", "elbo", "elbo_ema"])
    floor = distance("ground_truth_resample")
    stages = {
        "pretrain": {"elbo": held_value("pretrain", "elbo"), "elbo_ema (reference statistic)": NOT_LOGGED,
                     f"{fd} reconstructions": distance("pretrained_reconstruction"), f"{fd} prior samples": floor,
                     "decoder_drift": 0.0},
        "joint": {"elbo": held_value("joint", "elbo"),
                  "elbo_ema (reference statistic)": float(joint_curve.elbo_ema.iloc[-1]),
                  f"{fd} reconstructions": distance("joint_reconstruction"),
                  f"{fd} prior samples": distance("joint_prior"), "decoder_drift": held_value("joint", "decoder_drift"),
                  "sigma": held_value("joint", "sigma")},
    }
    unverified = bool(((dist.metric == "inception_unverified") & (dist.value == 1)).any())
    return {"fd": fd, "floor": floor, "unverified": unverified, "learned": held_value("joint", "learn_sigma") == 1,
            "stages": stages}


def runs_of(args) -> tuple[dict, str, bool]:
    """({(protocol path, sigma variant): {seed: run_values}}, distance name, unverified) from the aligned
    --distances, --heldout, --curves; every run must have the same distance and Inception verification."""
    lists = {"--distances": args.distances, "--heldout": args.heldout, "--curves": args.curves}
    if len({len(v) for v in lists.values()}) != 1:
        raise InputError(f"images: {', '.join(lists)} need one file per run each, in one order "
                         f"(got {', '.join(f'{k} {len(v)}' for k, v in lists.items())})")
    runs: dict = {}
    for files in zip(*lists.values()):
        try:
            protocol, sigma = S.protocol_of(files[0])
            trainings = {S.training_of(f) for f in files}
        except ValueError as exc:
            raise InputError(str(exc)) from None
        seed = seed_of(files[0])
        if {seed_of(f) for f in files} != {seed} or trainings != {(S.training_dir(protocol), sigma)}:
            raise InputError(f"images: the files {list(files)} are not of one run (seed, protocol, sigma variant)")
        values = run_values(*files)
        if (sigma == "learned") != values["learned"]:
            raise InputError(f"images: {files[1]} says learn_sigma {values['learned']}, its path sigma-{sigma}")
        key = (S.run_dir(protocol, sigma), sigma)
        if seed in runs.setdefault(key, {}):
            raise InputError(f"images: two runs of seed {seed} under {key[0]}")
        runs[key][seed] = values
    kinds = {(v["fd"], v["unverified"]) for run in runs.values() for v in run.values()}
    if len(kinds) != 1:
        raise InputError(f"images: the runs differ in distance or Inception verification ({sorted(kinds)}); they "
                         "come from different configurations")
    (fd, unverified), = kinds
    return runs, fd, unverified


def tolerance_of(args) -> tuple[bool, float]:
    """(the floor rule, the fixed tolerance) of --fd-tolerance: with 'floor' each seed's rise less its own floor
    must exceed 0."""
    by_floor = args.fd_tolerance == "floor"
    return by_floor, 0.0 if by_floor else float(args.fd_tolerance)


def distance_names(fd: str, unverified: bool) -> tuple[str, str]:
    """(the distance in a table note, the distance in a claim)."""
    if fd != "fid":
        return "Frechet distance on digits-classifier features (fd_digits, not FID)", "Frechet distance"
    if unverified:
        return ("Frechet distance on Inception features from UNVERIFIED weights (columns named fid, but NOT FID: the "
                "weights file failed its SHA-256 check and was accepted by images.inception_unverified_ok, for tests "
                "and wiring checks only)", "Frechet distance on unverified Inception weights (not FID)")
    return "FID (Inception features)", "FID"


def rises(run: dict, column: str, less_floor: bool) -> dict:
    """Per seed: joint minus pretrain of `column`, less the seed's floor if asked (the distance's noise level)."""
    return {k: v["stages"]["joint"][column] - v["stages"]["pretrain"][column] - (v["floor"] if less_floor else 0.0)
            for k, v in run.items()}


def seeds_text(seeds) -> str:
    return (f"Mean (standard deviation) over {len(seeds)} seeds ({', '.join(map(str, seeds))}; each its own encoder "
            "initialisation, pretraining and joint-training draws and evaluation draws, one shared ground-truth "
            "generator)" if len(seeds) > 1 else f"One seed ({seeds[0]})")


def cmd_tabulate(args) -> None:
    runs, fd, unverified = runs_of(args)
    protocols = {tuple(S.protocol_of(path)[0].items()) for path, _ in runs}
    if len(protocols) != 1:
        raise InputError("images tabulate: the runs are of different protocols; the table is of one")
    protocol = dict(protocols.pop())
    rows, claims, seed_sets = [], [], set()
    by_floor, tolerance = tolerance_of(args)
    above = " beyond the floor" if by_floor else ""
    note_name, distance_name = distance_names(fd, unverified)
    for (_, sigma), run in runs.items():
        seeds = sorted(run)
        seed_sets.add(tuple(seeds))
        rows += [{"seed": k, "decoder_sigma": sigma, "stage": PHASES[phase], **run[k]["stages"][phase]}
                 for k in seeds for phase in ("pretrain", "joint")]
        floors = np.array([run[k]["floor"] for k in seeds])
        floor_text = with_spread(floors.mean(), floors.std(ddof=1) if len(floors) > 1 else float("nan"))
        beyond = (f"; each seed's rise minus its floor (two independent ground-truth draws, {floor_text})"
                  if by_floor else "")
        setting = args.setting if sigma == "fixed" else f"{args.setting}, sigma learned"
        claims += [
            seeds_claim(EXPERIMENT, setting, "joint training raises the ELBO", "elbo", rises(run, "elbo", False),
                        "increase", "the same seed after pretraining", by_construction=True),
            seeds_claim(EXPERIMENT, setting, f"joint training raises the {distance_name} of the reconstructions{above}",
                        f"{fd} reconstructions", rises(run, f"{fd} reconstructions", by_floor), "increase",
                        f"the same seed's pretrained reconstructions{beyond}", tolerance),
            seeds_claim(EXPERIMENT, setting, "joint training moves the decoder away from the ground truth: "
                        f"{distance_name} of its prior samples rises{above}",
                        f"{fd} prior samples", rises(run, f"{fd} prior samples", by_floor), "increase",
                        f"the ground-truth decoder's samples of the same seed (the floor){beyond}", tolerance),
        ]
    table = pd.DataFrame(rows)
    save_csv(table, args.per_seed)
    columns = [c for c in table.columns if c not in ("seed", "decoder_sigma", "stage")]
    summary = mean_std(table, ["decoder_sigma", "stage"], columns)
    summary = with_published(summary, load_published(args.published), EXPERIMENT, ["elbo", "fid"])
    fixed = summary.decoder_sigma == "fixed"  # the published numbers are of the fixed-sigma run
    for column in [c for c in summary.columns if "published" in c]:
        summary.loc[~fixed, column] = float("nan")
    seeds = sorted({k for s in seed_sets for k in s})
    note = (f"{seeds_text(seeds)}; per-seed rows in table_per_seed.csv. Protocol: {S.describe(protocol)}. "
            f"ELBO: nats per image on a fixed held-out set of ground-truth samples (one z sample per image, analytic "
            f"KL), eval mode; elbo_ema: the reference script's statistic, its moving average (decay 0.999, from 0) "
            f"of the training batches' ELBOs, in the training's BatchNorm mode (its pretraining script logs none). "
            f"{note_name} against ground-truth decoder samples; reconstructions go through the stage's encoder and "
            f"decoder; the pretrain row's prior samples are an independent ground-truth draw, i.e. the distance's "
            f"floor at this sample size. Decoder drift: mean squared difference per pixel between the jointly "
            f"trained and the ground-truth decoder's means on the same z (0 before joint training by construction). "
            f"decoder_sigma: joint training's decoder sigma, the ground truth's (fixed) or learned from it. "
            f"Published numbers are for CelebA 64x64 with sigma 0.05, fixed sigma, and the reference protocol (FID "
            f"between ground-truth samples and reconstructions), comparable only in the paper preset.")
    write_table(summary, args.csv, args.md, title=f"Faces experiment, {args.setting}", note=note)
    if unverified:
        print(f"[images tabulate] WARNING: {args.distances} come from UNVERIFIED Inception weights: their 'fid' "
              "numbers are NOT FID, and the table and claims say so", file=sys.stderr, flush=True)
    write_claims(claims, args.claims)


def cmd_ablate(args) -> None:
    """The protocol ablation: per row, the rise of the reconstructions' distance under joint training (and of the
    prior samples'), over seeds, and two claims (the full reference protocol's rise; the single factor that
    accounts for most of it)."""
    runs, fd, unverified = runs_of(args)
    by_path = {key[0]: run for key, run in runs.items()}
    _, distance_name = distance_names(fd, unverified)
    by_floor, tolerance = tolerance_of(args)
    rise, rows = {}, []
    for name in args.rows:
        path = S.run_dir(S.ablation_protocol(name), "fixed")
        if path not in by_path:
            raise InputError(f"images ablate: no runs of row '{name}' (expected files under {path}/)")
        run = by_path[path]
        rise[name] = rises(run, f"{fd} reconstructions", False)
        prior = rises(run, f"{fd} prior samples", False)
        pv = paired_verdict([rise[name][k] for k in sorted(run)], "increase")
        seeds = sorted(run)
        stage = lambda phase, column: [run[k]["stages"][phase][column] for k in seeds]  # noqa: E731
        factors = "every factor at the reference's value" if name == "reference" else S.describe(S.ablation_protocol(name))
        row = {"protocol": name, "factors": factors, "seeds": len(seeds),
               f"{fd} reconstructions pretrained": np.mean(stage("pretrain", f"{fd} reconstructions")),
               f"{fd} reconstructions joint": np.mean(stage("joint", f"{fd} reconstructions")),
               "rise": pv.mean, "rise low": pv.low, "rise high": pv.high,
               "rise beyond floor": np.mean([rise[name][k] - run[k]["floor"] for k in seeds]),
               "floor": np.mean([run[k]["floor"] for k in seeds]),
               f"{fd} prior samples joint": np.mean(stage("joint", f"{fd} prior samples")),
               "prior rise": np.mean([prior[k] for k in seeds]),
               "decoder_drift": np.mean(stage("joint", "decoder_drift")),
               "elbo pretrained": np.mean(stage("pretrain", "elbo")), "elbo joint": np.mean(stage("joint", "elbo"))}
        rows.append(row)
    table = pd.DataFrame(rows)
    pub = load_published(args.published)
    published_fid = {stage: published(pub, EXPERIMENT, "fid", PHASES[stage]) for stage in ("pretrain", "joint")}
    published_rise = (published_fid["joint"][0][0] - published_fid["pretrain"][0][0]
                      if published_fid["joint"] and published_fid["pretrain"] else float("nan"))
    claims = []
    if "reference" in rise:
        run = by_path[S.run_dir(S.reference(), "fixed")]
        changes = {k: rise["reference"][k] - (run[k]["floor"] if by_floor else 0.0) for k in run}
        above = " beyond the floor" if by_floor else ""
        claims.append(seeds_claim(
            EXPERIMENT, args.setting, f"under the full reference protocol joint training raises the {distance_name} "
            f"of the reconstructions{above}, as published (FID rise {published_rise:.4g})",
            f"{fd} reconstructions", changes, "increase",
            "the same seed's pretrained reconstructions, both drawn by the reference protocol"
            + ("; each seed's rise minus its floor" if by_floor else ""), tolerance))
    singles = [name for name in args.rows if name in S.FACTORS]
    if "corrected" in rise and singles:
        # each factor's share: how much flipping it alone adds to the corrected protocol's rise, paired by seed
        added = {name: {k: rise[name][k] - rise["corrected"][k] for k in rise[name] if k in rise["corrected"]}
                 for name in singles}
        order = sorted(singles, key=lambda name: -np.mean(list(added[name].values())))
        top = order[0]
        total = ({k: rise["reference"][k] - rise["corrected"][k] for k in rise["reference"]}
                 if "reference" in rise else None)
        share = (f"; it is {np.mean(list(added[top].values())) / np.mean(list(total.values())):.0%} of the full "
                 f"reference protocol's {np.mean(list(total.values())):+.4g}" if total else "")
        not_run = [name for name in S.FACTORS if name not in singles]
        row = seeds_claim(EXPERIMENT, args.setting, f"of the reference protocol's factors run alone, {top} adds the "
                          f"most to the rise of the reconstructions' {distance_name} ({S.FACTORS[top].meaning})",
                          f"{fd} reconstructions", added[top], "increase",
                          f"the corrected protocol's rise, same seed{share}"
                          + (f"; not run alone: {', '.join(not_run)}" if not_run else ""))
        if len(order) > 1:  # it must also add more than the runner-up, by the same rule
            second = order[1]
            lead = paired_verdict([added[top][k] - added[second].get(k, float("nan")) for k in sorted(added[top])],
                                  "increase")
            row["control"] += f"; ahead of {second} by {lead.summary()}"
            if row["verdict"] == HOLDS and lead.verdict != HOLDS:
                row["verdict"] = INCONCLUSIVE
        claims.append(row)
    seeds = sorted({k for run in by_path.values() for k in run})
    note = (f"Means over {len(seeds)} seeds ({', '.join(map(str, seeds))}). Each row is one protocol: the corrected one, one factor alone at the reference "
            f"code's value, or every factor at it (reference). rise: the {distance_name} of the jointly trained "
            f"model's reconstructions minus that of the pretrained encoder's, with its 95% t-interval over seeds; "
            f"floor: the distance between two independent ground-truth draws; prior rise: of the joint decoder's "
            f"prior samples over the floor. Published (CelebA, FID, 200,000 images, the reference protocol): "
            f"{published_fid['pretrain'][0][0] if published_fid['pretrain'] else 'n/a'} -> "
            f"{published_fid['joint'][0][0] if published_fid['joint'] else 'n/a'}, a rise of {published_rise:.4g}.")
    save_csv(table, args.csv)
    shown = table.drop(columns=["rise low", "rise high"]).assign(
        rise=[f"{r.rise:+.4g} [{r['rise low']:+.4g}, {r['rise high']:+.4g}]" if np.isfinite(r["rise low"])
              else f"{r.rise:+.4g}" for _, r in table.iterrows()])
    save_text(markdown(shown, f"Faces protocol ablation, {args.setting}", note), args.md)
    write_claims(claims, args.claims)


# ---------------------------------------------------------------- command line


def _common(p, seed: bool = True) -> None:
    p.add_argument("--threads", type=int, default=1, help="CPU threads (the rule's threads)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    if seed:
        p.add_argument("--seed", type=int, required=True)


def _features(p) -> None:
    p.add_argument("--features", choices=sorted(FEATURES), required=True,
                   help="digits: the digits classifier's features (fd_digits); inception: pytorch-fid's (FID)")
    p.add_argument("--classifier", help="digits classifier file (--features digits)")
    p.add_argument("--torch-home", help="TORCH_HOME holding hub/checkpoints/" + D.INCEPTION_FILE + " (--features inception)")
    p.add_argument("--inception-sha256", default="",
                   help="pinned SHA-256 (hex) of the Inception weights; '' checks only that it starts with "
                        + D.INCEPTION_SHA256_PREFIX + " (--features inception)")
    p.add_argument("--inception-unverified-ok", type=parse_bool, default=False,
                   help="true: load Inception weights that fail the SHA-256 check, with a warning (tests and wiring "
                        "checks with random weights only; the distances are then NOT FID and are labelled so)")


def _settings(p, stage: str) -> None:
    p.add_argument("--settings", required=True,
                   help=f"the {stage} keys of the config's images section as JSON: " + ", ".join(S.STAGE_KEYS[stage]))


def _factor(p, name: str) -> None:
    factor = S.FACTORS[name]
    p.add_argument(f"--{name.replace('_', '-')}", choices=factor.values, default=factor.corrected,
                   help=f"protocol factor (default {factor.corrected}; the reference: {factor.reference})")


def _models(p) -> None:
    p.add_argument("--generator", required=True, help="the ground-truth generator (choose-generator's output)")
    p.add_argument("--pretrained", required=True, help="pretrain's encoder file")
    p.add_argument("--joint", required=True, help="joint's model file")


def _runs(p) -> None:
    p.add_argument("--distances", nargs="+", required=True, help="distances CSV of every run (seed<k>/.../)")
    p.add_argument("--heldout", nargs="+", required=True, help="heldout CSV of every run, same order")
    p.add_argument("--curves", nargs="+", required=True, help="joint_curve.csv of every run, same order")
    p.add_argument("--published", required=True)
    p.add_argument("--setting", required=True, help="the setting's name in the table and claims")
    p.add_argument("--fd-tolerance", type=_tolerance, default="0",
                   help="rise of FID/FD the claims need: a number, or 'floor' for the measured distance between two "
                        "independent ground-truth draws (the distance's noise level at this sample size)")
    p.add_argument("--csv", required=True)
    p.add_argument("--md", required=True)
    p.add_argument("--claims", required=True)


def _tolerance(text: str) -> str:
    if text != "floor":
        try:
            float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number or 'floor', got {text!r}") from None
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vae_approx.images", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare-digits", help="scikit-learn's digits as a uint8 image array + labels")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--out", required=True, help="uint8 [N, 1, size, size] .npy")
    p.add_argument("--labels", required=True, help="int64 [N] .npy")
    p.set_defaults(func=cmd_prepare_digits)

    p = sub.add_parser("synth-celeba-zip", help="a small zip of JPEGs in CelebA's exact layout")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_synth_celeba_zip)

    p = sub.add_parser("fetch-celeba", help="download img_align_celeba.zip (else: say where to put it)")
    p.add_argument("--out", required=True, help="resources/celeba/img_align_celeba.zip")
    p.set_defaults(func=cmd_fetch_celeba)

    p = sub.add_parser("prepare-celeba", help="the zip's JPEGs, resized and centre-cropped, as a uint8 array")
    p.add_argument("--zip", required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--expected-count", type=int, default=0, help="images the zip must hold (202599); 0: no check")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_prepare_celeba)

    p = sub.add_parser("fetch-inception", help="pytorch-fid's Inception weights into TORCH_HOME")
    p.add_argument("--torch-home", required=True)
    p.add_argument("--sha256", default="", help="pinned SHA-256 (hex); '' skips the check")
    p.add_argument("--url", default="", help="default: pytorch_fid.inception.FID_WEIGHTS_URL (whose SHA-256 must "
                   "start with 6726825d, the hash in its file name; another URL skips that check)")
    p.set_defaults(func=cmd_fetch_inception)

    p = sub.add_parser("train-classifier", help="the digits classifier whose features give fd_digits")
    p.add_argument("--images", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--val-fraction", type=float, default=0.2)
    _common(p)
    p.add_argument("--out", required=True)
    p.add_argument("--metrics", required=True)
    p.set_defaults(func=cmd_train_classifier)

    p = sub.add_parser("train-gan", help="DCGAN; the generator of every epoch into --out-dir")
    p.add_argument("--images", required=True)
    p.add_argument("--nz", type=int, required=True)
    p.add_argument("--ngf", type=int, required=True)
    p.add_argument("--ndf", type=int, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--beta1", type=float, required=True)
    p.add_argument("--checkpoint-every", type=int, required=True, help="iterations between resume checkpoints")
    p.add_argument("--log-every", type=int, default=50)
    _common(p)
    p.add_argument("--out-dir", required=True, help="directory of epoch_NNN.pt")
    p.add_argument("--losses", required=True, help="per-epoch losses (tidy CSV)")
    p.set_defaults(func=cmd_train_gan)

    p = sub.add_parser("choose-generator", help="the ground-truth generator: a given epoch or the lowest distance")
    p.add_argument("--generators", required=True, help="train-gan's --out-dir")
    p.add_argument("--images", required=True)
    p.add_argument("--epoch", required=True, help="'auto' or an epoch number (the reproduction: 44)")
    _features(p)
    p.add_argument("--n-samples", type=int, required=True, help="generated images per epoch (and data images)")
    p.add_argument("--batch-size", type=int, default=500)
    _common(p)
    p.add_argument("--out", required=True, help="the chosen generator file")
    p.add_argument("--distances", required=True, help="per-epoch distances and the choice (CSV)")
    p.set_defaults(func=cmd_choose_generator)

    p = sub.add_parser("pretrain", help="encoder by log q(z|x) on samples of the ground-truth decoder")
    p.add_argument("--generator", required=True, help="the ground-truth generator (choose-generator's output)")
    _settings(p, "pretrain")
    _factor(p, "decoder_bn")
    _factor(p, "encoder_init")
    _common(p)
    p.add_argument("--out", required=True)
    p.add_argument("--metrics", required=True, help="the training curve (tidy CSV)")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("joint", help="encoder + a copy of the decoder by ELBO on ground-truth samples")
    p.add_argument("--generator", required=True, help="the ground-truth generator (choose-generator's output)")
    p.add_argument("--encoder", required=True, help="the pretrained encoder (pretrain's output; gives sigma)")
    _settings(p, "joint")
    _factor(p, "decoder_bn")
    p.add_argument("--sigma-variant", choices=S.SIGMA_VARIANTS, default="fixed",
                   help="the decoder's sigma: fixed (the ground truth's) or learned (the original paper's second variant)")
    _common(p)
    p.add_argument("--out", required=True)
    p.add_argument("--metrics", required=True, help="the training curve (tidy CSV)")
    p.set_defaults(func=cmd_joint)

    p = sub.add_parser("generate", help="the image sets of one protocol as uint8 arrays, and their PNG grids")
    _models(p)
    _settings(p, "generate")
    for name in ("sampling", "pixel_noise", "z_pairing"):
        _factor(p, name)
    _common(p)
    p.add_argument("--out-dir", required=True, help="directory of <set>.npy, one per image set")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("grids", help="a PNG grid of each image set's first images, and the comparison figure")
    p.add_argument("--samples", required=True, help="generate's --out-dir")
    p.add_argument("--grid-size", type=int, default=64, help="images per grid")
    p.add_argument("--out-dir", required=True, help="directory of the PNG grids")
    p.set_defaults(func=cmd_grids)

    p = sub.add_parser("distances", help="Frechet distance of every image set to the ground-truth set")
    p.add_argument("--samples", required=True, help="generate's --out-dir")
    _features(p)
    p.add_argument("--batch-size", type=int, default=500, help="images per feature batch")
    _common(p, seed=False)
    p.add_argument("--out", required=True, help="distances (tidy CSV)")
    p.set_defaults(func=cmd_distances)

    p = sub.add_parser("heldout", help="held-out ELBOs, decoder drift and sigma, in eval mode")
    _models(p)
    _settings(p, "heldout")
    _common(p)
    p.add_argument("--out", required=True, help="metrics (tidy CSV)")
    p.set_defaults(func=cmd_heldout)

    p = sub.add_parser("curves", help="training curves, one thin line per seed and the mean")
    p.add_argument("--pretrain", nargs="+", required=True, help="pretrain_curve.csv of every seed")
    p.add_argument("--joint", nargs="+", required=True, help="joint_curve.csv of every seed, same order")
    p.add_argument("--setting", required=True, help="the setting's name in the title")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_curves)

    p = sub.add_parser("tabulate", help="results table and claims of one protocol, over seeds and sigma variants")
    _runs(p)
    p.add_argument("--per-seed", required=True, help="the table's per-seed rows (CSV)")
    p.set_defaults(func=cmd_tabulate)

    p = sub.add_parser("ablate", help="the protocol ablation's table and claims, over seeds")
    p.add_argument("--rows", nargs="+", choices=S.ABLATION_ROWS, required=True, help="the ablation's protocols")
    _runs(p)
    p.set_defaults(func=cmd_ablate)

    run_stage(parser, argv)


if __name__ == "__main__":
    main()
