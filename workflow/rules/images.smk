# Faces: images (CelebA zip, or scikit-learn's digits offline) -> DCGAN, one generator per
# epoch -> the ground-truth generator (a fixed epoch or the lowest distance to the data) ->
# encoder pretraining on its samples -> joint training by ELBO -> image sets as uint8 files
# (generate_samples) -> FID (Inception, compute_fid) or fd_digits (a digits classifier trained
# here, compute_fd_digits); held-out ELBOs and decoder drift; grids -> table, claims, and the
# protocol ablation's table and claims.
# The generator is trained once (the ground truth every replicate shares); pretraining, joint
# training and evaluation run once per seed of images.seeds (seed<k>/) and per protocol
# (vae_approx.images.settings: the main run's, and the ablation's rows).
# choose_generator and compute_fid load the Inception weights and check their SHA-256 there
# (features_args: images.inception_sha256, and images.inception_unverified_ok for tests only),
# since a file placed by hand never passes through download_inception.

from vae_approx.images import settings as images_settings


# The faces protocol's wildcards take exactly their factor's values.
wildcard_constraints:
    **images_settings.wildcard_constraints(),


IMG = f"{RESULTS}/images"
IM = config["images"]
# One run of the faces protocol (vae_approx.images.settings): the training factors, the sigma
# variant, then the sampling factors, each a folder level, so a factor re-runs only what it touches.
IMG_TRAINED_NAME = "seed{seed}/bn-{bn}_init-{init}"
IMG_JOINT_NAME = f"{IMG_TRAINED_NAME}/sigma-{{sigma}}"
IMG_RUN_NAME = f"{IMG_JOINT_NAME}/sampling-{{sampling}}_noise-{{noise}}_z-{{pairing}}"
IMG_TRAINED, IMG_JOINT, IMG_RUN = (
    f"{IMG}/{name}" for name in (IMG_TRAINED_NAME, IMG_JOINT_NAME, IMG_RUN_NAME)
)

# The image sets of the faces experiment, one uint8 file and one PNG grid each (vae_approx.images.evaluate.SETS).
IMAGE_SETS = [
    "ground_truth",
    "ground_truth_resample",
    "pretrained_reconstruction",
    "joint_reconstruction",
    "joint_prior",
]


def images_protocol():
    """The main run's faces protocol: one value per factor (images.protocol, or the reference's)."""
    return images_settings.configured_protocol(config["images"])


def images_run_files(protocol, sigmas, seeds):
    """The files one faces protocol's runs leave, aligned by (sigma variant, seed): the distances, the
    held-out metrics and the joint curve (rules tabulate_images and tabulate_images_ablation).
    """
    files = {"distances": [], "heldout": [], "curves": []}
    distance = f"{images_metric()}.csv"
    for sigma in sigmas:
        for seed in seeds:
            run = f"{RESULTS}/images/seed{seed}/{images_settings.run_dir(protocol, sigma)}"
            trained = os.path.dirname(run)
            files["distances"].append(f"{run}/{distance}")
            files["heldout"].append(f"{trained}/heldout.csv")
            files["curves"].append(f"{trained}/joint_curve.csv")
    return files


def images_ablation_files():
    """images_run_files of every ablation row (fixed sigma), one after another."""
    files = {"distances": [], "heldout": [], "curves": []}
    for row in config["images"]["ablation"]["rows"]:
        protocol = images_settings.ablation_protocol(row)
        for key, paths in images_run_files(
            protocol, ["fixed"], config["images"]["seeds"]
        ).items():
            files[key] += paths
    return files


def images_metric():
    """The faces distance's name: fid (Inception) or fd_digits."""
    return "fid" if config["images"]["features"] == "inception" else "fd_digits"


def images_targets():
    im = config["images"]
    protocol = images_protocol()
    targets = [f"{RESULTS}/images/table.md", f"{RESULTS}/images/curves.png"]
    if im["ablation"]["rows"]:
        targets.append(f"{RESULTS}/images/ablation.md")
    return targets + expand(
        f"{RESULTS}/images/seed{{seed}}/{{run}}/grids/{{name}}.png",
        seed=im["seeds"],
        run=[
            images_settings.run_dir(protocol, sigma) for sigma in im["sigma_variants"]
        ],
        name=[*IMAGE_SETS, "comparison"],
    )


