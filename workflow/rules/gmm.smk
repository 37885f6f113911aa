# Gaussian mixture, per seed: ground-truth sample -> encoder pretraining -> joint training, and
# the maximum-likelihood fit of the centres (the control); over seeds: tables and claims.

GMM = f"{RESULTS}/gmm"
SEEDED = f"{GMM}/seed{{seed}}"


def gmm_targets():
    return expand(
        f"{RESULTS}/gmm/{{encoder}}/{{name}}",
        encoder=config["gmm"]["encoders"],
        name=["table.csv", "table.md", "curves.png"],
    ) + expand(
        f"{RESULTS}/gmm/seed{{seed}}/{{encoder}}/regions.png",
        seed=config["gmm"]["seeds"],
        encoder=config["gmm"]["encoders"],
    )


def gmm_seeds(name):
    """One file per GMM seed, in the config's seed order; `name` may hold {encoder}."""
    return expand(
        f"{RESULTS}/gmm/seed{{seed}}/{name}",
        seed=config["gmm"]["seeds"],
        allow_missing=True,
    )


TARGETS["gmm"] = gmm_targets()
CLAIMS["gmm"] = expand(
    f"{RESULTS}/gmm/{{encoder}}/claims.csv", encoder=config["gmm"]["encoders"]
)


rule sample_gmm:
    output:
        f"{SEEDED}/data.npz",
    log:
        f"{LOGS}/gmm/seed{{seed}}/data.log",
    benchmark:
        f"{BENCHMARKS}/gmm/seed{{seed}}/data.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        n=config["gmm"]["n_per_component"],
        variance=config["gmm"]["variance"],
    shell:
        "python -m vae_approx.gmm sample --n-per-component {params.n} --variance {params.variance}"
        " --seed {wildcards.seed} --out {output} 2> {log}"


rule fit_gmm_ml:
    input:
        f"{SEEDED}/data.npz",
    output:
        f"{SEEDED}/ml_fit.csv",
    log:
        f"{LOGS}/gmm/seed{{seed}}/ml_fit.log",
    benchmark:
        f"{BENCHMARKS}/gmm/seed{{seed}}/ml_fit.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m vae_approx.gmm fit-ml --data {input} --out {output} 2> {log}"


rule pretrain_gmm_encoder:
    input:
        data=f"{SEEDED}/data.npz",
    output:
        model=f"{SEEDED}/{{encoder}}/pretrained.pt",
        metrics=f"{SEEDED}/{{encoder}}/pretrain_metrics.csv",
    log:
        f"{LOGS}/gmm/seed{{seed}}/{{encoder}}/pretrained.log",
    benchmark:
        f"{BENCHMARKS}/gmm/seed{{seed}}/{{encoder}}/pretrained.tsv"
    conda:
        ENV
    threads: config["gmm"]["threads"]
    resources:
        gpu_slots=1,
        mem_mb=2000,
        runtime=60,
    params:
        hidden=config["gmm"]["hidden"],
        steps=config["gmm"]["pretrain"]["steps"],
        lr=config["gmm"]["pretrain"]["lr"],
        eval_every=config["gmm"]["eval_every"],
        checkpoint_every=config["gmm"]["checkpoint_every"],
        device=config["device"],
    shell:
        "python -m vae_approx.gmm train --phase pretrain --encoder {wildcards.encoder}"
        " --hidden {params.hidden} --data {input.data} --steps {params.steps} --lr {params.lr}"
        " --seed {wildcards.seed} --eval-every {params.eval_every}"
        " --checkpoint-every {params.checkpoint_every} --threads {threads}"
        " --device {params.device}"
        " --out {output.model} --metrics {output.metrics} 2> {log}"


