# Tables that span experiments: the claims table stacks every experiment's claims, under the run's
# provenance (every field but the times, which provenance.json gets after the last job).


rule collect_claims:
    input:
        experiment_claims(),
    output:
        csv=f"{RESULTS}/claims.csv",
        md=f"{RESULTS}/claims.md",
        html=report(
            f"{RESULTS}/claims.html",
            caption="../report/claims.rst",
            category="Claims",
            labels={"file": "claims table"},
        ),
        png=report(
            f"{RESULTS}/claims.png",
            caption="../report/claims_png.rst",
            category="Claims",
            labels={"file": "claims figure"},
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
    params:
        settings=WHOLE_CONFIG,
        presets=CONFIG_FILES,
        run_dir=lambda wildcards, output: os.path.dirname(output[0]),
    shell:
        "python -m vae_approx.tables claims --inputs {input} --csv {output.csv} --md {output.md}"
        " --png {output.png} --run-dir {params.run_dir} --settings {params.settings}"
        " --preset {params.presets} 2> {log}"
