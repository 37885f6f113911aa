# Semantic hashing: corpus (real archive or synthetic, same raw format) -> prepared sparse
# corpus -> one Bernoulli VAE per (seed, encoder, decoder depth, bits) -> retrieval and the exact
# approximation error (with the likelihood control, the decoder alone) -> tables and claims over
# seeds. What each stage reads of the config, and the path layout, are in
# vae_approx.semhash.settings; a training job's wildcards are its identity (--run).

from vae_approx.semhash import settings as semhash_settings

SEMHASH = f"{RESULTS}/semhash"
SH = config["semhash"]
SEMHASH_RUN = semhash_settings.RUN_DIR  # one training job of the grid
SEMHASH_ML_RUN = semhash_settings.ML_RUN_DIR  # one maximum-likelihood control
# What tabulate_semhash_gaps reads: every run's exact.csv, the controls' too.
SEMHASH_EXACT = [
    *semhash_settings.run_files(SH, SEMHASH, "exact.csv"),
    *semhash_settings.ml_run_files(SH, SEMHASH, "exact.csv"),
]
# The tables of tabulate_semhash_gaps but gaps.csv (plot_semhash_gaps reads it), as CSV and Markdown.
SEMHASH_GAPS_TABLES = [
    f"{SEMHASH}/{table}.{ext}"
    for table in semhash_settings.GAPS_TABLES
    for ext in ("csv", "md")
    if f"{table}.{ext}" != "gaps.csv"
]
# The grid tables of tabulate_semhash, as CSV and Markdown.
SEMHASH_TABLES = [
    f"{SEMHASH}/{table}.{ext}"
    for table in semhash_settings.TABLES
    for ext in ("csv", "md")
]


# Global constraints (the GMM's encoders are wildcards too): a name, and numbers.
wildcard_constraints:
    encoder="[a-z0-9]+",
    depth=r"\d+",
    bits=r"\d+",


TARGETS["semhash"] = [
    f"{SEMHASH}/test_nelbo_best.md",
    f"{SEMHASH}/curves.png",
    f"{SEMHASH}/gaps.md",
    f"{SEMHASH}/{semhash_settings.GAPS_FIGURE}",
]
CLAIMS["semhash"] = [f"{SEMHASH}/claims.csv", f"{SEMHASH}/gaps_claims.csv"]


rule download_20newsgroups:
    output:
        SH["archive"],
    log:
        f"{LOGS}/semhash/download.log",
    benchmark:
        f"{BENCHMARKS}/semhash/download.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        settings=settings_json(SH, semhash_settings.STAGE_KEYS["fetch"]),
    shell:
        "python -m vae_approx.semhash fetch --settings {params.settings} --out {output} 2> {log}"


rule synthesize_corpus:
    output:
        f"{SEMHASH}/{semhash_settings.SYNTHETIC_ARCHIVE}",
    log:
        f"{LOGS}/semhash/synthetic-20news-bydate-matlab.log",
    benchmark:
        f"{BENCHMARKS}/semhash/synthetic-20news-bydate-matlab.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        settings=settings_json(SH, semhash_settings.STAGE_KEYS["synthesize"]),
    shell:
        "python -m vae_approx.semhash synthesize --settings {params.settings} --out {output} 2> {log}"


rule prepare_corpus:
    input:
        semhash_settings.archive_file(SH, SEMHASH),
    output:
        f"{SEMHASH}/corpus.npz",
    log:
        f"{LOGS}/semhash/corpus.log",
    benchmark:
        f"{BENCHMARKS}/semhash/corpus.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        settings=settings_json(SH, semhash_settings.STAGE_KEYS["prepare"]),
    shell:
        "python -m vae_approx.semhash prepare --settings {params.settings} --archive {input}"
        " --out {output} 2> {log}"


