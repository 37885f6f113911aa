# The run's provenance: the code, config, software and machine that made its results, and what
# they cost (vae_approx.provenance), written once every other product of the run exists.


rule record_provenance:
    input:
        all_targets(provenance=False),
    output:
        json=f"{RESULTS}/provenance.json",
        config=f"{RESULTS}/config.yaml",
    log:
        f"{LOGS}/provenance.log",
    benchmark:
        f"{BENCHMARKS}/provenance.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        # the whole config: any change to it records the run anew (the hash, config.yaml)
        settings=WHOLE_CONFIG,
        presets=CONFIG_FILES,
        run_dir=lambda wildcards, output: os.path.dirname(output.json),
    shell:
        "python -m vae_approx.provenance --run-dir {params.run_dir} --settings {params.settings}"
        " --preset {params.presets} --json {output.json} --config {output.config} 2> {log}"
