# The run's provenance: the code, config, software and machine that made its results, and what
# they cost (vae_approx.provenance), written once every other product of the run exists.

from pathlib import Path

# The config files of this run in the order Snakemake merged them (the Snakefile's config.yaml,
# then each --configfile), relative to the workflow's folder when inside it.
CONFIG_FILES = [
    (
        os.path.relpath(path, workflow.basedir)
        if Path(path).is_relative_to(workflow.basedir)
        else path
    )
    for path in map(
        os.path.abspath,
        [f for f in workflow.configfiles if f not in workflow.overwrite_configfiles]
        + list(workflow.overwrite_configfiles),
    )
]


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
        settings=shlex.quote(json.dumps(config)),
        presets=" ".join(shlex.quote(f) for f in CONFIG_FILES),
        run_dir=lambda wildcards, output: os.path.dirname(output.json),
    shell:
        "python -m vae_approx.provenance --run-dir {params.run_dir} --settings {params.settings}"
        " --preset {params.presets} --json {output.json} --config {output.config} 2> {log}"
