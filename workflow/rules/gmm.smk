# Gaussian mixture: ground-truth sample -> encoder pretraining -> joint training -> plots, tables.

GMM = f"{RESULTS}/gmm"


rule sample_gmm:
    output:
        f"{GMM}/data.npz",
    log:
        f"{LOGS}/gmm/data.log",
    benchmark:
        f"{BENCHMARKS}/gmm/data.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        n=config["gmm"]["n_per_component"],
        variance=config["gmm"]["variance"],
        seed=config["gmm"]["data_seed"],
    shell:
        "python -m vae_approx.gmm sample --n-per-component {params.n} --variance {params.variance}"
        " --seed {params.seed} --out {output} 2> {log}"


rule pretrain_gmm_encoder:
    input:
        data=f"{GMM}/data.npz",
    output:
        model=f"{GMM}/{{encoder}}/pretrained.pt",
        metrics=f"{GMM}/{{encoder}}/pretrain_metrics.csv",
    log:
        f"{LOGS}/gmm/{{encoder}}/pretrained.log",
    benchmark:
        f"{BENCHMARKS}/gmm/{{encoder}}/pretrained.tsv"
    conda:
        ENV
    threads: config["gmm"]["threads"]
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        hidden=config["gmm"]["hidden"],
        steps=config["gmm"]["pretrain"]["steps"],
        lr=config["gmm"]["pretrain"]["lr"],
        seed=config["gmm"]["seed"],
        eval_every=config["gmm"]["eval_every"],
        checkpoint_every=config["gmm"]["checkpoint_every"],
        device=config["device"],
    shell:
        "python -m vae_approx.gmm train --phase pretrain --encoder {wildcards.encoder}"
        " --hidden {params.hidden} --data {input.data} --steps {params.steps} --lr {params.lr}"
        " --seed {params.seed} --eval-every {params.eval_every}"
        " --checkpoint-every {params.checkpoint_every} --threads {threads}"
        " --device {params.device}"
        " --out {output.model} --metrics {output.metrics} 2> {log}"


rule train_gmm_joint:
    input:
        data=f"{GMM}/data.npz",
        init=f"{GMM}/{{encoder}}/pretrained.pt",
    output:
        model=f"{GMM}/{{encoder}}/joint.pt",
        metrics=f"{GMM}/{{encoder}}/joint_metrics.csv",
    log:
        f"{LOGS}/gmm/{{encoder}}/joint.log",
    benchmark:
        f"{BENCHMARKS}/gmm/{{encoder}}/joint.tsv"
    conda:
        ENV
    threads: config["gmm"]["threads"]
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        hidden=config["gmm"]["hidden"],
        steps=config["gmm"]["joint"]["steps"],
        lr=config["gmm"]["joint"]["lr"],
        seed=config["gmm"]["seed"],
        eval_every=config["gmm"]["eval_every"],
        checkpoint_every=config["gmm"]["checkpoint_every"],
        device=config["device"],
    shell:
        "python -m vae_approx.gmm train --phase joint --encoder {wildcards.encoder}"
        " --hidden {params.hidden} --data {input.data} --init {input.init}"
        " --steps {params.steps} --lr {params.lr} --seed {params.seed}"
        " --eval-every {params.eval_every} --checkpoint-every {params.checkpoint_every}"
        " --threads {threads} --device {params.device}"
        " --out {output.model} --metrics {output.metrics} 2> {log}"


rule plot_gmm:
    input:
        data=f"{GMM}/data.npz",
        pretrained=f"{GMM}/{{encoder}}/pretrained.pt",
        joint=f"{GMM}/{{encoder}}/joint.pt",
        metrics=[
            f"{GMM}/{{encoder}}/pretrain_metrics.csv",
            f"{GMM}/{{encoder}}/joint_metrics.csv",
        ],
    output:
        regions=report(
            f"{GMM}/{{encoder}}/regions.png",
            caption="../report/gmm_regions.rst",
            category="Gaussian mixture",
            subcategory="{encoder} encoder",
        ),
        curves=report(
            f"{GMM}/{{encoder}}/curves.png",
            caption="../report/gmm_curves.rst",
            category="Gaussian mixture",
            subcategory="{encoder} encoder",
        ),
    log:
        f"{LOGS}/gmm/{{encoder}}/plots.log",
    benchmark:
        f"{BENCHMARKS}/gmm/{{encoder}}/plots.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m vae_approx.gmm plot --encoder {wildcards.encoder} --data {input.data}"
        " --pretrained {input.pretrained} --joint {input.joint} --metrics {input.metrics}"
        " --regions {output.regions} --curves {output.curves} 2> {log}"


rule tabulate_gmm:
    input:
        metrics=[
            f"{GMM}/{{encoder}}/pretrain_metrics.csv",
            f"{GMM}/{{encoder}}/joint_metrics.csv",
        ],
        published=config["published_results"],
    output:
        csv=report(
            f"{GMM}/{{encoder}}/table.csv",
            caption="../report/gmm_table.rst",
            category="Gaussian mixture",
            subcategory="{encoder} encoder",
        ),
        md=f"{GMM}/{{encoder}}/table.md",
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
    params:
        centre_tolerance=config["gmm"]["centre_tolerance"],
    shell:
        "python -m vae_approx.gmm tabulate --encoder {wildcards.encoder} --metrics {input.metrics}"
        " --published {input.published} --centre-tolerance {params.centre_tolerance}"
        " --csv {output.csv} --md {output.md} --claims {output.claims} 2> {log}"