def images_seeds(name):
    """One file per faces seed below the main protocol's training folder, in the config's seed order;
    a {sigma} in `name` is the first of images.sigma_variants."""
    training = images_settings.training_dir(images_protocol())
    return expand(
        f"{RESULTS}/images/seed{{seed}}/{training}/{name}",
        seed=config["images"]["seeds"],
        sigma=config["images"]["sigma_variants"][:1],
    )


def images_setting():
    """The faces setting's name in its table, claims and curves."""
    im = config["images"]
    kind = "CelebA" if im["source"] == "celeba" else "digits"
    return f"{kind} {im['image_size']}x{im['image_size']} DCGAN, sigma {im['sigma']:g}"


def images_sample_files(run):
    """The uint8 image sets of a run folder: Snakemake temp files (deleted once their distances and
    grids are written) unless images.evaluate.keep_samples."""
    files = [f"{run}/samples/{name}.npy" for name in IMAGE_SETS]
    return (
        files
        if config["images"]["evaluate"]["keep_samples"]
        else [temp(f) for f in files]
    )


INCEPTION_WEIGHTS = f"{config['images']['torch_home']}/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth"


def images_array():
    """The uint8 image array every images stage reads: prepared CelebA or digits."""
    return f"{RESULTS}/images/data/{config['images']['source']}.npy"


def images_features():
    """What the image distance needs: the digits classifier, or the Inception weights (FID)."""
    if config["images"]["features"] == "digits":
        return f"{RESULTS}/images/classifier/classifier.pt"
    return INCEPTION_WEIGHTS


def torch_home_of(path):
    """TORCH_HOME of a FID job: the folder whose hub/checkpoints/ holds the Inception weights.
    For digits features (a classifier file) it is the config's torch_home, which nothing reads.
    """
    if path != INCEPTION_WEIGHTS:
        return config["images"]["torch_home"]
    return os.path.dirname(os.path.dirname(os.path.dirname(path)))


def features_args(wildcards, input):
    """The --features arguments of choose-generator and evaluate. With Inception, the weights are
    SHA-256-checked where they are loaded (a file placed by hand never passes through
    download_inception), against images.inception_sha256 when it pins one;
    images.inception_unverified_ok (tests and wiring checks only) lets failing weights through,
    and their distances are labelled NOT FID."""
    im = config["images"]
    if im["features"] == "digits":
        return f"--features digits --classifier {input.features}"
    return (
        f"--features inception --torch-home {torch_home_of(input.features)}"
        f" --inception-sha256 '{im['inception_sha256']}'"
        f" --inception-unverified-ok {str(im['inception_unverified_ok']).lower()}"
    )


def images_claims():
    files = [f"{IMG}/claims.csv"]
    if IM["ablation"]["rows"]:
        files.append(f"{IMG}/ablation_claims.csv")
    return files


TARGETS["images"] = images_targets()
CLAIMS["images"] = images_claims()


if IM["generator_epoch"] != "auto" and IM["generator_epoch"] > IM["gan"]["epochs"]:
    raise ConfigError(
        f"config key 'images.generator_epoch': {IM['generator_epoch']} is more than"
        f" images.gan.epochs ({IM['gan']['epochs']}); use an epoch the GAN trains, or auto"
    )


rule prepare_digits:
    output:
        images=f"{IMG}/data/digits.npy",
        labels=f"{IMG}/data/digits_labels.npy",
    log:
        f"{LOGS}/images/data/digits.log",
    benchmark:
        f"{BENCHMARKS}/images/data/digits.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        size=IM["image_size"],
    shell:
        "python -m vae_approx.images prepare-digits --size {params.size}"
        " --out {output.images} --labels {output.labels} 2> {log}"


rule download_celeba:
    output:
        IM["celeba"]["zip"],
    log:
        f"{LOGS}/images/download_celeba.log",
    benchmark:
        f"{BENCHMARKS}/images/download_celeba.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=120,
    shell:
        "python -m vae_approx.images fetch-celeba --out {output} 2> {log}"


rule prepare_celeba:
    input:
        IM["celeba"]["zip"],
    output:
        f"{IMG}/data/celeba.npy",
    log:
        f"{LOGS}/images/data/celeba.log",
    benchmark:
        f"{BENCHMARKS}/images/data/celeba.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=90,
    params:
        size=IM["image_size"],
        expected_count=IM["celeba"]["expected_count"],
    shell:
        "python -m vae_approx.images prepare-celeba --zip {input} --size {params.size}"
        " --expected-count {params.expected_count} --out {output} 2> {log}"


