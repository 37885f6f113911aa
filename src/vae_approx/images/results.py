"""The faces runs' records -> the results table, the protocol ablation's table, and their claims.

Pure functions on DataFrames, no files: the records are the concatenated per-run CSVs, each row
carrying its run's identity as its first columns (settings.SAMPLED_RUN for the distances,
settings.JOINT_RUN for the held-out metrics and the joint-training curves). A run is one seed of
one protocol and sigma variant; runs are grouped by those columns, in the records' order (the
config's: sigma variant, then seed), and the main table's protocol is read from them. Records that
do not fit (a run twice, a run missing from one kind of record, mixed distances) raise InputError
naming the problem. Claims are decided by vae_approx.tables.paired_verdict.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from ..common import InputError
from ..tables import (FAILS, HOLDS, INCONCLUSIVE, Shown, mean_std, one_value, paired_verdict, published, seeds_claim, with_published,
                      with_spread)
from .settings import (DISTANCES, EXPERIMENT, FACTORS, FLOOR, JOINT_RUN, LIKELIHOOD_COLUMNS, LIKELIHOOD_ROWS, PHASES,
                       SAMPLED_RUN, SIGMA_VARIANTS, TRAINING_FACTORS, ablation_protocol, describe, learns_sigma)

RUN = tuple(SAMPLED_RUN)        # the identity columns of a sampled run (its distances)
TRAINING = tuple(JOINT_RUN)     # those of its training: held-out metrics, joint curve
DISTANCE_COLUMNS = ("stage", "metric", "image_set", "value")  # of the distances and held-out records
CURVE_COLUMNS = ("step", "elbo", "elbo_ema")                   # of the joint-training curves
NOT_LOGGED = float("nan")  # the reference's pretraining script logs no ELBO, so there is no statistic to compare


class Table(NamedTuple):
    frame: pd.DataFrame  # the table as CSV holds it
    title: str           # its Markdown title
    note: str            # the note below it
    shown: Shown | None = None  # how Markdown and HTML show it (tables.Shown)


UNIT = "nats/image"
SHORT_STAGES = {"encoder pretrained (decoder frozen)": "pretrained", "joint training": "joint"}


def distance_unit(fd: str) -> str:
    """The unit a Frechet distance is given in: the features it is computed on."""
    return "FID" if fd == DISTANCES["inception"] else "FD (digits features)"


def short_distance(fd: str) -> str:
    return "FID" if fd == DISTANCES["inception"] else "FD"


def faces_shown(fd: str) -> Shown:
    """The faces table as people read it: a row per quantity, a column per sigma variant and stage."""
    return Shown(
        transpose=("decoder_sigma", "stage"), values={**SHORT_STAGES, "fixed": "sigma fixed", "learned": "sigma learned"},
        labels={"elbo": f"ELBO, {UNIT} ↑", f"{fd} reconstructions": f"reconstructions' {distance_unit(fd)} ↓",
                f"{fd} prior samples": f"prior samples' {distance_unit(fd)} ↓",
                "decoder_drift": "decoder drift, squared difference per pixel ↓",
                "elbo_ema (reference statistic)": f"ELBO moving average (the reference's statistic), {UNIT}",
                "sigma": "decoder sigma", "fid": "FID ↓"},
        notes=("Columns: sigma fixed or learned in joint training; pretrained = the encoder pretrained against the "
               "ground-truth decoder, frozen; joint = after joint training. A dash: not measured at that stage (the "
               "reference's pretraining logs no moving average; published numbers exist for fixed sigma only).",))

# ---------------------------------------------------------------- records -> runs


def _named(identity: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in identity.items())


def _checked(df: pd.DataFrame, what: str, columns) -> pd.DataFrame:
    """`df` holding `columns`, its value column as numbers (where it has one)."""
    missing = [c for c in columns if c not in df.columns]
    if missing or df.empty:
        raise InputError(f"{what}: expected rows with columns {', '.join(columns)}"
                         + (f"; missing {', '.join(missing)}" if missing else "; no rows"))
    if "value" in columns:
        try:
            df = df.assign(value=df["value"].astype(float))
        except ValueError as exc:
            raise InputError(f"{what}: a value is not a number ({exc})") from None
    return df


def _by(df: pd.DataFrame, columns, what: str, unique) -> dict:
    """{identity tuple: its rows} in the records' order; a run whose rows repeat `unique` is an InputError."""
    groups = {}
    for key, group in df.groupby(list(columns), sort=False):
        key = tuple(int(v) if c == "seed" else v for c, v in zip(columns, key))
        if group.duplicated(list(unique)).any():
            raise InputError(f"{what}: two records of {_named(dict(zip(columns, key)))} (the run twice); one each")
        groups[key] = group
    return groups