rule train_semhash:
    input:
        corpus=f"{SEMHASH}/corpus.npz",
    output:
        model=f"{SEMHASH}/{SEMHASH_RUN}/model.pt",
        history=f"{SEMHASH}/{SEMHASH_RUN}/history.csv",
    log:
        f"{LOGS}/semhash/{SEMHASH_RUN}/model.log",
    benchmark:
        f"{BENCHMARKS}/semhash/{SEMHASH_RUN}/model.tsv"
    conda:
        ENV
    threads: SH["threads"]
    resources:
        gpu_slots=1,
        mem_mb=2000,
        runtime=240,
    params:
        settings=settings_json(SH, semhash_settings.STAGE_KEYS["train"]),
        run=lambda wildcards: run_json(wildcards),
        device=config["device"],
    shell:
        "python -m vae_approx.semhash train --settings {params.settings} --run {params.run}"
        " --corpus {input.corpus} --threads {threads} --device {params.device}"
        " --out {output.model} --history {output.history} 2> {log}"


rule train_semhash_ml:
    input:
        corpus=f"{SEMHASH}/corpus.npz",
    output:
        model=f"{SEMHASH}/{SEMHASH_ML_RUN}/decoder.pt",
        history=f"{SEMHASH}/{SEMHASH_ML_RUN}/history.csv",
    log:
        f"{LOGS}/semhash/{SEMHASH_ML_RUN}/decoder.log",
    benchmark:
        f"{BENCHMARKS}/semhash/{SEMHASH_ML_RUN}/decoder.tsv"
    conda:
        ENV
    threads: SH["threads"]
    resources:
        gpu_slots=1,
        mem_mb=2000,
        runtime=240,
    params:
        settings=settings_json(SH, semhash_settings.STAGE_KEYS["train_ml"]),
        run=lambda wildcards: run_json(wildcards),
        device=config["device"],
    shell:
        "python -m vae_approx.semhash train_ml --settings {params.settings} --run {params.run}"
        " --corpus {input.corpus} --threads {threads} --device {params.device}"
        " --out {output.model} --history {output.history} 2> {log}"


rule evaluate_semhash_exact:
    input:
        corpus=f"{SEMHASH}/corpus.npz",
        model=f"{SEMHASH}/{SEMHASH_RUN}/model.pt",
    output:
        f"{SEMHASH}/{SEMHASH_RUN}/exact.csv",
    log:
        f"{LOGS}/semhash/{SEMHASH_RUN}/exact.log",
    benchmark:
        f"{BENCHMARKS}/semhash/{SEMHASH_RUN}/exact.tsv"
    conda:
        ENV
    threads: SH["threads"]
    resources:
        gpu_slots=1,
        mem_mb=3000,
        runtime=60,
    params:
        settings=settings_json(SH, semhash_settings.STAGE_KEYS["exact"]),
        run=lambda wildcards: run_json(wildcards),
        device=config["device"],
    shell:
        "python -m vae_approx.semhash exact --settings {params.settings} --run {params.run} --encoder"
        " --corpus {input.corpus} --model {input.model} --threads {threads} --device {params.device}"
        " --out {output} 2> {log}"


rule evaluate_semhash_ml_exact:
    input:
        corpus=f"{SEMHASH}/corpus.npz",
        model=f"{SEMHASH}/{SEMHASH_ML_RUN}/decoder.pt",
    output:
        f"{SEMHASH}/{SEMHASH_ML_RUN}/exact.csv",
    log:
        f"{LOGS}/semhash/{SEMHASH_ML_RUN}/exact.log",
    benchmark:
        f"{BENCHMARKS}/semhash/{SEMHASH_ML_RUN}/exact.tsv"
    conda:
        ENV
    threads: SH["threads"]
    resources:
        gpu_slots=1,
        mem_mb=3000,
        runtime=60,
    params:
        settings=settings_json(SH, semhash_settings.STAGE_KEYS["exact"]),
        run=lambda wildcards: run_json(wildcards),
        device=config["device"],
    shell:
        "python -m vae_approx.semhash exact --settings {params.settings} --run {params.run} --no-encoder"
        " --corpus {input.corpus} --model {input.model} --threads {threads} --device {params.device}"
        " --out {output} 2> {log}"