rule download_inception:
    output:
        INCEPTION_WEIGHTS,
    log:
        f"{LOGS}/images/download_inception.log",
    benchmark:
        f"{BENCHMARKS}/images/download_inception.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        torch_home=lambda wildcards, output: torch_home_of(output[0]),
        sha256=IM["inception_sha256"],
    shell:
        "python -m vae_approx.images fetch-inception --torch-home {params.torch_home}"
        " --sha256 '{params.sha256}' 2> {log}"


rule train_digits_classifier:
    input:
        images=f"{IMG}/data/digits.npy",
        labels=f"{IMG}/data/digits_labels.npy",
    output:
        model=f"{IMG}/classifier/classifier.pt",
        metrics=f"{IMG}/classifier/classifier.csv",
    log:
        f"{LOGS}/images/classifier/classifier.log",
    benchmark:
        f"{BENCHMARKS}/images/classifier/classifier.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu_slots=gpu_whole,
        mem_mb=1000,
        runtime=30,
    params:
        **IM["classifier"],
        device=config["device"],
    shell:
        "python -m vae_approx.images train-classifier --images {input.images} --labels {input.labels}"
        " --width {params.width} --epochs {params.epochs} --batch-size {params.batch_size}"
        " --lr {params.lr} --seed {params.seed} --threads {threads} --device {params.device}"
        " --out {output.model} --metrics {output.metrics} 2> {log}"


# train-gan writes its epochs into a staging folder .generators.partial/ beside the output and
# renames it onto the output at the end; that folder and the resume file .generators.resume.pt
# survive a failed job (Snakemake removes the declared directory only), so a re-run resumes.
rule train_gan:
    input:
        images_array(),
    output:
        generators=directory(f"{IMG}/gan/generators"),
        losses=f"{IMG}/gan/losses.csv",
    log:
        f"{LOGS}/images/gan/generators.log",
    benchmark:
        f"{BENCHMARKS}/images/gan/generators.tsv"
    conda:
        ENV
    threads: IM["threads"]
    resources:
        gpu_slots=gpu_whole,
        mem_mb=4000,
        runtime=600,
    params:
        **IM["gan"],
        log_every=IM["log_every"],
        device=config["device"],
    shell:
        "python -m vae_approx.images train-gan --images {input} --nz {params.nz} --ngf {params.ngf}"
        " --ndf {params.ndf} --epochs {params.epochs} --batch-size {params.batch_size}"
        " --lr {params.lr} --beta1 {params.beta1} --checkpoint-every {params.checkpoint_every}"
        " --log-every {params.log_every} --seed {params.seed} --threads {threads}"
        " --device {params.device} --out-dir {output.generators} --losses {output.losses} 2> {log}"


rule choose_generator:
    input:
        generators=f"{IMG}/gan/generators",
        images=images_array(),
        features=images_features(),
    output:
        generator=f"{IMG}/gan/generator.pt",
        distances=f"{IMG}/gan/distances.csv",
    log:
        f"{LOGS}/images/gan/generator.log",
    benchmark:
        f"{BENCHMARKS}/images/gan/generator.tsv"
    conda:
        ENV
    threads: IM["threads"]
    resources:
        gpu_slots=gpu_whole,
        mem_mb=4000,
        runtime=60,
    params:
        epoch=IM["generator_epoch"],
        features=features_args,
        torch_home=lambda wildcards, input: torch_home_of(input.features),
        n_samples=IM["choose"]["n_samples"],
        batch_size=IM["evaluate"]["batch_size"],
        seed=IM["choose"]["seed"],
        device=config["device"],
    shell:
        "export TORCH_HOME={params.torch_home}; "
        "python -m vae_approx.images choose-generator --generators {input.generators}"
        " --images {input.images} --epoch {params.epoch} {params.features}"
        " --n-samples {params.n_samples} --batch-size {params.batch_size} --seed {params.seed}"
        " --threads {threads} --device {params.device}"
        " --out {output.generator} --distances {output.distances} 2> {log}"


rule pretrain_images_encoder:
    input:
        generator=f"{IMG}/gan/generator.pt",
    output:
        model=f"{IMG_TRAINED}/pretrained.pt",
        metrics=f"{IMG_TRAINED}/pretrain_curve.csv",
    log:
        f"{LOGS}/images/{IMG_TRAINED_NAME}/pretrained.log",
    benchmark:
        f"{BENCHMARKS}/images/{IMG_TRAINED_NAME}/pretrained.tsv"
    conda:
        ENV
    threads: IM["threads"]
    resources:
        gpu_slots=gpu_whole,
        mem_mb=4000,
        runtime=240,
    params:
        settings=shlex.quote(images_settings.stage_json(IM, "pretrain")),
        device=config["device"],
    shell:
        "python -m vae_approx.images pretrain --generator {input.generator} --settings {params.settings}"
        " --decoder-bn {wildcards.bn} --encoder-init {wildcards.init} --seed {wildcards.seed}"
        " --threads {threads} --device {params.device} --out {output.model} --metrics {output.metrics} 2> {log}"


