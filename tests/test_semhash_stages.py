"""Semantic-hashing stages: retrieval metric, the command-line chain, resume."""

import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from vae_approx.common import NonFiniteLossError, Progress, resume_path
from vae_approx.semhash import train as semhash_train
from vae_approx.semhash.data import load_prepared
from vae_approx.semhash.model import SparseCounts
from vae_approx.semhash.train import StaticStep, TrainSettings, precision_at_k, reported_mean, train
from vae_approx.semhash.settings import TrainSettings as SettingsOfTheRule


def test_precision_at_k_by_hand():
    db = torch.tensor([[0, 0], [0, 1], [1, 1], [1, 0]], dtype=torch.bool)
    db_labels = np.array([0, 1, 1, 0])
    queries = torch.tensor([[0, 0], [1, 1]], dtype=torch.bool)
    # query 0: distances 0,1,2,1 -> order 0,1,3 (tie 1 vs 3 broken by index) -> labels 0,1,0 -> 2/3
    # query 1: distances 2,1,0,1 -> order 2,1,3 -> labels 1,1,0 -> relevant (label 1): 2/3
    assert precision_at_k(queries, np.array([0, 1]), db, db_labels, k=3) == pytest.approx(2 / 3)
    assert precision_at_k(queries, np.array([0, 1]), db, db_labels, k=1) == pytest.approx(1.0)