rule tabulate_semhash_gaps:
    input:
        exact=SEMHASH_EXACT,
        published=config["published_results"],
    output:
        gaps=f"{SEMHASH}/gaps.csv",
        tables=SEMHASH_GAPS_TABLES,
        # each table's HTML, in the report under its caption (workflow/report/semhash_<table>.rst)
        html=[
            report(
                f"{SEMHASH}/{table}.html",
                caption=f"../report/semhash_{table}.rst",
                category="Semantic hashing",
                subcategory="tables",
                labels={"table": table},
            )
            for table in semhash_settings.GAPS_TABLES
        ],
        claims=f"{SEMHASH}/gaps_claims.csv",
        claims_cells=f"{SEMHASH}/{semhash_settings.GAPS_CELLS}",
    log:
        f"{LOGS}/semhash/gaps.log",
    benchmark:
        f"{BENCHMARKS}/semhash/gaps.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        settings=settings_json(SH, semhash_settings.STAGE_KEYS["gaps"]),
        out_dir=lambda wildcards, output: os.path.dirname(output.claims),
    shell:
        "python -m vae_approx.semhash gaps --settings {params.settings} --exact {input.exact}"
        " --published {input.published} --out-dir {params.out_dir}"
        " --claims {output.claims} 2> {log}"


rule plot_semhash_gaps:
    input:
        f"{SEMHASH}/gaps.csv",
    output:
        report(
            f"{SEMHASH}/{semhash_settings.GAPS_FIGURE}",
            caption="../report/semhash_gaps_png.rst",
            category="Semantic hashing",
            subcategory="figures",
            labels={"figure": "approximation error"},
        ),
    log:
        f"{LOGS}/semhash/gaps_png.log",
    benchmark:
        f"{BENCHMARKS}/semhash/gaps_png.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m vae_approx.semhash plot_gaps --table {input} --out {output} 2> {log}"


rule evaluate_retrieval:
    input:
        corpus=f"{SEMHASH}/corpus.npz",
        model=f"{SEMHASH}/{SEMHASH_RUN}/model.pt",
    output:
        f"{SEMHASH}/{SEMHASH_RUN}/retrieval.csv",
    log:
        f"{LOGS}/semhash/{SEMHASH_RUN}/retrieval.log",
    benchmark:
        f"{BENCHMARKS}/semhash/{SEMHASH_RUN}/retrieval.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        settings=settings_json(SH, semhash_settings.STAGE_KEYS["retrieval"]),
        run=lambda wildcards: run_json(wildcards),
    shell:
        "python -m vae_approx.semhash retrieval --settings {params.settings} --run {params.run}"
        " --corpus {input.corpus} --model {input.model} --threads {threads} --out {output} 2> {log}"


rule plot_semhash:
    input:
        semhash_settings.run_files(SH, SEMHASH, "history.csv"),
    output:
        report(
            f"{SEMHASH}/curves.png",
            caption="../report/semhash_curves.rst",
            category="Semantic hashing",
            subcategory="figures",
            labels={"figure": "training curves"},
        ),
    log:
        f"{LOGS}/semhash/curves.log",
    benchmark:
        f"{BENCHMARKS}/semhash/curves.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m vae_approx.semhash plot --histories {input} --out {output} 2> {log}"


rule tabulate_semhash:
    input:
        histories=semhash_settings.run_files(SH, SEMHASH, "history.csv"),
        retrievals=semhash_settings.run_files(SH, SEMHASH, "retrieval.csv"),
        published=config["published_results"],
    output:
        tables=SEMHASH_TABLES,
        # each table's HTML, in the report under its caption (workflow/report/semhash_<table>.rst)
        html=[
            report(
                f"{SEMHASH}/{table}.html",
                caption=f"../report/semhash_{table}.rst",
                category="Semantic hashing",
                subcategory="tables",
                labels={"table": table},
            )
            for table in semhash_settings.TABLES
        ],
        results=f"{SEMHASH}/results.csv",
        claims=f"{SEMHASH}/claims.csv",
        claims_cells=f"{SEMHASH}/{semhash_settings.CLAIMS_CELLS}",
    log:
        f"{LOGS}/semhash/tables.log",
    benchmark:
        f"{BENCHMARKS}/semhash/tables.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        settings=settings_json(SH, semhash_settings.STAGE_KEYS["tabulate"]),
        out_dir=lambda wildcards, output: os.path.dirname(output.claims),
    shell:
        "python -m vae_approx.semhash tabulate --settings {params.settings}"
        " --histories {input.histories} --retrievals {input.retrievals}"
        " --published {input.published} --out-dir {params.out_dir}"
        " --claims {output.claims} 2> {log}"