rule train_images_joint:
    input:
        generator=f"{IMG}/gan/generator.pt",
        encoder=f"{IMG_TRAINED}/pretrained.pt",
    output:
        model=f"{IMG_JOINT}/joint.pt",
        metrics=f"{IMG_JOINT}/joint_curve.csv",
    log:
        f"{LOGS}/images/{IMG_JOINT_NAME}/joint.log",
    benchmark:
        f"{BENCHMARKS}/images/{IMG_JOINT_NAME}/joint.tsv"
    conda:
        ENV
    threads: IM["threads"]
    resources:
        gpu_slots=gpu_whole,
        mem_mb=4000,
        runtime=240,
    params:
        settings=shlex.quote(images_settings.stage_json(IM, "joint")),
        device=config["device"],
    shell:
        "python -m vae_approx.images joint --generator {input.generator} --encoder {input.encoder}"
        " --settings {params.settings} --decoder-bn {wildcards.bn} --sigma-variant {wildcards.sigma}"
        " --seed {wildcards.seed} --threads {threads} --device {params.device}"
        " --out {output.model} --metrics {output.metrics} 2> {log}"


rule evaluate_images_heldout:
    input:
        generator=f"{IMG}/gan/generator.pt",
        pretrained=f"{IMG_TRAINED}/pretrained.pt",
        joint=f"{IMG_JOINT}/joint.pt",
    output:
        f"{IMG_JOINT}/heldout.csv",
    log:
        f"{LOGS}/images/{IMG_JOINT_NAME}/heldout.log",
    benchmark:
        f"{BENCHMARKS}/images/{IMG_JOINT_NAME}/heldout.tsv"
    conda:
        ENV
    threads: IM["threads"]
    resources:
        gpu_slots=gpu_whole,
        mem_mb=2000,
        runtime=60,
    params:
        settings=shlex.quote(images_settings.stage_json(IM, "heldout")),
        device=config["device"],
    shell:
        "python -m vae_approx.images heldout --generator {input.generator} --pretrained {input.pretrained}"
        " --joint {input.joint} --settings {params.settings} --seed {wildcards.seed}"
        " --threads {threads} --device {params.device} --out {output} 2> {log}"


rule generate_samples:
    input:
        generator=f"{IMG}/gan/generator.pt",
        pretrained=f"{IMG_TRAINED}/pretrained.pt",
        joint=f"{IMG_JOINT}/joint.pt",
    output:
        images_sample_files(IMG_RUN),
    log:
        f"{LOGS}/images/{IMG_RUN_NAME}/samples.log",
    benchmark:
        f"{BENCHMARKS}/images/{IMG_RUN_NAME}/samples.tsv"
    conda:
        ENV
    threads: IM["threads"]
    resources:
        gpu_slots=gpu_whole,
        mem_mb=4000,
        runtime=120,
    params:
        settings=shlex.quote(images_settings.stage_json(IM, "generate")),
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
        device=config["device"],
    shell:
        "python -m vae_approx.images generate --generator {input.generator} --pretrained {input.pretrained}"
        " --joint {input.joint} --settings {params.settings} --sampling {wildcards.sampling}"
        " --pixel-noise {wildcards.noise} --z-pairing {wildcards.pairing} --seed {wildcards.seed}"
        " --threads {threads} --device {params.device} --out-dir {params.out_dir} 2> {log}"


# The Frechet distance of every image set to the ground-truth set: FID on Inception features
# (paper), or fd_digits on the digits classifier's (quick, smoke), from the same sample files.
rule compute_fid:
    input:
        samples=images_sample_files(IMG_RUN),
        features=INCEPTION_WEIGHTS,
    output:
        f"{IMG_RUN}/fid.csv",
    log:
        f"{LOGS}/images/{IMG_RUN_NAME}/distances.log",
    benchmark:
        f"{BENCHMARKS}/images/{IMG_RUN_NAME}/distances.tsv"
    conda:
        ENV
    threads: IM["threads"]
    resources:
        gpu_slots=gpu_whole,
        mem_mb=4000,
        runtime=120,
    params:
        features=features_args,
        torch_home=lambda wildcards, input: torch_home_of(input.features),
        samples=lambda wildcards, input: os.path.dirname(input.samples[0]),
        batch_size=IM["evaluate"]["batch_size"],
        device=config["device"],
    shell:
        "export TORCH_HOME={params.torch_home}; "
        "python -m vae_approx.images distances --samples {params.samples} {params.features}"
        " --batch-size {params.batch_size} --threads {threads} --device {params.device} --out {output} 2> {log}"


