"""Semantic-hashing stages: retrieval metric, the command-line chain, resume, the static step."""

import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import config_section

from vae_approx.common import NonFiniteLossError, Progress, resume_path
from vae_approx.config import stage_json
from vae_approx.semhash import train as semhash_train
from vae_approx.semhash.data import SparseCounts, load_prepared
from vae_approx.semhash.evaluate import precision_at_k, reported_mean
from vae_approx.semhash.settings import RUN, STAGE_KEYS, TRAIN_KEYS, TrainSettings
from vae_approx.semhash.train import StaticStep, train

SECTION = config_section("semhash")
# The stages' settings: config.yaml's, at the tests' small sizes.
SMALL = {"width": 16, "epochs_one_pair": 2, "epochs_many_pairs": 1, "many_pairs": 3, "lr": 1e-3,
         "eval_batch_size": 128, "checkpoint_every": 1,
         "synthetic": {**SECTION["synthetic"], "n_train": 200, "n_test": 50, "raw_vocab_size": 400, "n_classes": 4,
                       "n_topics": 6, "mean_length": 40, "seed": 0},
         "vocab_size": 200, "expected_documents": {"train": 200, "test": 50}}


def settings_json(stage: str, **overrides) -> str:
    return stage_json({**SECTION, **SMALL, **overrides}, STAGE_KEYS[stage])


def run_json(**overrides) -> str:
    return json.dumps({"seed": 1, "encoder": "e1", "depth": 1, "bits": 4, **overrides})


def train_settings(**overrides) -> TrainSettings:
    """The trainer's settings from config.yaml, at the tests' sizes (a linear e2 on 4 bits, 2 + 2 epochs)."""
    small = {"seed": 1, "encoder": "e2", "depth": 0, "bits": 4, "width": 8, "epochs_one_pair": 2,
             "epochs_many_pairs": 2, "many_pairs": 3, "lr": 1e-3, "eval_batch_size": 128, "checkpoint_every": 1}
    return TrainSettings(**{**{key: SECTION[key] for key in TRAIN_KEYS}, **small, **overrides})


def test_precision_at_k_by_hand():
    db = torch.tensor([[0, 0], [0, 1], [1, 1], [1, 0]], dtype=torch.bool)
    db_labels = np.array([0, 1, 1, 0])
    queries = torch.tensor([[0, 0], [1, 1]], dtype=torch.bool)
    # query 0: distances 0,1,2,1 -> order 0,1,3 (tie 1 vs 3 broken by index) -> labels 0,1,0 -> 2/3
    # query 1: distances 2,1,0,1 -> order 2,1,3 -> labels 1,1,0 -> relevant (label 1): 2/3
    assert precision_at_k(queries, np.array([0, 1]), db, db_labels, k=3) == pytest.approx(2 / 3)
    assert precision_at_k(queries, np.array([0, 1]), db, db_labels, k=1) == pytest.approx(1.0)


def stage(*args):
    return subprocess.run([sys.executable, "-m", "vae_approx.semhash", *map(str, args)], capture_output=True, text=True)


def sh(*args):
    proc = stage(*args)
    assert proc.returncode == 0, proc.stderr
    return proc


def train_args(corpus, out, **settings):
    return ["train", "--settings", settings_json("train", **settings), "--run", run_json(), "--corpus",
            corpus / "corpus.npz", "--threads", 1, "--device", "cpu", "--out", out / "m.pt", "--history", out / "h.csv"]