def run_values(dist: pd.DataFrame, held: pd.DataFrame, curve: pd.DataFrame, name: str) -> dict:
    """One run (a seed, a protocol, a sigma variant) from its records: {distance name, floor, unverified,
    learned, stages: {stage: {column: value}}}."""
    what = f"images distances of {name}"
    found = [m for m in DISTANCES.values() if m in set(dist.metric)]
    if len(found) != 1:
        raise InputError(f"{what}: expected exactly one distance among {sorted(DISTANCES.values())}")
    fd = found[0]

    def distance(image_set):
        return one_value(dist, what, metric=fd, image_set=image_set)

    def held_value(stage, metric):
        return one_value(held, f"images held-out metrics of {name}", stage=stage, metric=metric)

    floor = distance("ground_truth_resample")
    stages = {
        "pretrain": {"elbo": held_value("pretrain", "elbo"), "elbo_ema (reference statistic)": NOT_LOGGED,
                     f"{fd} reconstructions": distance("pretrained_reconstruction"), f"{fd} prior samples": floor,
                     "decoder_drift": 0.0},
        "joint": {"elbo": held_value("joint", "elbo"),
                  "elbo_ema (reference statistic)": float(curve.sort_values("step", kind="stable").elbo_ema.iloc[-1]),
                  f"{fd} reconstructions": distance("joint_reconstruction"),
                  f"{fd} prior samples": distance("joint_prior"), "decoder_drift": held_value("joint", "decoder_drift"),
                  "sigma": held_value("joint", "sigma")},
    }
    unverified = bool(((dist.metric == "inception_unverified") & (dist.value == 1)).any())
    return {"fd": fd, "floor": floor, "unverified": unverified, "learned": held_value("joint", "learn_sigma") == 1,
            "stages": stages}


def runs_of(distances: pd.DataFrame, heldout: pd.DataFrame, curves: pd.DataFrame) -> tuple[dict, str, bool]:
    """({(protocol, sigma variant): {seed: run_values}}, distance name, unverified) from the records, in their
    order; a protocol is a tuple of (factor, value) in FACTORS' order. Every run needs its distances, held-out
    metrics and joint curve, and all must have the same distance and Inception verification."""
    dist = _by(_checked(distances, "images distances", RUN + DISTANCE_COLUMNS), RUN, "images distances",
               ["metric", "image_set"])
    held = _by(_checked(heldout, "images held-out metrics", TRAINING + DISTANCE_COLUMNS), TRAINING,
               "images held-out metrics", ["stage", "metric"])
    curve = _by(_checked(curves, "images joint-training curves", TRAINING + CURVE_COLUMNS), TRAINING,
                "images joint-training curves", ["step"])
    runs: dict = {}
    for key, rows in dist.items():
        identity = dict(zip(RUN, key))
        training = key[:len(TRAINING)]
        for kind, records in (("held-out metrics", held), ("joint-training curve", curve)):
            if training not in records:
                raise InputError(f"images: no {kind} of {_named(dict(zip(TRAINING, training)))}, whose distances "
                                 "are given; every run needs its distances, held-out metrics and joint curve")
        values = run_values(rows, held[training], curve[training], _named(identity))
        if learns_sigma(identity["sigma_variant"]) != values["learned"]:
            raise InputError(f"images: the held-out metrics of {_named(identity)} say learn_sigma {values['learned']}")
        protocol = tuple((name, identity[name]) for name in FACTORS)
        runs.setdefault((protocol, identity["sigma_variant"]), {})[identity["seed"]] = values
    used = {key[:len(TRAINING)] for key in dist}
    for kind, records in (("held-out metrics", held), ("joint-training curve", curve)):
        extra = [_named(dict(zip(TRAINING, key))) for key in records if key not in used]
        if extra:
            raise InputError(f"images: the {kind} of {'; '.join(extra)} have no distances; every run needs all three")
    kinds = {(v["fd"], v["unverified"]) for run in runs.values() for v in run.values()}
    if len(kinds) != 1:
        raise InputError(f"images: the runs differ in distance or Inception verification ({sorted(kinds)}); they "
                         "come from different configurations")
    (fd, unverified), = kinds
    return runs, fd, unverified