def sh(*args):
    proc = subprocess.run([sys.executable, "-m", "vae_approx.semhash", *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


SETTINGS = {"width": 16, "estimator": "disarm", "kl_gradient": "estimator", "code_values": "bits",
            "epochs_one_pair": 2, "epochs_many_pairs": 1, "many_pairs": 3, "batch_size": 64, "lr": 1e-3,
            "eval_batch_size": 128, "reference_protocol": False, "checkpoint_every": 1,
            "test_nelbo_batch": 0}
TRAIN = ["--encoder", "e1", "--depth", "1", "--bits", "4", "--seed", "1", "--settings", json.dumps(SETTINGS)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("semhash")
    sh("synthesize", "--n-train", 200, "--n-test", 50, "--raw-vocab-size", 400, "--n-classes", 4, "--n-topics", 6,
       "--seed", 0, "--mean-length", 40, "--out", d / "raw.tgz")
    sh("prepare", "--archive", d / "raw.tgz", "--vocab-size", 200, "--expect-train", 200, "--expect-test", 50,
       "--out", d / "corpus.npz")
    return d


def test_the_stage_chain_writes_history_and_retrieval(corpus):
    proc = sh("train", "--corpus", corpus / "corpus.npz", *TRAIN, "--out", corpus / "m.pt", "--history", corpus / "h.csv",
              "--device", "cpu", "--cuda-graphs")
    assert "step 3/3" in proc.stderr
    assert "semhash.cuda_graphs: CUDA only; the steps run eagerly on cpu" in proc.stderr
    history = pd.read_csv(corpus / "h.csv")
    assert list(history.epoch) == [1, 2, 3] and list(history.pairs) == [1, 1, 3]
    assert np.isfinite(history[["train_nelbo", "test_nelbo"]]).all().all()
    assert not resume_path(corpus / "m.pt").exists()
    sh("retrieval", "--corpus", corpus / "corpus.npz", "--model", corpus / "m.pt", "--out", corpus / "r.csv")
    assert 0 <= pd.read_csv(corpus / "r.csv").precision_at_100.iloc[0] <= 1


def test_train_settings_come_whole_from_the_config_section(corpus, tmp_path):
    """The rule passes the section's training keys as one JSON object; the stage builds its
    settings from it, and a missing or unknown key is an error naming it, before any training."""
    assert SettingsOfTheRule is TrainSettings
    assert sorted(TrainSettings.config_keys()) == sorted(SETTINGS)
    section = {**SETTINGS, "precision_k": 100, "threads": 2}       # the section has other keys too
    assert json.loads(TrainSettings.config_json(section)) == SETTINGS
    built = TrainSettings.from_config(SETTINGS, "e2", "1", "8", "3")
    assert (built.encoder, built.depth, built.bits, built.seed, built.code_values) == ("e2", 1, 8, 3, "bits")
    with pytest.raises(ValueError, match=r"unknown \['seed'\]"):  # the seed comes from semhash.seeds, per job
        TrainSettings.from_config({**SETTINGS, "seed": 1}, "e2", 1, 8, 3)
    for bad, named in (({k: v for k, v in SETTINGS.items() if k != "code_values"}, "missing ['code_values']"),
                       ({**SETTINGS, "lr_decay": 0.5}, "unknown ['lr_decay']")):
        proc = subprocess.run([sys.executable, "-m", "vae_approx.semhash", "train", "--corpus", str(corpus / "corpus.npz"),
                               "--encoder", "e1", "--depth", "0", "--bits", "4", "--seed", "1", "--settings", json.dumps(bad),
                               "--out", str(tmp_path / "m.pt"), "--history", str(tmp_path / "h.csv")],
                              capture_output=True, text=True)
        assert proc.returncode != 0 and named in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "m.pt").exists() and not (tmp_path / "h.csv").exists()


def test_test_mean_over_documents_or_as_the_reproduction_averages_batches():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    assert reported_mean(values) == pytest.approx(4.0)
    assert reported_mean(values, 2) == pytest.approx((1.5 + 3.5 + 10.0) / 3)  # the last batch of one counts as two
    assert reported_mean(values, 5) == reported_mean(values, 100) == pytest.approx(4.0)


def test_prepare_rejects_an_unexpected_document_count(corpus):
    proc = subprocess.run([sys.executable, "-m", "vae_approx.semhash", "prepare", "--archive", str(corpus / "raw.tgz"),
                           "--vocab-size", "200", "--expect-train", "11269", "--out", str(corpus / "x.npz")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "200 train documents, expected 11269" in proc.stderr
    assert not (corpus / "x.npz").exists()


class Interrupt(Exception):
    pass


def test_an_interrupted_training_resumes_to_the_same_history(corpus, tmp_path):
    data = load_prepared(corpus / "corpus.npz")
    settings = TrainSettings("e2", 0, 4, 8, "disarm", 2, 2, 3, 64, 1e-3, 1, 128, False, 1)
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


def test_tabulate_decides_the_encoder_claims_per_cell_over_seeds(tmp_path):
    """Fake histories of 3 seeds x {e1, e2} x {8, 16} bits: at 8 bits e1 is clearly lower in every
    seed (holds), at 16 bits the difference changes sign between seeds (inconclusive), so the
    claim over the grid is inconclusive and names the 16-bit cell."""
    from vae_approx.semhash.__main__ import main
    from vae_approx.tables import paired_verdict

    e1_minus_e2 = {8: [-5.0, -5.5, -4.5], 16: [-1.0, 2.0, -0.5]}
    histories, retrievals = [], []
    for seed in (1, 2, 3):
        for encoder in ("e1", "e2"):
            for bits in (8, 16):
                run = tmp_path / f"seed{seed}" / encoder / "depth0" / f"{bits}bits"
                run.mkdir(parents=True)
                best = 100.0 + (e1_minus_e2[bits][seed - 1] if encoder == "e1" else 0.0)
                pd.DataFrame({"epoch": [1, 2], "pairs": [1, 1], "train_nelbo": [150.0, 120.0],
                              "test_nelbo": [best + 20, best]}).to_csv(run / "history.csv", index=False)
                pd.DataFrame([{"encoder": encoder, "depth": 0, "bits": bits, "seed": seed,
                               "precision_at_100": 0.5}]).to_csv(run / "retrieval.csv", index=False)
                histories.append(run / "history.csv")
                retrievals.append(run / "retrieval.csv")
    main(["tabulate", "--histories", *map(str, histories), "--retrievals", *map(str, retrievals),
          "--published", "reference/published_results.csv", "--out-dir", str(tmp_path), "--claims",
          str(tmp_path / "claims.csv")])
    table = pd.read_csv(tmp_path / "test_nelbo_best.csv").set_index("encoder")
    assert table.loc["e1", "8 bits"] == pytest.approx(100 - 5.0) and table.loc["e2", "16 bits std"] == 0
    assert table.loc["e1", "16 bits std"] == pytest.approx(np.std(e1_minus_e2[16], ddof=1))
    assert "Mean (standard deviation) over 3 seeds" in (tmp_path / "test_nelbo_best.md").read_text()
    assert len(pd.read_csv(tmp_path / "results.csv")) == 12
    cells = pd.read_csv(tmp_path / "claims_cells.csv").set_index("setting")
    for bits, verdict in ((8, "holds"), (16, "inconclusive")):
        row, pv = cells.loc[f"decoder depth 0, {bits} bits"], paired_verdict(e1_minus_e2[bits], "decrease")
        assert row.verdict == pv.verdict == verdict and row.low == pytest.approx(pv.low)
    claim = pd.read_csv(tmp_path / "claims.csv").iloc[0]
    assert claim.verdict == "inconclusive" and claim.setting.startswith("encoders e1 vs e2")
    assert "1 of 2 cells hold; inconclusive: decoder depth 0, 16 bits; fails: none" in claim.measured
    # a history and a retrieval file of different runs are refused
    with pytest.raises(SystemExit, match="not of the same run"):
        main(["tabulate", "--histories", str(histories[0]), "--retrievals", str(retrievals[1]),
              "--published", "reference/published_results.csv", "--out-dir", str(tmp_path), "--claims",
              str(tmp_path / "c.csv")])


def test_too_large_vocabulary_or_k_is_an_error_naming_the_config_key(corpus, tmp_path):
    def stage(*args):
        return subprocess.run([sys.executable, "-m", "vae_approx.semhash", *map(str, args)], capture_output=True, text=True)

    proc = stage("prepare", "--archive", corpus / "raw.tgz", "--vocab-size", 100000, "--out", tmp_path / "c.npz")
    assert proc.returncode != 0 and "config key 'semhash.vocab_size'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "c.npz").exists()
    model = tmp_path / "m.pt"
    assert stage("train", "--corpus", corpus / "corpus.npz", *TRAIN, "--out", model, "--history", tmp_path / "h.csv").returncode == 0
    # the corpus has 200 training documents: precision@201 cannot be computed, and is not capped
    proc = stage("retrieval", "--corpus", corpus / "corpus.npz", "--model", model, "--k", 201, "--out", tmp_path / "r.csv")
    assert proc.returncode != 0 and "config key 'semhash.precision_k': 201 is more than the 200" in proc.stderr
    assert not (tmp_path / "r.csv").exists()
    assert stage("retrieval", "--corpus", corpus / "corpus.npz", "--model", model, "--k", 200,
                 "--out", tmp_path / "r.csv").returncode == 0


def quiet(epochs):
    return Progress("t", epochs, 1, stream=io.StringIO())


@pytest.mark.parametrize("encoder,depth,growth", [("e1", 0, StaticStep.GROWTH), ("e2", 1, 1.0)])
def test_the_static_step_trains_exactly_as_the_eager_step(corpus, monkeypatch, encoder, depth, growth):
    """The CUDA graphs path without the capture: each batch padded into fixed buffers, the
    uniforms drawn outside the step, a few warm-up steps undone. The same history to the last bit,
    through a phase change (a new static step on an existing optimizer state) and, with growth
    1, a re-capture whenever a batch has more nonzeros than any before."""
    data = load_prepared(corpus / "corpus.npz")
    settings = TrainSettings(encoder, depth, 4, 8, "disarm", 2, 2, 3, 64, 1e-3, 1, 128, False, 1)
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
    settings = TrainSettings("e1", 0, 4, 8, "disarm", 1, 0, 1, 64, 1e-3, 1, 128, False, 1)
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
    settings = TrainSettings("e1", 0, 4, 8, "disarm", 2, 0, 1, 64, 1e-3, 1, 128, False, 1)
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