def retrieval_args(corpus, out, k=None, run=None):
    return ["retrieval", "--settings", settings_json("retrieval", **({"precision_k": k} if k else {})),
            "--run", run or run_json(), "--corpus", corpus / "corpus.npz", "--model", out / "m.pt", "--threads", 1,
            "--out", out / "r.csv"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("semhash")
    sh("synthesize", "--settings", settings_json("synthesize"), "--out", d / "raw.tgz")
    sh("prepare", "--settings", settings_json("prepare"), "--archive", d / "raw.tgz", "--out", d / "corpus.npz")
    return d


def test_the_stage_chain_writes_history_and_retrieval_with_the_run_as_columns(corpus, tmp_path):
    proc = sh(*train_args(corpus, tmp_path, cuda_graphs=True))
    assert "step 3/3" in proc.stderr
    assert "semhash.cuda_graphs: CUDA only; the steps run eagerly on cpu" in proc.stderr
    history = pd.read_csv(tmp_path / "h.csv")
    assert list(history.columns[:4]) == list(RUN)
    assert (history[list(RUN)] == pd.Series(json.loads(run_json()))).all().all()
    assert list(history.epoch) == [1, 2, 3] and list(history.pairs) == [1, 1, 3]
    assert np.isfinite(history[["train_nelbo", "test_nelbo"]]).all().all()
    assert not resume_path(tmp_path / "m.pt").exists()
    sh(*retrieval_args(corpus, tmp_path))
    retrieval = pd.read_csv(tmp_path / "r.csv")
    assert list(retrieval.columns) == [*RUN, "precision_at_100"] and retrieval.encoder.iloc[0] == "e1"
    assert 0 <= retrieval.precision_at_100.iloc[0] <= 1
    # a model is evaluated as the run it was trained for
    proc = stage(*retrieval_args(corpus, tmp_path, run=run_json(seed=2)))
    assert proc.returncode != 0 and "not of the run" in proc.stderr and "Traceback" not in proc.stderr
    # a model of another experiment (a faces generator file) is named for what it is
    other = tmp_path / "other"
    other.mkdir()
    torch.save({"kind": "dcgan generator", "spec": {}, "state": {}}, other / "m.pt")
    proc = stage(*retrieval_args(corpus, other))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "not a semantic-hashing model" in proc.stderr and "of kind 'dcgan generator'" in proc.stderr


def test_a_stage_reads_exactly_its_keys_and_the_run(corpus, tmp_path):
    """The rule passes the section's keys of the stage as one JSON object; a missing or unknown key, or a
    bad identity, is an error naming it, before any training."""
    assert set(STAGE_KEYS["train"]) == {*TRAIN_KEYS, "cuda_graphs"} and not set(TRAIN_KEYS) & set(RUN)
    section = json.loads(settings_json("train"))
    cases = [(["--settings", json.dumps({k: v for k, v in section.items() if k != "code_values"})],
              "missing ['code_values']"),
             (["--settings", json.dumps({**section, "lr_decay": 0.5})], "unknown ['lr_decay']"),
             (["--settings", json.dumps({**section, "seed": 1})], "unknown ['seed']"),  # per job: semhash.seeds
             (["--run", run_json(encoder="e4")], "encoder 'e4' is not one of ['e1', 'e2', 'e3']"),
             (["--run", json.dumps({"seed": 1, "encoder": "e1", "depth": 0})], "with the keys")]
    for change, named in cases:
        args = train_args(corpus, tmp_path)
        flag = args.index(change[0])
        args[flag + 1] = change[1]
        proc = stage(*args)
        assert proc.returncode != 0 and named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / "m.pt").exists() and not (tmp_path / "h.csv").exists()


def test_test_mean_over_documents_or_as_the_reproduction_averages_batches():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    assert reported_mean(values, 0) == pytest.approx(4.0)
    assert reported_mean(values, 2) == pytest.approx((1.5 + 3.5 + 10.0) / 3)  # the last batch of one counts as two
    assert reported_mean(values, 5) == reported_mean(values, 100) == pytest.approx(4.0)


def test_prepare_rejects_an_unexpected_document_count(corpus):
    proc = stage("prepare", "--settings", settings_json("prepare", expected_documents={"train": 11269, "test": 0}),
                 "--archive", corpus / "raw.tgz", "--out", corpus / "x.npz")
    assert proc.returncode != 0 and "200 train documents, expected 11269" in proc.stderr
    assert not (corpus / "x.npz").exists()


def test_prepare_checks_the_pinned_digest_of_the_real_archive_only(corpus, tmp_path):
    wrong = "0" * 64
    proc = stage("prepare", "--settings", settings_json("prepare", source="download", sha256=wrong),
                 "--archive", corpus / "raw.tgz", "--out", tmp_path / "c.npz")
    assert proc.returncode != 0 and f"does not match the pinned {wrong}" in proc.stderr
    assert not (tmp_path / "c.npz").exists()
    sh("prepare", "--settings", settings_json("prepare", source="synthetic", sha256=wrong),
       "--archive", corpus / "raw.tgz", "--out", tmp_path / "c.npz")


class Interrupt(Exception):
    pass


