# Faces: images (CelebA zip, or scikit-learn's digits offline) -> DCGAN, one generator per
# epoch -> the ground-truth generator (a fixed epoch or the lowest distance to the data) ->
# encoder pretraining on its samples -> joint training by ELBO -> image sets as uint8 files
# (generate_samples) -> FID (Inception, compute_fid) or fd_digits (a digits classifier trained
# here, compute_fd_digits); held-out ELBOs and decoder drift; grids -> table, claims, and the
# protocol ablation's table and claims.
# The generator is trained once (the ground truth every replicate shares); pretraining, joint
# training and evaluation run once per seed of images.seeds (seed<k>/) and per protocol (the
# main run's, and the ablation's rows), each factor a wildcard named as its identity column.
# The path layout, the keys each stage reads (--settings) and the file lists live in
# vae_approx.images.settings; each per-run job's wildcards are its identity (--run).
# choose_generator and compute_fid load the Inception weights and check their SHA-256 there
# (images.inception_sha256, and images.inception_unverified_ok for tests only), since a file
# placed by hand never passes through download_inception.

from vae_approx.images import settings as images_settings


# The faces protocol's wildcards take exactly their allowed values.
wildcard_constraints:
    **images_settings.wildcard_constraints(),


IM = config["images"]
IMG = images_settings.folder(RESULTS)
IMG_LOGS = f"{LOGS}/images"
IMG_BENCHMARKS = f"{BENCHMARKS}/images"
# Each per-run file's path template (wildcards: the identity columns), by its name in images_settings.PATHS.
IMG_PATH = {name: images_settings.path(RESULTS, name) for name in images_settings.PATHS}
# One run's folders below the experiment's (log and benchmark paths): trained, jointly trained, sampled.
IMG_TRAINED, IMG_JOINT, IMG_SAMPLED = (
    images_settings.TRAINED,
    images_settings.JOINT,
    images_settings.SAMPLED,
)
# The uint8 image sets of a run: Snakemake temp files (deleted once their distances and grids
# are written) unless images.evaluate.keep_samples.
IMG_SAMPLES = [
    f if IM["evaluate"]["keep_samples"] else temp(f)
    for f in images_settings.sample_files(RESULTS)
]
IMG_DATA = images_settings.data_array(IM, RESULTS)
IMG_FEATURES = images_settings.features_file(IM, RESULTS)
IMG_INCEPTION = images_settings.inception_weights(IM)
IMG_CLASSIFIER = f"{IMG}/classifier/classifier.pt"
IMG_GENERATOR = f"{IMG}/gan/generator.pt"

TARGETS["images"] = images_settings.targets(IM, RESULTS)
CLAIMS["images"] = images_settings.claims_files(IM, RESULTS)


if (
    IM["generator_epoch"] != images_settings.AUTO
    and IM["generator_epoch"] > IM["gan"]["epochs"]
):
    raise ConfigError(
        f"config key 'images.generator_epoch': {IM['generator_epoch']} is more than"
        f" images.gan.epochs ({IM['gan']['epochs']}); use an epoch the GAN trains, or {images_settings.AUTO}"
    )


rule prepare_digits:
    output:
        images=f"{IMG}/data/digits.npy",
        labels=f"{IMG}/data/digits_labels.npy",
    log:
        f"{IMG_LOGS}/data/digits.log",
    benchmark:
        f"{IMG_BENCHMARKS}/data/digits.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        settings=settings_json(IM, images_settings.STAGE_KEYS["prepare-digits"]),
    shell:
        "python -m vae_approx.images prepare-digits --settings {params.settings}"
        " --out {output.images} --labels {output.labels} 2> {log}"


rule download_celeba:
    output:
        IM["celeba"]["zip"],
    log:
        f"{IMG_LOGS}/download_celeba.log",
    benchmark:
        f"{IMG_BENCHMARKS}/download_celeba.tsv"
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
        f"{IMG_LOGS}/data/celeba.log",
    benchmark:
        f"{IMG_BENCHMARKS}/data/celeba.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=90,
    params:
        settings=settings_json(IM, images_settings.STAGE_KEYS["prepare-celeba"]),
    shell:
        "python -m vae_approx.images prepare-celeba --zip {input} --settings {params.settings}"
        " --out {output} 2> {log}"


