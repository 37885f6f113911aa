# Semantic hashing: corpus (real archive or synthetic, same raw format) -> prepared sparse
# corpus -> one Bernoulli VAE per (seed, encoder, decoder depth, bits) -> retrieval -> tables and
# claims over seeds.

from vae_approx.semhash.settings import TrainSettings

SEMHASH = f"{RESULTS}/semhash"
RUN_DIR = "seed{seed}/{encoder}/depth{depth}/{bits}bits"  # one training job of the grid
SH = config["semhash"]
# The other tables of tabulate_semhash, beside the two the report shows.
SEMHASH_TABLES = [
    "test_nelbo_best.md",
    "precision.md",
    "test_nelbo_last.csv",
    "test_nelbo_last.md",
    "train_nelbo_last.csv",
    "train_nelbo_last.md",
]


wildcard_constraints:
    encoder="[a-z0-9]+",
    depth=r"\d+",
    bits=r"\d+",


def semhash_archive():
    """The raw archive prepare_corpus reads: the real one (placed by hand or by
    download_20newsgroups) or the synthetic one, in the same format."""
    if config["semhash"]["source"] == "download":
        return config["semhash"]["archive"]
    return f"{RESULTS}/semhash/synthetic-20news-bydate-matlab.tgz"


def semhash_grid(name):
    """One file per training job (seed x encoder x decoder depth x bits), in one fixed order."""
    return expand(
        f"{RESULTS}/semhash/seed{{seed}}/{{encoder}}/depth{{depth}}/{{bits}}bits/{name}",
        seed=config["semhash"]["seeds"],
        encoder=config["semhash"]["encoders"],
        depth=config["semhash"]["depths"],
        bits=config["semhash"]["bits"],
    )


TARGETS["semhash"] = [
    f"{SEMHASH}/test_nelbo_best.md",
    f"{SEMHASH}/curves.png",
]
CLAIMS["semhash"] = [f"{SEMHASH}/claims.csv"]


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
        url=SH["url"],
        sha256=SH["sha256"],
    shell:
        "python -m vae_approx.semhash fetch --url {params.url} --sha256 '{params.sha256}'"
        " --out {output} 2> {log}"


rule synthesize_corpus:
    output:
        f"{SEMHASH}/synthetic-20news-bydate-matlab.tgz",
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
        **{k: v for k, v in SH["synthetic"].items()},
    shell:
        "python -m vae_approx.semhash synthesize --n-train {params.n_train} --n-test {params.n_test}"
        " --raw-vocab-size {params.raw_vocab_size} --n-classes {params.n_classes}"
        " --n-topics {params.n_topics} --mean-length {params.mean_length}"
        " --length-spread {params.length_spread}"
        " --topic-concentration {params.topic_concentration} --seed {params.seed}"
        " --out {output} 2> {log}"


rule prepare_corpus:
    input:
        semhash_archive(),
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
        vocab_size=SH["vocab_size"],
        ties=SH["vocabulary_ties"],
        expect_train=SH["expected_documents"]["train"],
        expect_test=SH["expected_documents"]["test"],
        sha256=SH["sha256"] if SH["source"] == "download" else "",
    shell:
        "python -m vae_approx.semhash prepare --archive {input} --vocab-size {params.vocab_size}"
        " --vocabulary-ties {params.ties}"
        " --expect-train {params.expect_train} --expect-test {params.expect_test}"
        " --sha256 '{params.sha256}' --out {output} 2> {log}"


rule train_semhash:
    input:
        corpus=f"{SEMHASH}/corpus.npz",
    output:
        model=f"{SEMHASH}/{RUN_DIR}/model.pt",
        history=f"{SEMHASH}/{RUN_DIR}/history.csv",
    log:
        f"{LOGS}/semhash/{RUN_DIR}/model.log",
    benchmark:
        f"{BENCHMARKS}/semhash/{RUN_DIR}/model.tsv"
    conda:
        ENV
    threads: SH["threads"]
    resources:
        gpu_slots=1,
        mem_mb=2000,
        runtime=240,
    params:
        # the training keys of the semhash section, whole (vae_approx.semhash.settings)
        settings=shlex.quote(TrainSettings.config_json(SH)),
        device=config["device"],
        cuda_graphs="--cuda-graphs" if SH["cuda_graphs"] else "",
    shell:
        "python -m vae_approx.semhash train --corpus {input.corpus} --encoder {wildcards.encoder}"
        " --depth {wildcards.depth} --bits {wildcards.bits} --seed {wildcards.seed}"
        " --settings {params.settings}"
        " --threads {threads} --device {params.device} {params.cuda_graphs}"
        " --out {output.model} --history {output.history} 2> {log}"


rule evaluate_retrieval:
    input:
        corpus=f"{SEMHASH}/corpus.npz",
        model=f"{SEMHASH}/{RUN_DIR}/model.pt",
    output:
        f"{SEMHASH}/{RUN_DIR}/retrieval.csv",
    log:
        f"{LOGS}/semhash/{RUN_DIR}/retrieval.log",
    benchmark:
        f"{BENCHMARKS}/semhash/{RUN_DIR}/retrieval.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        k=SH["precision_k"],
    shell:
        "python -m vae_approx.semhash retrieval --corpus {input.corpus} --model {input.model}"
        " --k {params.k} --threads {threads} --out {output} 2> {log}"


rule plot_semhash:
    input:
        semhash_grid("history.csv"),
    output:
        report(
            f"{SEMHASH}/curves.png",
            caption="../report/semhash_curves.rst",
            category="Semantic hashing",
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
        histories=semhash_grid("history.csv"),
        retrievals=semhash_grid("retrieval.csv"),
        published=config["published_results"],
    output:
        test_nelbo=report(
            f"{SEMHASH}/test_nelbo_best.csv",
            caption="../report/semhash_nelbo.rst",
            category="Semantic hashing",
        ),
        precision=report(
            f"{SEMHASH}/precision.csv",
            caption="../report/semhash_precision.rst",
            category="Semantic hashing",
        ),
        tables=expand(f"{SEMHASH}/{{table}}", table=SEMHASH_TABLES),
        results=f"{SEMHASH}/results.csv",
        claims=f"{SEMHASH}/claims.csv",
        claims_cells=f"{SEMHASH}/claims_cells.csv",
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
        out_dir=lambda wildcards, output: os.path.dirname(output.claims),
        k=SH["precision_k"],
    shell:
        "python -m vae_approx.semhash tabulate --histories {input.histories}"
        " --retrievals {input.retrievals} --published {input.published} --k {params.k}"
        " --out-dir {params.out_dir} --claims {output.claims} 2> {log}"