def test_an_interrupted_training_resumes_to_the_same_history(corpus, tmp_path):
    data = load_prepared(corpus / "corpus.npz")
    settings = train_settings()
    quiet = lambda: Progress("t", 4, 1, stream=io.StringIO())  # noqa: E731
    full, _, _ = train(data, settings, torch.device("cpu"), None, quiet())
    resume = resume_path(tmp_path / "m.pt")

    class Stop(Progress):
        def log(self, step, force=False, **values):
            if step == 3:
                raise Interrupt

    with pytest.raises(Interrupt):
        train(data, settings, torch.device("cpu"), resume, Stop("t", 4, 1, stream=io.StringIO()))
    resumed, _, _ = train(data, settings, torch.device("cpu"), resume, quiet())
    cols = ["epoch", "pairs", "train_nelbo", "test_nelbo"]
    pd.testing.assert_frame_equal(pd.DataFrame(resumed)[cols], pd.DataFrame(full)[cols])


def test_tabulate_and_plot_group_by_the_identity_columns(tmp_path):
    """Fake histories of 2 seeds x {e1, e2}, at 8 bits e1 lower in both seeds: the tables and claims
    come from the records' columns, whatever the files' paths and order; records that do not fit
    are refused, naming the run."""
    from vae_approx.semhash.__main__ import main

    histories, retrievals = [], []
    for i, (seed, encoder) in enumerate([(2, "e2"), (1, "e1"), (2, "e1"), (1, "e2")]):  # any order, any path
        best = 100.0 - (5.0 + seed if encoder == "e1" else 0.0)
        run = {"seed": seed, "encoder": encoder, "depth": 0, "bits": 8}
        pd.DataFrame([{**run, "epoch": 1, "pairs": 1, "train_nelbo": 150.0, "test_nelbo": best + 20},
                      {**run, "epoch": 2, "pairs": 1, "train_nelbo": 120.0, "test_nelbo": best}]
                     ).to_csv(tmp_path / f"h{i}.csv", index=False)
        pd.DataFrame([{**run, "precision_at_100": 0.5}]).to_csv(tmp_path / f"r{3 - i}.csv", index=False)
        histories.append(str(tmp_path / f"h{i}.csv"))
        retrievals.append(str(tmp_path / f"r{3 - i}.csv"))
    common = ["--settings", settings_json("tabulate"), "--published", "reference/published_results.csv",
              "--out-dir", str(tmp_path)]
    main(["tabulate", "--histories", *histories, "--retrievals", *retrievals, *common,
          "--claims", str(tmp_path / "claims.csv")])
    table = pd.read_csv(tmp_path / "test_nelbo_best.csv").set_index("encoder")
    assert table.loc["e1", "8 bits"] == pytest.approx(100 - 6.5) and table.loc["e2", "8 bits std"] == 0
    assert "Mean (standard deviation) over 2 seeds (1, 2" in (tmp_path / "test_nelbo_best.md").read_text()
    results = pd.read_csv(tmp_path / "results.csv")
    assert list(results.encoder) == ["e1", "e1", "e2", "e2"] and list(results.seed) == [1, 2, 1, 2]
    assert pd.read_csv(tmp_path / "claims.csv").verdict.tolist() == ["holds"]
    assert pd.read_csv(tmp_path / "claims_cells.csv").setting.tolist() == ["decoder depth 0, 8 bits"]
    main(["plot", "--histories", *histories, "--out", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a run with a history but no retrieval
    with pytest.raises(SystemExit, match="a history but no retrieval for seed 2 e2 depth 0 8 bits"):
        main(["tabulate", "--histories", *histories, "--retrievals", *retrievals[1:], *common,
              "--claims", str(tmp_path / "c.csv")])


def test_too_large_vocabulary_or_k_is_an_error_naming_the_config_key(corpus, tmp_path):
    proc = stage("prepare", "--settings", settings_json("prepare", vocab_size=100000), "--archive", corpus / "raw.tgz",
                 "--out", tmp_path / "c.npz")
    assert proc.returncode != 0 and "config key 'semhash.vocab_size'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "c.npz").exists()
    sh(*train_args(corpus, tmp_path))
    # the corpus has 200 training documents: precision@201 cannot be computed, and is not capped
    proc = stage(*retrieval_args(corpus, tmp_path, k=201))
    assert proc.returncode != 0 and "config key 'semhash.precision_k': 201 is more than the 200" in proc.stderr
    assert not (tmp_path / "r.csv").exists()
    sh(*retrieval_args(corpus, tmp_path, k=200))


def quiet(epochs):
    return Progress("t", epochs, 1, stream=io.StringIO())


@pytest.mark.parametrize("encoder,depth,growth", [("e1", 0, StaticStep.GROWTH), ("e2", 1, 1.0)])
def test_the_static_step_trains_exactly_as_the_eager_step(corpus, monkeypatch, encoder, depth, growth):
    """The CUDA graphs path without the capture: each batch padded into fixed buffers, the
    uniforms drawn outside the step, a few warm-up steps undone. The same history to the last bit,
    through a phase change (a new static step on an existing optimizer state) and, with growth
    1, a re-capture whenever a batch has more nonzeros than any before."""
    data = load_prepared(corpus / "corpus.npz")
    settings = train_settings(encoder=encoder, depth=depth)
    eager, _, _ = train(data, settings, torch.device("cpu"), None, quiet(4))
    monkeypatch.setattr(StaticStep, "GROWTH", growth)
    progress = quiet(4)
    static, encoder_model, _ = train(data, settings, torch.device("cpu"), None, progress, step_mode="static")
    cols = ["train_nelbo", "test_nelbo", "test_reconstruction", "test_kl"]
    pd.testing.assert_frame_equal(pd.DataFrame(static)[cols], pd.DataFrame(eager)[cols], check_exact=True)
    builds = progress.stream.getvalue().count("static step for")
    assert builds >= (2 if growth > 1 else 3)  # one per phase, and re-captures when the capacity is exact


def test_the_static_step_pads_without_changing_a_batch(corpus):
    data = load_prepared(corpus / "corpus.npz")
    counts = SparseCounts(data.train)
    smoothing = torch.as_tensor(data.smoothing, dtype=torch.float32)
    small, large = sorted(counts.batches(torch.arange(192), 64, smoothing), key=lambda x: len(x.col))[::2]
    settings = train_settings(encoder="e1", epochs_one_pair=1, epochs_many_pairs=0, many_pairs=1)
    encoder, decoder = semhash_train.build_models(settings, data.n_words)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()])
    before = [p.detach().clone() for p in encoder.parameters()]
    step = StaticStep(encoder, decoder, optimizer, settings, small, 1, capture=False)
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.parameters()))  # the warm-up is undone
    assert not optimizer.state[next(encoder.parameters())]["exp_avg"].any()
    assert step.capacity > len(small.col) and step.fits(small)
    step.load(small)
    assert torch.equal(step.x.dense(), small.dense())  # the padding adds nothing
    assert torch.equal(encoder(step.x), encoder(small))
    padded = step.x.transposed_product(step.x.val, torch.ones(len(small), 2))
    assert torch.equal(padded, small.transposed_product(small.val, torch.ones(len(small), 2)))
    if not step.fits(large):
        with pytest.raises(ValueError, match="nonzeros in a static step of 64 documents"):
            step(large, torch.Generator().manual_seed(0))