rule download_inception:
    output:
        IMG_INCEPTION,
    log:
        f"{IMG_LOGS}/download_inception.log",
    benchmark:
        f"{IMG_BENCHMARKS}/download_inception.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        # <torch_home>/hub/checkpoints/<file> -> <torch_home>
        torch_home=lambda wildcards, output: os.path.dirname(
            os.path.dirname(os.path.dirname(output[0]))
        ),
        settings=settings_json(IM, images_settings.STAGE_KEYS["fetch-inception"]),
    shell:
        "python -m vae_approx.images fetch-inception --torch-home {params.torch_home}"
        " --settings {params.settings} 2> {log}"


rule train_digits_classifier:
    input:
        images=f"{IMG}/data/digits.npy",
        labels=f"{IMG}/data/digits_labels.npy",
    output:
        model=IMG_CLASSIFIER,
        metrics=f"{IMG}/classifier/classifier.csv",
    log:
        f"{IMG_LOGS}/classifier/classifier.log",
    benchmark:
        f"{IMG_BENCHMARKS}/classifier/classifier.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu_slots=gpu_whole,
        mem_mb=1000,
        runtime=30,
    params:
        settings=settings_json(IM, images_settings.STAGE_KEYS["train-classifier"]),
        device=config["device"],
    shell:
        "python -m vae_approx.images train-classifier --images {input.images} --labels {input.labels}"
        " --settings {params.settings} --threads {threads} --device {params.device}"
        " --out {output.model} --metrics {output.metrics} 2> {log}"


# train-gan writes its epochs into a staging folder .generators.partial/ beside the output and
# renames it onto the output at the end; that folder and the resume file .generators.resume.pt
# survive a failed job (Snakemake removes the declared directory only), so a re-run resumes.
rule train_gan:
    input:
        IMG_DATA,
    output:
        generators=directory(f"{IMG}/gan/generators"),
        losses=f"{IMG}/gan/losses.csv",
    log:
        f"{IMG_LOGS}/gan/generators.log",
    benchmark:
        f"{IMG_BENCHMARKS}/gan/generators.tsv"
    conda:
        ENV
    threads: IM["threads"]
    resources:
        gpu_slots=gpu_whole,
        mem_mb=4000,
        runtime=600,
    params:
        settings=settings_json(IM, images_settings.STAGE_KEYS["train-gan"]),
        device=config["device"],
    shell:
        "python -m vae_approx.images train-gan --images {input} --settings {params.settings}"
        " --threads {threads} --device {params.device}"
        " --out-dir {output.generators} --losses {output.losses} 2> {log}"


# The distance's features (--features-file): the digits classifier, or the Inception weights at
# <images.torch_home>/hub/checkpoints/, which the stage loads with TORCH_HOME pointed at that
# folder, whatever the caller's environment says (nothing is downloaded there).
rule choose_generator:
    input:
        generators=f"{IMG}/gan/generators",
        images=IMG_DATA,
        features=IMG_FEATURES,
    output:
        generator=IMG_GENERATOR,
        distances=f"{IMG}/gan/distances.csv",
    log:
        f"{IMG_LOGS}/gan/generator.log",
    benchmark:
        f"{IMG_BENCHMARKS}/gan/generator.tsv"
    conda:
        ENV
    threads: IM["threads"]
    resources:
        gpu_slots=gpu_whole,
        mem_mb=4000,
        runtime=60,
    params:
        settings=settings_json(IM, images_settings.STAGE_KEYS["choose-generator"]),
        device=config["device"],
    shell:
        "python -m vae_approx.images choose-generator --generators {input.generators}"
        " --images {input.images} --features-file {input.features} --settings {params.settings}"
        " --threads {threads} --device {params.device}"
        " --out {output.generator} --distances {output.distances} 2> {log}"