use rule compute_fid as compute_fd_digits with:
    input:
        samples=images_sample_files(IMG_RUN),
        features=f"{IMG}/classifier/classifier.pt",
    output:
        f"{IMG_RUN}/fd_digits.csv",


rule plot_images_grids:
    input:
        images_sample_files(IMG_RUN),
    output:
        grids=[
            report(
                f"{IMG_RUN}/grids/{name}.png",
                caption=f"../report/images_grid_{name}.rst",
                category="Faces",
                subcategory="image grids, seed {seed}, sigma {sigma}",
            )
            for name in IMAGE_SETS
        ],
        comparison=report(
            f"{IMG_RUN}/grids/comparison.png",
            caption="../report/images_comparison.rst",
            category="Faces",
            subcategory="image grids, seed {seed}, sigma {sigma}",
        ),
    log:
        f"{LOGS}/images/{IMG_RUN_NAME}/grids.log",
    benchmark:
        f"{BENCHMARKS}/images/{IMG_RUN_NAME}/grids.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        samples=lambda wildcards, input: os.path.dirname(input[0]),
        grids=lambda wildcards, output: os.path.dirname(output.comparison),
        grid_size=IM["evaluate"]["grid_size"],
    shell:
        "python -m vae_approx.images grids --samples {params.samples} --grid-size {params.grid_size}"
        " --out-dir {params.grids} 2> {log}"


rule plot_images_curves:
    input:
        pretrain=images_seeds("pretrain_curve.csv"),
        joint=images_seeds("sigma-{sigma}/joint_curve.csv"),
    output:
        report(
            f"{IMG}/curves.png",
            caption="../report/images_curves.rst",
            category="Faces",
        ),
    log:
        f"{LOGS}/images/curves.log",
    benchmark:
        f"{BENCHMARKS}/images/curves.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        setting=images_setting(),
    shell:
        "python -m vae_approx.images curves --pretrain {input.pretrain} --joint {input.joint}"
        " --setting '{params.setting}' --out {output} 2> {log}"


rule tabulate_images:
    input:
        unpack(
            lambda wildcards: images_run_files(
                images_protocol(), IM["sigma_variants"], IM["seeds"]
            )
        ),
        published=config["published_results"],
    output:
        csv=report(
            f"{IMG}/table.csv",
            caption="../report/images_table.rst",
            category="Faces",
        ),
        md=f"{IMG}/table.md",
        per_seed=f"{IMG}/table_per_seed.csv",
        claims=f"{IMG}/claims.csv",
    log:
        f"{LOGS}/images/table.log",
    benchmark:
        f"{BENCHMARKS}/images/table.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        setting=images_setting(),
        fd_tolerance=IM["fd_tolerance"],
    shell:
        "python -m vae_approx.images tabulate --distances {input.distances} --heldout {input.heldout}"
        " --curves {input.curves} --published {input.published} --setting '{params.setting}'"
        " --fd-tolerance {params.fd_tolerance} --per-seed {output.per_seed}"
        " --csv {output.csv} --md {output.md} --claims {output.claims} 2> {log}"


rule tabulate_images_ablation:
    input:
        unpack(lambda wildcards: images_ablation_files()),
        published=config["published_results"],
    output:
        csv=report(
            f"{IMG}/ablation.csv",
            caption="../report/images_ablation.rst",
            category="Faces",
        ),
        md=f"{IMG}/ablation.md",
        claims=f"{IMG}/ablation_claims.csv",
    log:
        f"{LOGS}/images/ablation.log",
    benchmark:
        f"{BENCHMARKS}/images/ablation.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        rows=" ".join(IM["ablation"]["rows"]),
        setting=images_setting(),
        fd_tolerance=IM["fd_tolerance"],
    shell:
        "python -m vae_approx.images ablate --rows {params.rows} --distances {input.distances}"
        " --heldout {input.heldout} --curves {input.curves} --published {input.published}"
        " --setting '{params.setting}' --fd-tolerance {params.fd_tolerance}"
        " --csv {output.csv} --md {output.md} --claims {output.claims} 2> {log}"