def test_a_non_finite_loss_stops_training_naming_the_epoch_and_batch(corpus, monkeypatch, tmp_path):
    data = load_prepared(corpus / "corpus.npz")
    settings = train_settings(encoder="e1", epochs_many_pairs=0, many_pairs=1)
    build = semhash_train.build_models

    def poisoned(*args):
        encoder, decoder = build(*args)
        with torch.no_grad():
            decoder.net[-1].bias[0] = float("inf")
        return encoder, decoder

    monkeypatch.setattr(semhash_train, "build_models", poisoned)
    resume = resume_path(tmp_path / "m.pt")
    for mode in ("eager", "static"):
        with pytest.raises(NonFiniteLossError, match=r"semhash e1 depth 0 4 bits: non-finite loss \(batch 0\) .* step 1"):
            train(data, settings, torch.device("cpu"), resume, quiet(2), step_mode=mode)
    assert not resume.exists()
    with pytest.raises(ValueError, match="cuda_graphs on CUDA only"):
        train(data, settings, torch.device("cpu"), None, quiet(2), step_mode="cuda_graphs")


def exact_args(corpus, out, model, run, encoder=True, **exact):
    settings = settings_json("exact", exact={**SECTION["exact"], "train_documents": 30, "iwae_curve": [5, 20],
                                             "iwae_samples": 10, **exact})
    return ["exact", "--settings", settings, "--run", run, "--encoder" if encoder else "--no-encoder",
            "--corpus", corpus / "corpus.npz", "--model", model, "--threads", 1, "--device", "cpu",
            "--out", out / f"exact-{model.stem}.csv"]


