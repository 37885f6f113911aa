"""benchmarks/semhash_bench.py's wiring against the reproduction's script, on a stand-in script.

proger/vae cannot be fetched where the tests run, so a stand-in with the script's command line,
the lines the benchmark may change and its prints plays it: it reads the archive where the
script's loader does, computes for 0.2 s of CPU time in each "epoch" and prints a NELBO that tells which seed and
epoch range it ran with. What is tested is the benchmark's side of the contract: the archive
placed, only the seed and the epoch ranges changed, the script stopped between epochs (its
epoch times are its running time, not the time ours took), and the printed NELBOs parsed.
"""

from __future__ import annotations

import sys
import tarfile
import time
from pathlib import Path

import pytest

from vae_approx.semhash.settings import TrainSettings

# importable by name: the benchmark's spawned worker processes import it again
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import semhash_bench as bench  # noqa: E402

STAND_IN = '''import argparse
import tarfile
import time
import torch

parser = argparse.ArgumentParser()
parser.add_argument('--device', type=str, default='mps')
parser.add_argument('--latent_features', type=int, default=64)
parser.add_argument('output_checkpoint', type=str)
args = parser.parse_args()
print(vars(args))

torch.manual_seed(1)
seed = torch.initial_seed()


def work(seconds):  # an epoch's computing: CPU time, which stands still while the process is stopped
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass


with tarfile.open('data/20news-bydate-matlab.tgz') as tar:
    lines = tar.extractfile('20news-bydate/matlab/train.data').read().splitlines()
print('train documents', len(set(line.split()[0] for line in lines)))
print('test documents', 0)

for epoch in range(1000):
    work(0.2)
    print(f'Epoch {epoch}: train_loss={100 * seed + epoch:.2f} test_loss={1000 + epoch:.2f}', flush=True)

for epoch in range(1000, 1500):
    work(0.2)
    print(f'Epoch {epoch}: train_loss={100 * seed + epoch:.2f} test_loss={2000 + epoch:.2f}', flush=True)
open(args.output_checkpoint, 'w').write('done')
'''


@pytest.fixture
def checkout(tmp_path):
    (tmp_path / "vae" / "scripts").mkdir(parents=True)
    (tmp_path / "vae" / "scripts" / "train_semhash.py").write_text(STAND_IN)
    return tmp_path / "vae"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    path = tmp_path_factory.mktemp("archive") / "20news-bydate-matlab.tgz"
    bench.write_paper_shape_archive(path, 0, n_train=40, n_test=10, raw_vocab_size=200, mean_length=20.0)
    return path


def settings(seed: int, one: int, ten: int) -> TrainSettings:
    return bench.paper_settings(seed=seed, epochs_one_pair=one, epochs_many_pairs=ten, bits=8, width=16)


def test_the_benchmark_trains_with_the_paper_presets_settings():
    """Our side's settings are the paper preset's, but for the benchmark's own choices (BENCH, the command line)."""
    ours = bench.paper_settings()
    assert (ours.encoder, ours.depth, ours.bits, ours.seed) == ("e1", 0, 64, 1)
    assert (ours.width, ours.batch_size, ours.lr, ours.many_pairs, ours.estimator) == (512, 256, 1e-3, 10, "disarm")
    assert bench.PROTOCOL_EPOCHS == (1000, 500) and bench.VOCAB_SIZE == 10000
    assert bench.PAPER_SHAPE["n_train"] == 11269 and bench.PAPER_SHAPE["n_test"] == 7505


def test_script_copy_changes_only_seed_and_epoch_ranges():
    source = STAND_IN
    same, changed = bench.script_copy(source, 1, (1000, 500))
    assert same == source and changed == []
    copy, changed = bench.script_copy(source, 7, (3, 2))
    assert changed == ["torch.manual_seed(1) -> torch.manual_seed(7)", "range(1000, 1500) -> range(3, 5)",
                       "range(1000) -> range(3)"]
    differing = [(a, b) for a, b in zip(source.splitlines(), copy.splitlines()) if a != b]
    assert len(differing) == 3 and len(copy.splitlines()) == len(source.splitlines())
    with pytest.raises(SystemExit, match="expected 'torch.manual_seed\\(1\\)' once"):
        bench.script_copy(source.replace("torch.manual_seed(1)", "torch.manual_seed(2)"), 1, (1, 1))


def test_script_side_runs_stops_and_parses_the_script(checkout, archive, tmp_path):
    side = bench.ScriptSide(checkout, archive, settings(3, 2, 1), 1, tmp_path / "work")
    assert (tmp_path / "work" / "seed3" / "data" / "20news-bydate-matlab.tgz").resolve() == archive.resolve()
    rows = [side.step()]
    time.sleep(1.0)  # stopped between epochs: this second is in nobody's epoch time
    rows += [side.step(), side.step()]
    side.close()
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["pairs"] for r in rows] == [1, 1, 10]
    assert [r["train_nelbo"] for r in rows] == [300.0, 301.0, 302.0]        # its seed was 3
    assert [r["test_nelbo"] for r in rows] == [1000.0, 1001.0, 2002.0]      # phase two from epoch 3
    assert all(0.15 < r["seconds"] < 0.9 for r in rows), rows
    assert side.proc.returncode == 0 and (tmp_path / "work" / "seed3" / "checkpoint.pt").read_text() == "done"


def test_script_side_reports_a_script_that_dies(checkout, tmp_path):
    (checkout / "scripts" / "train_semhash.py").write_text(STAND_IN.replace("import torch\n", "import torch\nraise SystemExit('no data')\n"))
    with pytest.raises(SystemExit, match="ended .* before the expected line"):
        bench.ScriptSide(checkout, tmp_path / "missing.tgz", settings(1, 1, 1), 1, tmp_path / "work")


def test_benchmark_end_to_end_against_the_stand_in(checkout, capsys):
    """Ours (a real, small training run) against the stand-in, two seeds: both tables and a verdict."""
    assert bench.main(["--small", "--epochs", "2", "1", "--seeds", "1", "2", "--threads", "1",
                       "--reference-checkout", str(checkout)]) == 0
    out = capsys.readouterr().out
    assert "reference side: reproduction's script" in out
    assert "| one pair |" in out and "| whole schedule" in out
    assert "| 3 | 10 |" in out and "reference seed 2: 1000.00, 1001.00, 2002.00" in out
    # the stand-in's NELBOs are far from any real model's: the verdict must say so
    assert "NOT within seed spread at every epoch after the first" in out


def test_archive_is_in_the_real_format(archive):
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"20news-bydate/matlab/train.data", "20news-bydate/matlab/test.data"} <= names
