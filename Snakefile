# vae-approx: every experiment of "VAE Approximation Error: ELBO and Exponential Families"
# (Shekhovtsov, Schlesinger, Flach, ICLR 2022) and of its ReScience C reproduction, from raw
# data to result tables. Presets: config.yaml (quick, default), presets/smoke.yaml,
# presets/paper.yaml, chosen with --configfile. See README.md.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/gmm.smk"
include: "workflow/rules/semhash.smk"
include: "workflow/rules/images.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/provenance.smk"


# Downloads run where Snakemake itself runs (on a cluster: the login node), never as cluster
# jobs: compute nodes often have no internet.
localrules:
    download_20newsgroups,
    download_celeba,
    download_inception,


rule all:
    input:
        all_targets(),
