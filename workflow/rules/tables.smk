# Tables that span experiments: the claims table stacks every experiment's claims.


rule collect_claims:
    input:
        experiment_claims(),
    output:
        csv=report(
            f"{RESULTS}/claims.csv",
            caption="../report/claims.rst",
            category="Claims",
        ),
        md=f"{RESULTS}/claims.md",
        png=report(
            f"{RESULTS}/claims.png",
            caption="../report/claims_png.rst",
            category="Claims",
        ),
    log:
        f"{LOGS}/claims.log",
    benchmark:
        f"{BENCHMARKS}/claims.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m vae_approx.tables claims --inputs {input} --csv {output.csv} --md {output.md}"
        " --png {output.png} 2> {log}"
