# Faces: images (CelebA zip, or scikit-learn's digits offline) -> DCGAN, one generator per
# epoch -> the ground-truth generator (a fixed epoch or the lowest distance to the data) ->
# encoder pretraining on its samples -> joint training by ELBO -> image sets, FID (Inception)
# or fd_digits (a digits classifier trained here), ELBOs, decoder drift, grids -> table, claims.
# The generator is trained once (the ground truth every replicate shares); pretraining, joint
# training and evaluation run once per seed of images.seeds (seed<k>/).
# choose_generator and evaluate_images load the Inception weights and check their SHA-256 there
# (features_args: images.inception_sha256, and images.inception_unverified_ok for tests only),
# since a file placed by hand never passes through download_inception.

IMG = f"{RESULTS}/images"
IM = config["images"]
IMG_SEEDED = f"{IMG}/seed{{seed}}"

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
        model=f"{IMG_SEEDED}/pretrained.pt",
        metrics=f"{IMG_SEEDED}/pretrain_curve.csv",
    log:
        f"{LOGS}/images/seed{{seed}}/pretrained.log",
    benchmark:
        f"{BENCHMARKS}/images/seed{{seed}}/pretrained.tsv"
    conda:
        ENV
    threads: IM["threads"]
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        **IM["pretrain"],
        sigma=IM["sigma"],
        ndf=IM["encoder_ndf"],
        log_every=IM["log_every"],
        checkpoint_every=IM["checkpoint_every"],
        bn_batches=IM["bn_batches"],
        channels_last=IM["channels_last"],
        device=config["device"],
    shell:
        "python -m vae_approx.images pretrain --generator {input.generator} --sigma {params.sigma}"
        " --ndf {params.ndf} --iterations {params.iterations} --batch-size {params.batch_size}"
        " --lr {params.lr} --beta1 {params.beta1} --log-every {params.log_every}"
        " --checkpoint-every {params.checkpoint_every} --bn-batches {params.bn_batches}"
        " --channels-last {params.channels_last} --seed {wildcards.seed} --threads {threads}"
        " --device {params.device} --out {output.model} --metrics {output.metrics} 2> {log}"


rule train_images_joint:
    input:
        generator=f"{IMG}/gan/generator.pt",
        encoder=f"{IMG_SEEDED}/pretrained.pt",
    output:
        model=f"{IMG_SEEDED}/joint.pt",
        metrics=f"{IMG_SEEDED}/joint_curve.csv",
    log:
        f"{LOGS}/images/seed{{seed}}/joint.log",
    benchmark:
        f"{BENCHMARKS}/images/seed{{seed}}/joint.tsv"
    conda:
        ENV
    threads: IM["threads"]
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        **IM["joint"],
        learn_sigma=IM["learn_sigma"],
        log_every=IM["log_every"],
        checkpoint_every=IM["checkpoint_every"],
        bn_batches=IM["bn_batches"],
        channels_last=IM["channels_last"],
        device=config["device"],
    shell:
        "python -m vae_approx.images joint --generator {input.generator} --encoder {input.encoder}"
        " --learn-sigma {params.learn_sigma} --iterations {params.iterations}"
        " --batch-size {params.batch_size} --lr {params.lr} --beta1 {params.beta1}"
        " --log-every {params.log_every} --checkpoint-every {params.checkpoint_every}"
        " --bn-batches {params.bn_batches} --channels-last {params.channels_last}"
        " --seed {wildcards.seed} --threads {threads} --device {params.device}"
        " --out {output.model} --metrics {output.metrics} 2> {log}"


rule evaluate_images:
    input:
        generator=f"{IMG}/gan/generator.pt",
        pretrained=f"{IMG_SEEDED}/pretrained.pt",
        joint=f"{IMG_SEEDED}/joint.pt",
        features=images_features(),
    output:
        metrics=f"{IMG_SEEDED}/metrics.csv",
        grids=[
            report(
                f"{IMG_SEEDED}/grids/{name}.png",
                caption=f"../report/images_grid_{name}.rst",
                category="Faces",
                subcategory="image grids, seed {seed}",
            )
            for name in IMAGE_SETS
        ],
        comparison=report(
            f"{IMG_SEEDED}/grids/comparison.png",
            caption="../report/images_comparison.rst",
            category="Faces",
            subcategory="image grids, seed {seed}",
        ),
    log:
        f"{LOGS}/images/seed{{seed}}/metrics.log",
    benchmark:
        f"{BENCHMARKS}/images/seed{{seed}}/metrics.tsv"
    conda:
        ENV
    threads: IM["threads"]
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        **IM["evaluate"],
        features=features_args,
        torch_home=lambda wildcards, input: torch_home_of(input.features),
        reference_protocol=IM["reference_protocol"],
        channels_last=IM["channels_last"],
        grids=lambda wildcards, output: os.path.dirname(output.grids[0]),
        device=config["device"],
    shell:
        "export TORCH_HOME={params.torch_home}; "
        "python -m vae_approx.images evaluate --generator {input.generator}"
        " --pretrained {input.pretrained} --joint {input.joint} {params.features}"
        " --n-samples {params.n_samples} --batch-size {params.batch_size}"
        " --n-eval {params.n_eval} --grid-size {params.grid_size}"
        " --reference-protocol {params.reference_protocol}"
        " --channels-last {params.channels_last} --seed {wildcards.seed} --threads {threads}"
        " --device {params.device} --grids {params.grids} --out {output.metrics} 2> {log}"


rule plot_images_curves:
    input:
        pretrain=images_seeds("pretrain_curve.csv"),
        joint=images_seeds("joint_curve.csv"),
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
        metrics=images_seeds("metrics.csv"),
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
        "python -m vae_approx.images tabulate --metrics {input.metrics}"
        " --published {input.published} --setting '{params.setting}'"
        " --fd-tolerance {params.fd_tolerance} --per-seed {output.per_seed}"
        " --csv {output.csv} --md {output.md} --claims {output.claims} 2> {log}"