rule pretrain_images_encoder:
    input:
        generator=IMG_GENERATOR,
    output:
        model=IMG_PATH["pretrained"],
        metrics=IMG_PATH["pretrain_curve"],
    log:
        f"{IMG_LOGS}/{IMG_TRAINED}/pretrained.log",
    benchmark:
        f"{IMG_BENCHMARKS}/{IMG_TRAINED}/pretrained.tsv"
    conda:
        ENV
    threads: IM["threads"]
    resources:
        gpu_slots=gpu_whole,
        mem_mb=4000,
        runtime=240,
    params:
        settings=settings_json(IM, images_settings.STAGE_KEYS["pretrain"]),
        run=run_json,
        device=config["device"],
    shell:
        "python -m vae_approx.images pretrain --generator {input.generator} --settings {params.settings}"
        " --run {params.run} --threads {threads} --device {params.device}"
        " --out {output.model} --metrics {output.metrics} 2> {log}"


rule train_images_joint:
    input:
        generator=IMG_GENERATOR,
        encoder=IMG_PATH["pretrained"],
    output:
        model=IMG_PATH["joint"],
        metrics=IMG_PATH["joint_curve"],
    log:
        f"{IMG_LOGS}/{IMG_JOINT}/joint.log",
    benchmark:
        f"{IMG_BENCHMARKS}/{IMG_JOINT}/joint.tsv"
    conda:
        ENV
    threads: IM["threads"]
    resources:
        gpu_slots=gpu_whole,
        mem_mb=4000,
        runtime=240,
    params:
        settings=settings_json(IM, images_settings.STAGE_KEYS["joint"]),
        run=run_json,
        device=config["device"],
    shell:
        "python -m vae_approx.images joint --generator {input.generator} --encoder {input.encoder}"
        " --settings {params.settings} --run {params.run} --threads {threads} --device {params.device}"
        " --out {output.model} --metrics {output.metrics} 2> {log}"


rule evaluate_images_heldout:
    input:
        generator=IMG_GENERATOR,
        pretrained=IMG_PATH["pretrained"],
        joint=IMG_PATH["joint"],
    output:
        IMG_PATH["heldout"],
    log:
        f"{IMG_LOGS}/{IMG_JOINT}/heldout.log",
    benchmark:
        f"{IMG_BENCHMARKS}/{IMG_JOINT}/heldout.tsv"
    conda:
        ENV
    threads: IM["threads"]
    resources:
        gpu_slots=gpu_whole,
        mem_mb=2000,
        runtime=60,
    params:
        settings=settings_json(IM, images_settings.STAGE_KEYS["heldout"]),
        run=run_json,
        device=config["device"],
    shell:
        "python -m vae_approx.images heldout --generator {input.generator} --pretrained {input.pretrained}"
        " --joint {input.joint} --settings {params.settings} --run {params.run}"
        " --threads {threads} --device {params.device} --out {output} 2> {log}"


# log p(x) of held-out ground-truth images (drawn with their true z) under the ground truth and the
# jointly trained decoder: AIS with HMC (forward, and reverse from the true z: the sandwich), BDMC
# on the joint decoder's own images, the IWAE bound and the ELBO (vae_approx.images.ais).
rule evaluate_images_likelihood:
    input:
        generator=IMG_GENERATOR,
        pretrained=IMG_PATH["pretrained"],
        joint=IMG_PATH["joint"],
    output:
        IMG_PATH["likelihood"],
    log:
        f"{IMG_LOGS}/{IMG_JOINT}/likelihood.log",
    benchmark:
        f"{IMG_BENCHMARKS}/{IMG_JOINT}/likelihood.tsv"
    conda:
        ENV
    threads: IM["threads"]
    resources:
        gpu_slots=gpu_whole,
        mem_mb=2000,
        runtime=480,
    params:
        settings=settings_json(IM, images_settings.STAGE_KEYS["likelihood"]),
        run=run_json,
        device=config["device"],
    shell:
        "python -m vae_approx.images likelihood --generator {input.generator} --pretrained {input.pretrained}"
        " --joint {input.joint} --settings {params.settings} --run {params.run}"
        " --threads {threads} --device {params.device} --out {output} 2> {log}"