# ---------------------------------------------------------------- shared by both tables


def tolerance_of(fd_tolerance) -> tuple[bool, float]:
    """(the floor rule, the fixed tolerance) of images.fd_tolerance: with FLOOR each seed's rise less its own
    floor must exceed 0."""
    by_floor = fd_tolerance == FLOOR
    return by_floor, 0.0 if by_floor else float(fd_tolerance)


def distance_names(fd: str, unverified: bool) -> tuple[str, str]:
    """(the distance in a table note, the distance in a claim)."""
    if fd != DISTANCES["inception"]:
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


# ---------------------------------------------------------------- the results table


def faces_table(distances: pd.DataFrame, heldout: pd.DataFrame, curves: pd.DataFrame, pub: pd.DataFrame,
                setting: str, fd_tolerance) -> tuple[Table, pd.DataFrame, list[dict], bool]:
    """The table of one protocol over seeds and sigma variants (mean and std), its per-seed rows, its claims
    (three per sigma variant) and whether the distances come from unverified Inception weights."""
    runs, fd, unverified = runs_of(distances, heldout, curves)
    protocols = {protocol for protocol, _ in runs}
    if len(protocols) != 1:
        raise InputError("images tabulate: the runs are of different protocols; the table is of one")
    protocol = dict(protocols.pop())
    rows, claims, seed_sets = [], [], set()
    by_floor, tolerance = tolerance_of(fd_tolerance)
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
        name = setting if not learns_sigma(sigma) else f"{setting}, sigma learned"
        variant = ", sigma learned" if learns_sigma(sigma) else ""
        claims += [
            seeds_claim(EXPERIMENT, name, "joint training raises the ELBO", "elbo", rises(run, "elbo", False),
                        "increase", "the same seed after pretraining", by_construction=True,
                        name=f"ELBO rises{variant}", unit=UNIT),
            seeds_claim(EXPERIMENT, name, f"joint training raises the {distance_name} of the reconstructions{above}",
                        f"{fd} reconstructions", rises(run, f"{fd} reconstructions", by_floor), "increase",
                        f"the same seed's pretrained reconstructions{beyond}", tolerance,
                        name=f"reconstructions' {short_distance(fd)} rises{above}{variant}", unit=distance_unit(fd)),
            seeds_claim(EXPERIMENT, name, "joint training moves the decoder away from the ground truth: "
                        f"{distance_name} of its prior samples rises{above}",
                        f"{fd} prior samples", rises(run, f"{fd} prior samples", by_floor), "increase",
                        f"the ground-truth decoder's samples of the same seed (the floor){beyond}", tolerance,
                        name=f"prior samples' {short_distance(fd)} rises{above}{variant}", unit=distance_unit(fd)),
        ]
    per_seed = pd.DataFrame(rows)
    columns = [c for c in per_seed.columns if c not in ("seed", "decoder_sigma", "stage")]
    summary = mean_std(per_seed, ["decoder_sigma", "stage"], columns)
    summary = with_published(summary, pub, EXPERIMENT, ["elbo", "fid"])
    fixed = summary.decoder_sigma == SIGMA_VARIANTS[0]  # the published numbers are of the fixed-sigma run
    for column in [c for c in summary.columns if "published" in c]:
        summary.loc[~fixed, column] = float("nan")
    seeds = sorted({k for s in seed_sets for k in s})
    note = (f"{seeds_text(seeds)}; per-seed rows in table_per_seed.csv. Protocol: {describe(protocol)}. "
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
    return Table(summary, f"Faces experiment, {setting}", note, faces_shown(fd)), per_seed, claims, unverified


# ---------------------------------------------------------------- the protocol ablation


def ablation_table(distances: pd.DataFrame, heldout: pd.DataFrame, curves: pd.DataFrame, pub: pd.DataFrame,
                   setting: str, fd_tolerance, rows) -> tuple[Table, pd.DataFrame, list[dict]]:
    """The protocol ablation: per row (ABLATION_ROWS; its runs selected by their factor columns, fixed sigma),
    the rise of the reconstructions' distance under joint training (and of the prior samples'), over seeds;
    two claims (the full reference protocol's rise; the single factor that accounts for most of it). Returns
    the table, the table as Markdown shows it (the rise with its interval) and the claims."""
    runs, fd, unverified = runs_of(distances, heldout, curves)
    _, distance_name = distance_names(fd, unverified)
    by_floor, tolerance = tolerance_of(fd_tolerance)

    def runs_of_row(name):
        protocol = ablation_protocol(name)
        key = (tuple((factor, protocol[factor]) for factor in FACTORS), SIGMA_VARIANTS[0])
        if key not in runs:
            raise InputError(f"images ablate: no runs of row '{name}' (expected records with sigma_variant "
                             f"{SIGMA_VARIANTS[0]}, {', '.join(f'{k} {v}' for k, v in protocol.items())})")
        return runs[key]

    rise, table_rows = {}, []
    for name in rows:
        run = runs_of_row(name)
        rise[name] = rises(run, f"{fd} reconstructions", False)
        prior = rises(run, f"{fd} prior samples", False)
        pv = paired_verdict([rise[name][k] for k in sorted(run)], "increase")
        seeds = sorted(run)
        stage = lambda phase, column: [run[k]["stages"][phase][column] for k in seeds]  # noqa: E731
        factors = "every factor at the reference's value" if name == "reference" else describe(ablation_protocol(name))
        table_rows.append({
            "protocol": name, "factors": factors, "seeds": len(seeds),
            f"{fd} reconstructions pretrained": np.mean(stage("pretrain", f"{fd} reconstructions")),
            f"{fd} reconstructions joint": np.mean(stage("joint", f"{fd} reconstructions")),
            "rise": pv.mean, "rise low": pv.low, "rise high": pv.high,
            "rise beyond floor": np.mean([rise[name][k] - run[k]["floor"] for k in seeds]),
            "floor": np.mean([run[k]["floor"] for k in seeds]),
            f"{fd} prior samples joint": np.mean(stage("joint", f"{fd} prior samples")),
            "prior rise": np.mean([prior[k] for k in seeds]),
            "decoder_drift": np.mean(stage("joint", "decoder_drift")),
            "elbo pretrained": np.mean(stage("pretrain", "elbo")), "elbo joint": np.mean(stage("joint", "elbo"))})
    table = pd.DataFrame(table_rows)
    published_fid = {stage: published(pub, EXPERIMENT, "fid", PHASES[stage]) for stage in ("pretrain", "joint")}
    published_rise = (published_fid["joint"][0][0] - published_fid["pretrain"][0][0]
                      if published_fid["joint"] and published_fid["pretrain"] else float("nan"))
    claims = []
    if "reference" in rise:
        run = runs_of_row("reference")
        changes = {k: rise["reference"][k] - (run[k]["floor"] if by_floor else 0.0) for k in run}
        above = " beyond the floor" if by_floor else ""
        claims.append(seeds_claim(
            EXPERIMENT, setting, f"under the full reference protocol joint training raises the {distance_name} "
            f"of the reconstructions{above}, as published (FID rise {published_rise:.4g})",
            f"{fd} reconstructions", changes, "increase",
            "the same seed's pretrained reconstructions, both drawn by the reference protocol"
            + ("; each seed's rise minus its floor" if by_floor else ""), tolerance,
            name=f"reference protocol: reconstructions' {short_distance(fd)} rises{above}", unit=distance_unit(fd)))
    singles = [name for name in rows if name in FACTORS]
    if "corrected" in rise and singles:
        claims.append(leading_factor_claim(rise, singles, setting, fd, distance_name))
    seeds = sorted({k for name in rows for k in runs_of_row(name)})
    note = (f"Means over {len(seeds)} seeds ({', '.join(map(str, seeds))}). Each row is one protocol: the corrected "
            f"one, one factor alone at the reference code's value, or every factor at it (reference). rise: the "
            f"{distance_name} of the jointly trained model's reconstructions minus that of the pretrained encoder's, "
            f"with its 95% t-interval over seeds; floor: the distance between two independent ground-truth draws; "
            f"prior rise: of the joint decoder's prior samples over the floor. Published (CelebA, FID, 200,000 "
            f"images, the reference protocol): "
            f"{published_fid['pretrain'][0][0] if published_fid['pretrain'] else 'n/a'} -> "
            f"{published_fid['joint'][0][0] if published_fid['joint'] else 'n/a'}, a rise of {published_rise:.4g}.")
    shown = table.drop(columns=["rise low", "rise high"]).assign(
        rise=[f"{r.rise:+.4g} [{r['rise low']:+.4g}, {r['rise high']:+.4g}]" if np.isfinite(r["rise low"])
              else f"{r.rise:+.4g}" for _, r in table.iterrows()])
    unit = distance_unit(fd)
    how = Shown(drop=("factors",), labels={
        f"{fd} reconstructions pretrained": "recon. pre", f"{fd} reconstructions joint": "recon. joint",
        "rise": "rise [95%]", "rise beyond floor": "rise - floor", f"{fd} prior samples joint": "prior joint",
        "prior rise": "prior - floor", "decoder_drift": "drift", "elbo pretrained": "ELBO pre",
        "elbo joint": "ELBO joint"}, notes=(
        f"Distances in {unit}: recon. = of the reconstructions (pre: the pretrained encoder's, joint: after joint "
        "training), prior = of the joint decoder's prior samples; floor = the distance between two independent "
        "ground-truth draws of the same size, what sampling alone gives; drift: the decoder's mean squared "
        f"difference per pixel from the ground truth's means on the same z; ELBO in {UNIT}.",
        "Why the reference protocol's rise has three numbers: 'rise' is joint minus pretrained; the claim "
        "'reference ... beyond the floor' decides 'rise - floor' seed by seed (the claims table's number); the "
        "leading-factor claim decides each factor's rise minus the corrected protocol's, seed by seed.",
        *(f"{r.protocol}: {r.factors}." for r in table.itertuples())))
    return Table(table, f"Faces protocol ablation, {setting}", note, how), shown, claims


def leading_factor_claim(rise: dict, singles: list, setting: str, fd: str, distance_name: str) -> dict:
    """Each factor's share: how much flipping it alone adds to the corrected protocol's rise, paired by seed;
    the claim names the factor that adds the most, and holds only if it also leads the runner-up by the same
    rule. `rise`: {ablation row: {seed: rise}}."""
    added = {name: {k: rise[name][k] - rise["corrected"][k] for k in rise[name] if k in rise["corrected"]}
             for name in singles}
    order = sorted(singles, key=lambda name: -np.mean(list(added[name].values())))
    top = order[0]
    total = ({k: rise["reference"][k] - rise["corrected"][k] for k in rise["reference"]}
             if "reference" in rise else None)
    share = (f"; it is {np.mean(list(added[top].values())) / np.mean(list(total.values())):.0%} of the full "
             f"reference protocol's {np.mean(list(total.values())):+.4g}" if total else "")
    not_run = [name for name in FACTORS if name not in singles]
    row = seeds_claim(EXPERIMENT, setting, f"of the reference protocol's factors run alone, {top} adds the "
                      f"most to the rise of the reconstructions' {distance_name} ({FACTORS[top].meaning})",
                      f"{fd} reconstructions", added[top], "increase",
                      f"the corrected protocol's rise, same seed{share}"
                      + (f"; not run alone: {', '.join(not_run)}" if not_run else ""),
                      name=f"{top} adds most to the rise", unit=distance_unit(fd))
    if len(order) > 1:  # it must also add more than the runner-up, by the same rule
        second = order[1]
        lead = paired_verdict([added[top][k] - added[second].get(k, float("nan")) for k in sorted(added[top])],
                              "increase")
        row["control"] += f"; ahead of {second} by {lead.summary()}"
        if row["verdict"] == HOLDS and lead.verdict != HOLDS:
            row["verdict"] = INCONCLUSIVE
    return row


# ---------------------------------------------------------------- the likelihood (AIS sandwich, BDMC, IWAE)

# The likelihood table's rows, in order: key -> label (nats per image in the table, per pixel beside).
LIKELIHOOD_QUANTITIES = {
    "truth_lower": "ground truth: log p(x), lower bound (forward AIS)",
    "truth_upper": "ground truth: log p(x), upper bound (reverse AIS from the true z)",
    "truth_width": "ground truth: the sandwich's width",
    "joint_lower": "joint decoder: log p(x), lower bound (forward AIS)",
    "joint_width": "joint decoder: BDMC width, on images it simulated",
    "drop": "ground truth's lower bound minus the joint decoder's",
    "margin": "(a) that, less both widths",
    "elbo_truth": "ELBO: pretrained encoder, ground truth",
    "elbo_joint": "ELBO: joint encoder and decoder",
    "elbo_rise": "(b) ELBO rise under joint training",
    "iwae_truth": "IWAE bound: pretrained encoder, ground truth",
    "iwae_joint": "IWAE bound: joint encoder and decoder",
    "gap_truth": "inference gap of the pretrained encoder, at least",
    "gap_joint": "inference gap of the joint encoder, at least",
}
LIKELIHOOD_TABLE_COLUMNS = ("protocol", *TRAINING[1:], "quantity", "label", "mean", "std", "per_pixel", "seeds",
                            "steps", "samples")


def protocol_name(identity: dict) -> str:
    """The likelihood row (settings.LIKELIHOOD_ROWS) a trained run's factors are: corrected, reference,
    or one training factor at the reference's value."""
    for row in LIKELIHOOD_ROWS:
        protocol = ablation_protocol(row)
        if all(protocol[name] == identity[name] for name in TRAINING_FACTORS):
            return row
    return _named({name: identity[name] for name in TRAINING_FACTORS})


def likelihood_values(rows: pd.DataFrame, what: str) -> tuple[dict, int, int, int]:
    """One seed's likelihood quantities (LIKELIHOOD_QUANTITIES) at its longest AIS schedule, with that T,
    the IWAE's K and the images' pixels. A missing estimate is an InputError naming the run."""
    T = int(rows.loc[rows.estimate == "ais_lower", "steps"].max()) if (rows.estimate == "ais_lower").any() else 0

    def get(decoder: str, images: str, estimate: str, steps: int) -> float:
        found = rows[(rows.decoder == decoder) & (rows.images == images) & (rows.estimate == estimate)
                     & (rows.steps == steps)]
        if len(found) != 1:
            raise InputError(f"{what}: {'no' if found.empty else 'more than one'} {estimate} of the {decoder} "
                             f"decoder on the {images}'s images at T {steps}; each run's likelihood.csv has one")
        return float(found.value.iloc[0])

    v = {"truth_lower": get("truth", "truth", "ais_lower", T), "truth_upper": get("truth", "truth", "ais_upper", T),
         "joint_lower": get("joint", "truth", "ais_lower", T)}
    v["truth_width"] = v["truth_upper"] - v["truth_lower"]
    v["joint_width"] = get("joint", "joint", "ais_upper", T) - get("joint", "joint", "ais_lower", T)
    v["drop"] = v["truth_lower"] - v["joint_lower"]
    v["margin"] = v["drop"] - v["truth_width"] - v["joint_width"]
    for decoder in ("truth", "joint"):
        v[f"elbo_{decoder}"] = get(decoder, "truth", "elbo", 0)
        v[f"iwae_{decoder}"] = get(decoder, "truth", "iwae", 0)
        v[f"gap_{decoder}"] = v[f"{decoder}_lower"] - v[f"elbo_{decoder}"]
    v["elbo_rise"] = v["elbo_joint"] - v["elbo_truth"]
    samples = int(rows.loc[rows.estimate == "iwae", "samples"].iloc[0])
    return {key: v[key] for key in LIKELIHOOD_QUANTITIES}, T, samples, int(rows.pixels.iloc[0])


def likelihood_table(records: pd.DataFrame, setting: str) -> tuple[Table, list[dict]]:
    """The likelihood table (one row per quantity and trained protocol and sigma variant: mean and std over
    seeds, nats per image, and per pixel) and claims (a) and (b) of each protocol and sigma variant."""
    records = _checked(records, "images likelihood", [*TRAINING, *LIKELIHOOD_COLUMNS])
    runs = _by(records, TRAINING, "images likelihood", ["decoder", "images", "estimate", "steps"])
    groups: dict[tuple, dict] = {}
    for key, rows in runs.items():
        identity = dict(zip(TRAINING, key))
        groups.setdefault(key[1:], {})[identity["seed"]] = likelihood_values(rows, f"images likelihood of "
                                                                                    f"{_named(identity)}")
    table, claims = [], []
    for group, seeds in groups.items():
        identity = dict(zip(TRAINING[1:], group))
        protocol = protocol_name(identity)
        values = {k: seeds[k][0] for k in sorted(seeds)}
        T, samples, pixels = seeds[min(seeds)][1:]
        for quantity, label in LIKELIHOOD_QUANTITIES.items():
            per_seed = np.array([v[quantity] for v in values.values()])
            std = per_seed.std(ddof=1) if len(per_seed) > 1 else float("nan")
            table.append({"protocol": protocol, **identity, "quantity": quantity, "label": label,
                          "mean": per_seed.mean(), "std": std, "per_pixel": per_seed.mean() / pixels,
                          "seeds": len(per_seed), "steps": T, "samples": samples})
        name = f"{setting}, {protocol} protocol" + (", sigma learned" if learns_sigma(identity["sigma_variant"]) else "")
        short = protocol + (", sigma learned" if learns_sigma(identity["sigma_variant"]) else "")
        a = seeds_claim(EXPERIMENT, name, "the joint decoder gives the ground truth's held-out images a lower "
                        "log-likelihood than the ground truth, by more than both AIS widths",
                        "log p(x) drop less widths (nats/image)", {k: v["margin"] for k, v in values.items()},
                        "increase", f"the ground truth's own log p(x) of its images; forward AIS at T {T} for both, "
                        "less the ground truth's sandwich width and the joint decoder's BDMC width",
                        name=f"(a) log p(x) falls beyond AIS error, {short}", unit=UNIT)
        b = seeds_claim(EXPERIMENT, name, "joint training raises the ELBO while the likelihood falls (a)",
                        "ELBO rise (nats/image)", {k: v["elbo_rise"] for k, v in values.items()}, "increase",
                        f"the pretrained encoder with the ground truth, the same images (K {samples}); "
                        "holds only where (a) holds", name=f"(b) ELBO rises while (a) holds, {short}", unit=UNIT)
        verdicts = {a["verdict"], b["verdict"]}
        b["verdict"] = FAILS if FAILS in verdicts else HOLDS if verdicts == {HOLDS} else INCONCLUSIVE
        b["expected"] = "increase, with (a) holding"
        claims += [a, b]
    frame = pd.DataFrame(table, columns=list(LIKELIHOOD_TABLE_COLUMNS))
    first = frame.iloc[0]
    note = (f"{seeds_text(sorted({key[0] for key in runs}))}. Nats per image of {int(records.n.iloc[0])} held-out ground-truth images per "
            f"seed (drawn with their true z), and per pixel ({int(records.pixels.iloc[0])} pixels); higher is a "
            f"better fit. AIS: T {int(first.steps)} intermediate distributions on a sigmoid schedule, HMC "
            f"transitions ({int(records.loc[records.estimate == 'ais_lower', 'samples'].iloc[0])} chains per image); "
            f"forward AIS gives a stochastic lower bound on log p(x), reverse AIS from the images' true z a "
            f"stochastic upper bound (bidirectional Monte Carlo). Only the ground truth has the true z of these "
            f"images, so only its log p(x) is sandwiched; the joint decoder's lower bound is beside its BDMC width, "
            f"the same estimator's sandwich on images the joint decoder simulated itself. (a): the drop less both "
            f"widths, above 0 when the joint decoder's log-likelihood is below the ground truth's by more than the "
            f"estimators' error. ELBO and IWAE bound (K {int(first.samples)}): each decoder with its own encoder on "
            f"the same images. Inference gap: log p(x) - ELBO, here the decoder's AIS lower bound minus its ELBO, "
            f"so a lower bound on the gap. Per-run estimates, their T ladder and seconds: likelihood.csv of each run.")
    return Table(frame, f"Faces likelihood, {setting}", note), claims


def likelihood_markdown(frame: pd.DataFrame) -> pd.DataFrame:
    """The likelihood table as people read it: a row per quantity, per protocol and sigma variant a column
    'mean (std)' in nats per image (per pixel: likelihood.csv's per_pixel)."""
    shown = pd.DataFrame({f"quantity, {UNIT}": list(dict.fromkeys(frame.label))})
    for (protocol, sigma), group in frame.groupby(["protocol", "sigma_variant"], sort=False):
        by_label = group.set_index("label")
        shown[f"{protocol}, sigma {sigma}"] = [with_spread(by_label.loc[q, "mean"], by_label.loc[q, "std"])
                                              for q in shown.iloc[:, 0]]
    return shown