rule train_gmm_joint:
    input:
        data=f"{SEEDED}/data.npz",
        init=f"{SEEDED}/{{encoder}}/pretrained.pt",
    output:
        model=f"{SEEDED}/{{encoder}}/joint.pt",
        metrics=f"{SEEDED}/{{encoder}}/joint_metrics.csv",
    log:
        f"{LOGS}/gmm/seed{{seed}}/{{encoder}}/joint.log",
    benchmark:
        f"{BENCHMARKS}/gmm/seed{{seed}}/{{encoder}}/joint.tsv"
    conda:
        ENV
    threads: config["gmm"]["threads"]
    resources:
        gpu_slots=1,
        mem_mb=2000,
        runtime=60,
    params:
        hidden=config["gmm"]["hidden"],
        steps=config["gmm"]["joint"]["steps"],
        lr=config["gmm"]["joint"]["lr"],
        eval_every=config["gmm"]["eval_every"],
        checkpoint_every=config["gmm"]["checkpoint_every"],
        device=config["device"],
    shell:
        "python -m vae_approx.gmm train --phase joint --encoder {wildcards.encoder}"
        " --hidden {params.hidden} --data {input.data} --init {input.init}"
        " --steps {params.steps} --lr {params.lr} --seed {wildcards.seed}"
        " --eval-every {params.eval_every} --checkpoint-every {params.checkpoint_every}"
        " --threads {threads} --device {params.device}"
        " --out {output.model} --metrics {output.metrics} 2> {log}"


rule plot_gmm_regions:
    input:
        data=f"{SEEDED}/data.npz",
        pretrained=f"{SEEDED}/{{encoder}}/pretrained.pt",
        joint=f"{SEEDED}/{{encoder}}/joint.pt",
    output:
        report(
            f"{SEEDED}/{{encoder}}/regions.png",
            caption="../report/gmm_regions.rst",
            category="Gaussian mixture",
            subcategory="{encoder} encoder",
        ),
    log:
        f"{LOGS}/gmm/seed{{seed}}/{{encoder}}/regions.log",
    benchmark:
        f"{BENCHMARKS}/gmm/seed{{seed}}/{{encoder}}/regions.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m vae_approx.gmm regions --encoder {wildcards.encoder} --data {input.data}"
        " --pretrained {input.pretrained} --joint {input.joint} --out {output} 2> {log}"


rule plot_gmm_curves:
    input:
        pretrain=gmm_seeds("{encoder}/pretrain_metrics.csv"),
        joint=gmm_seeds("{encoder}/joint_metrics.csv"),
    output:
        report(
            f"{GMM}/{{encoder}}/curves.png",
            caption="../report/gmm_curves.rst",
            category="Gaussian mixture",
            subcategory="{encoder} encoder",
        ),
    log:
        f"{LOGS}/gmm/{{encoder}}/curves.log",
    benchmark:
        f"{BENCHMARKS}/gmm/{{encoder}}/curves.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m vae_approx.gmm curves --encoder {wildcards.encoder} --pretrain {input.pretrain}"
        " --joint {input.joint} --out {output} 2> {log}"


rule tabulate_gmm:
    input:
        pretrain=gmm_seeds("{encoder}/pretrain_metrics.csv"),
        joint=gmm_seeds("{encoder}/joint_metrics.csv"),
        ml=gmm_seeds("ml_fit.csv"),
        published=config["published_results"],
    output:
        csv=report(
            f"{GMM}/{{encoder}}/table.csv",
            caption="../report/gmm_table.rst",
            category="Gaussian mixture",
            subcategory="{encoder} encoder",
        ),
        md=f"{GMM}/{{encoder}}/table.md",
        per_seed=f"{GMM}/{{encoder}}/table_per_seed.csv",
        claims=f"{GMM}/{{encoder}}/claims.csv",
    log:
        f"{LOGS}/gmm/{{encoder}}/table.log",
    benchmark:
        f"{BENCHMARKS}/gmm/{{encoder}}/table.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m vae_approx.gmm tabulate --encoder {wildcards.encoder} --pretrain {input.pretrain}"
        " --joint {input.joint} --ml {input.ml} --published {input.published}"
        " --per-seed {output.per_seed} --csv {output.csv} --md {output.md} --claims {output.claims} 2> {log}"