def test_the_exact_chain_and_the_likelihood_control(corpus, tmp_path):
    """train -> exact (enumeration at 4 bits, the IWAE bound only at max_bits 3), train_ml -> exact of the
    control, both as records with the run's identity; gaps reads them into tables, a figure and claims."""
    sh(*train_args(corpus, tmp_path))
    sh(*exact_args(corpus, tmp_path, tmp_path / "m.pt", run_json()))
    exact = pd.read_csv(tmp_path / "exact-m.csv")
    assert list(exact.columns[:4]) == list(RUN) and list(exact["set"]) == ["test", "train"]
    assert list(exact.documents) == [50, 30] and (exact.method == "enumeration").all()
    assert (exact.nll <= exact.nelbo_q_star + 1e-4).all() and (exact.nelbo_q_star <= exact.nelbo + 1e-4).all()
    assert np.allclose(exact.inference_gap, exact.approximation_gap + exact.amortization_gap)
    above = exact_args(corpus, tmp_path, tmp_path / "m.pt", run_json(), max_bits=3)
    above[-1] = tmp_path / "exact-bound.csv"
    sh(*above)
    bound = pd.read_csv(tmp_path / "exact-bound.csv")
    assert (bound.method == "importance sampling").all() and bound.nll.isna().all() and bound.nll_iwae_10.notna().all()
    # the control: the decoder alone, from the VAEs' initialisation, its rows named encoder "ml"
    ml_run = json.dumps({"seed": 1, "depth": 1, "bits": 4})
    proc = sh("train_ml", "--settings", settings_json("train_ml"), "--run", ml_run, "--corpus", corpus / "corpus.npz",
              "--threads", 1, "--device", "cpu", "--out", tmp_path / "d.pt", "--history", tmp_path / "dh.csv")
    assert "step 3/3" in proc.stderr
    history = pd.read_csv(tmp_path / "dh.csv")
    assert list(history.encoder.unique()) == ["ml"] and history.test_nll.notna().all()
    sh(*exact_args(corpus, tmp_path, tmp_path / "d.pt", ml_run, encoder=False))
    control = pd.read_csv(tmp_path / "exact-d.csv")
    assert list(control.encoder.unique()) == ["ml"] and control.nll.notna().all() and control.nelbo.isna().all()
    # a model is evaluated as the run it was trained for
    proc = stage(*exact_args(corpus, tmp_path, tmp_path / "m.pt", run_json(bits=8)))
    assert proc.returncode != 0 and "not of the run" in proc.stderr and "Traceback" not in proc.stderr
    # the tables over seeds: a second seed's records, shifted
    second = [pd.read_csv(f).assign(seed=2).assign(nll=lambda d: d.nll + 0.5) for f in
              (tmp_path / "exact-m.csv", tmp_path / "exact-d.csv")]
    for frame, name in zip(second, ("m2", "d2")):
        frame.to_csv(tmp_path / f"exact-{name}.csv", index=False)
    files = [tmp_path / f"exact-{name}.csv" for name in ("m", "d", "m2", "d2")]
    sh("gaps", "--settings", settings_json("gaps", exact={**SECTION["exact"], "iwae_curve": [5, 20], "iwae_samples": 10}),
       "--exact", *files, "--published", "reference/published_results.csv", "--out-dir", tmp_path,
       "--claims", tmp_path / "gaps_claims.csv")
    sh("plot_gaps", "--table", tmp_path / "gaps.csv", "--out", tmp_path / "gaps.png")
    gaps = pd.read_csv(tmp_path / "gaps.csv")
    assert set(gaps.encoder) == {"e1", "ml"} and (gaps.seeds == 2).all()
    assert (tmp_path / "gaps.png").stat().st_size > 0 and (tmp_path / "iwae.md").exists()
    claims = pd.read_csv(tmp_path / "gaps_claims.csv")
    assert list(claims.setting) == ["ELBO training gives up likelihood (e1), every (depth, bits) cell"]