rule generate_samples:
    input:
        generator=IMG_GENERATOR,
        pretrained=IMG_PATH["pretrained"],
        joint=IMG_PATH["joint"],
    output:
        IMG_SAMPLES,
    log:
        f"{IMG_LOGS}/{IMG_SAMPLED}/samples.log",
    benchmark:
        f"{IMG_BENCHMARKS}/{IMG_SAMPLED}/samples.tsv"
    conda:
        ENV
    threads: IM["threads"]
    resources:
        gpu_slots=gpu_whole,
        mem_mb=4000,
        runtime=120,
    params:
        settings=settings_json(IM, images_settings.STAGE_KEYS["generate"]),
        run=run_json,
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
        device=config["device"],
    shell:
        "python -m vae_approx.images generate --generator {input.generator} --pretrained {input.pretrained}"
        " --joint {input.joint} --settings {params.settings} --run {params.run}"
        " --threads {threads} --device {params.device} --out-dir {params.out_dir} 2> {log}"


# The Frechet distance of every image set to the ground-truth set: FID on Inception features
# (paper), or fd_digits on the digits classifier's (quick, smoke), from the same sample files.
rule compute_fid:
    input:
        samples=IMG_SAMPLES,
        features=IMG_INCEPTION,
    output:
        IMG_PATH[images_settings.DISTANCES["inception"]],
    log:
        f"{IMG_LOGS}/{IMG_SAMPLED}/distances.log",
    benchmark:
        f"{IMG_BENCHMARKS}/{IMG_SAMPLED}/distances.tsv"
    conda:
        ENV
    threads: IM["threads"]
    resources:
        gpu_slots=gpu_whole,
        mem_mb=4000,
        runtime=120,
    params:
        settings=settings_json(IM, images_settings.STAGE_KEYS["distances"]),
        run=run_json,
        samples=lambda wildcards, input: os.path.dirname(input.samples[0]),
        device=config["device"],
    shell:
        "python -m vae_approx.images distances --samples {params.samples} --features-file {input.features}"
        " --settings {params.settings} --run {params.run} --threads {threads} --device {params.device}"
        " --out {output} 2> {log}"


use rule compute_fid as compute_fd_digits with:
    input:
        samples=IMG_SAMPLES,
        features=IMG_CLASSIFIER,
    output:
        IMG_PATH[images_settings.DISTANCES["digits"]],


rule plot_images_grids:
    input:
        IMG_SAMPLES,
    output:
        grids=[
            report(
                grid,
                caption=f"../report/images_grid_{name}.rst",
                category="Faces",
                subcategory="image grids",
                labels={"seed": "{seed}", "sigma": "{sigma_variant}", "images": name},
            )
            for name, grid in zip(
                images_settings.IMAGE_SETS, images_settings.grid_files(RESULTS)
            )
        ],
        comparison=report(
            IMG_PATH["comparison"],
            caption="../report/images_comparison.rst",
            category="Faces",
            subcategory="image grids",
            labels={
                "seed": "{seed}",
                "sigma": "{sigma_variant}",
                "images": "comparison",
            },
        ),
    log:
        f"{IMG_LOGS}/{IMG_SAMPLED}/grids.log",
    benchmark:
        f"{IMG_BENCHMARKS}/{IMG_SAMPLED}/grids.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        settings=settings_json(IM, images_settings.STAGE_KEYS["grids"]),
        run=run_json,
        samples=lambda wildcards, input: os.path.dirname(input[0]),
        grids=lambda wildcards, output: os.path.dirname(output.comparison),
    shell:
        "python -m vae_approx.images grids --samples {params.samples} --settings {params.settings}"
        " --run {params.run} --out-dir {params.grids} 2> {log}"


