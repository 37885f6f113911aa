# Gaussian mixture, per seed: ground-truth sample -> encoder pretraining -> joint training, and
# the maximum-likelihood fit of the centres (the control); over seeds: tables and claims.
# The path layout, the keys each stage reads (--settings) and the file lists live in
# vae_approx.gmm.settings; each job's wildcards are its identity (--run).

from vae_approx.gmm import settings as gmm_settings

GMM_CONFIG = config["gmm"]
# Each file's path template (wildcards seed, encoder), by its name in gmm_settings.PATHS.
GMM_PATH = {name: gmm_settings.path(RESULTS, name) for name in gmm_settings.PATHS}
GMM_LOGS = f"{LOGS}/gmm"
GMM_BENCHMARKS = f"{BENCHMARKS}/gmm"

TARGETS["gmm"] = gmm_settings.targets(GMM_CONFIG, RESULTS)
CLAIMS["gmm"] = gmm_settings.claims_files(GMM_CONFIG, RESULTS)


rule sample_gmm:
    output:
        GMM_PATH["data"],
    log:
        f"{GMM_LOGS}/seed{{seed}}/data.log",
    benchmark:
        f"{GMM_BENCHMARKS}/seed{{seed}}/data.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        settings=settings_json(GMM_CONFIG, gmm_settings.STAGE_KEYS["sample"]),
        run=run_json,
    shell:
        "python -m vae_approx.gmm sample --settings {params.settings} --run {params.run}"
        " --out {output} 2> {log}"


rule fit_gmm_ml:
    input:
        GMM_PATH["data"],
    output:
        GMM_PATH["ml_fit"],
    log:
        f"{GMM_LOGS}/seed{{seed}}/ml_fit.log",
    benchmark:
        f"{GMM_BENCHMARKS}/seed{{seed}}/ml_fit.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        run=run_json,
    shell:
        "python -m vae_approx.gmm fit-ml --run {params.run} --data {input} --out {output} 2> {log}"


rule pretrain_gmm_encoder:
    input:
        data=GMM_PATH["data"],
    output:
        model=GMM_PATH["pretrained"],
        metrics=GMM_PATH["pretrain_metrics"],
    log:
        f"{GMM_LOGS}/seed{{seed}}/{{encoder}}/pretrained.log",
    benchmark:
        f"{GMM_BENCHMARKS}/seed{{seed}}/{{encoder}}/pretrained.tsv"
    conda:
        ENV
    threads: GMM_CONFIG["threads"]
    resources:
        gpu_slots=1,
        mem_mb=2000,
        runtime=60,
    params:
        settings=settings_json(GMM_CONFIG, gmm_settings.STAGE_KEYS["pretrain"]),
        run=run_json,
        device=config["device"],
    shell:
        "python -m vae_approx.gmm train --phase pretrain --settings {params.settings} --run {params.run}"
        " --data {input.data} --threads {threads} --device {params.device}"
        " --out {output.model} --metrics {output.metrics} 2> {log}"


rule train_gmm_joint:
    input:
        data=GMM_PATH["data"],
        init=GMM_PATH["pretrained"],
    output:
        model=GMM_PATH["joint"],
        metrics=GMM_PATH["joint_metrics"],
    log:
        f"{GMM_LOGS}/seed{{seed}}/{{encoder}}/joint.log",
    benchmark:
        f"{GMM_BENCHMARKS}/seed{{seed}}/{{encoder}}/joint.tsv"
    conda:
        ENV
    threads: GMM_CONFIG["threads"]
    resources:
        gpu_slots=1,
        mem_mb=2000,
        runtime=60,
    params:
        settings=settings_json(GMM_CONFIG, gmm_settings.STAGE_KEYS["joint"]),
        run=run_json,
        device=config["device"],
    shell:
        "python -m vae_approx.gmm train --phase joint --settings {params.settings} --run {params.run}"
        " --data {input.data} --init {input.init} --threads {threads} --device {params.device}"
        " --out {output.model} --metrics {output.metrics} 2> {log}"


rule plot_gmm_regions:
    input:
        data=GMM_PATH["data"],
        pretrained=GMM_PATH["pretrained"],
        joint=GMM_PATH["joint"],
    output:
        report(
            GMM_PATH["regions"],
            caption="../report/gmm_regions.rst",
            category="Gaussian mixture",
            subcategory="decision regions",
            labels={"encoder": "{encoder}", "seed": "{seed}"},
        ),
    log:
        f"{GMM_LOGS}/seed{{seed}}/{{encoder}}/regions.log",
    benchmark:
        f"{GMM_BENCHMARKS}/seed{{seed}}/{{encoder}}/regions.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        run=run_json,
    shell:
        "python -m vae_approx.gmm regions --run {params.run} --data {input.data}"
        " --pretrained {input.pretrained} --joint {input.joint} --out {output} 2> {log}"


rule plot_gmm_curves:
    input:
        # every seed's file, in the config's order
        pretrain=gmm_settings.every_seed(GMM_CONFIG, RESULTS, "pretrain_metrics"),
        joint=gmm_settings.every_seed(GMM_CONFIG, RESULTS, "joint_metrics"),
    output:
        report(
            GMM_PATH["curves"],
            caption="../report/gmm_curves.rst",
            category="Gaussian mixture",
            subcategory="tables and curves",
            labels={"encoder": "{encoder}", "file": "training curves"},
        ),
    log:
        f"{GMM_LOGS}/{{encoder}}/curves.log",
    benchmark:
        f"{GMM_BENCHMARKS}/{{encoder}}/curves.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        run=run_json,
    shell:
        "python -m vae_approx.gmm curves --run {params.run} --pretrain {input.pretrain}"
        " --joint {input.joint} --out {output} 2> {log}"


rule tabulate_gmm:
    input:
        # every seed's files, in the config's order (the order of the per-seed table)
        pretrain=gmm_settings.every_seed(GMM_CONFIG, RESULTS, "pretrain_metrics"),
        joint=gmm_settings.every_seed(GMM_CONFIG, RESULTS, "joint_metrics"),
        ml=gmm_settings.every_seed(GMM_CONFIG, RESULTS, "ml_fit"),
        published=config["published_results"],
    output:
        csv=GMM_PATH["table_csv"],
        md=GMM_PATH["table_md"],
        html=report(
            GMM_PATH["table_html"],
            caption="../report/gmm_table.rst",
            category="Gaussian mixture",
            subcategory="tables and curves",
            labels={"encoder": "{encoder}", "file": "table"},
        ),
        per_seed=GMM_PATH["table_per_seed"],
        claims=GMM_PATH["claims"],
    log:
        f"{GMM_LOGS}/{{encoder}}/table.log",
    benchmark:
        f"{GMM_BENCHMARKS}/{{encoder}}/table.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        run=run_json,
    shell:
        "python -m vae_approx.gmm tabulate --run {params.run} --pretrain {input.pretrain}"
        " --joint {input.joint} --ml {input.ml} --published {input.published}"
        " --per-seed {output.per_seed} --csv {output.csv} --md {output.md} --claims {output.claims} 2> {log}"