rule plot_images_curves:
    input:
        **images_settings.curve_files(IM, RESULTS),
    output:
        report(
            f"{IMG}/curves.png",
            caption="../report/images_curves.rst",
            category="Faces",
            subcategory="tables and figures",
            labels={"file": "training curves"},
        ),
    log:
        f"{IMG_LOGS}/curves.log",
    benchmark:
        f"{IMG_BENCHMARKS}/curves.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        settings=settings_json(IM, images_settings.STAGE_KEYS["curves"]),
    shell:
        "python -m vae_approx.images curves --pretrain {input.pretrain} --joint {input.joint}"
        " --settings {params.settings} --out {output} 2> {log}"


rule tabulate_images:
    input:
        **images_settings.table_files(IM, RESULTS),
        published=config["published_results"],
    output:
        csv=f"{IMG}/table.csv",
        md=f"{IMG}/table.md",
        html=report(
            f"{IMG}/table.html",
            caption="../report/images_table.rst",
            category="Faces",
            subcategory="tables and figures",
            labels={"file": "table"},
        ),
        per_seed=f"{IMG}/table_per_seed.csv",
        claims=f"{IMG}/claims.csv",
    log:
        f"{IMG_LOGS}/table.log",
    benchmark:
        f"{IMG_BENCHMARKS}/table.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        settings=settings_json(IM, images_settings.STAGE_KEYS["tabulate"]),
    shell:
        "python -m vae_approx.images tabulate --distances {input.distances} --heldout {input.heldout}"
        " --curves {input.curves} --published {input.published} --settings {params.settings}"
        " --per-seed {output.per_seed} --csv {output.csv} --md {output.md} --claims {output.claims} 2> {log}"


rule tabulate_images_ablation:
    input:
        **images_settings.ablation_files(IM, RESULTS),
        published=config["published_results"],
    output:
        csv=f"{IMG}/ablation.csv",
        md=f"{IMG}/ablation.md",
        html=report(
            f"{IMG}/ablation.html",
            caption="../report/images_ablation.rst",
            category="Faces",
            subcategory="tables and figures",
            labels={"file": "protocol ablation"},
        ),
        claims=f"{IMG}/ablation_claims.csv",
    log:
        f"{IMG_LOGS}/ablation.log",
    benchmark:
        f"{IMG_BENCHMARKS}/ablation.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        settings=settings_json(IM, images_settings.STAGE_KEYS["ablate"]),
    shell:
        "python -m vae_approx.images ablate --distances {input.distances} --heldout {input.heldout}"
        " --curves {input.curves} --published {input.published} --settings {params.settings}"
        " --csv {output.csv} --md {output.md} --claims {output.claims} 2> {log}"


rule tabulate_images_likelihood:
    input:
        images_settings.likelihood_files(IM, RESULTS),
    output:
        csv=f"{IMG}/likelihood.csv",
        md=f"{IMG}/likelihood.md",
        html=report(
            f"{IMG}/likelihood.html",
            caption="../report/images_likelihood.rst",
            category="Faces",
            subcategory="tables and figures",
            labels={"file": "likelihood table"},
        ),
        claims=f"{IMG}/likelihood_claims.csv",
        figure=report(
            f"{IMG}/likelihood.png",
            caption="../report/images_likelihood_png.rst",
            category="Faces",
            subcategory="tables and figures",
            labels={"file": "likelihood against T"},
        ),
    log:
        f"{IMG_LOGS}/likelihood.log",
    benchmark:
        f"{IMG_BENCHMARKS}/likelihood.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        settings=settings_json(IM, images_settings.STAGE_KEYS["tabulate-likelihood"]),
    shell:
        "python -m vae_approx.images tabulate-likelihood --likelihood {input} --settings {params.settings}"
        " --csv {output.csv} --md {output.md} --claims {output.claims} --figure {output.figure} 2> {log}"
