"""Semantic-hashing data: the raw 20news-bydate matlab format, the synthetic corpus, the vocabulary."""

from __future__ import annotations

import hashlib
import io
import tarfile

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from vae_approx.common import InputError
from vae_approx.semhash.data import (
    MEMBER_DIR,
    RAW_FILES,
    load_prepared,
    prepare,
    read_archive,
    read_raw_split,
    save_prepared,
    synthetic_corpus,
    write_archive,
    write_raw_corpus,
)

torch.set_num_threads(1)

# The generator's shape of the tests' corpora (the config's synthetic section has its own).
SHAPE = dict(length_spread=1.0, topic_concentration=0.1)


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus(n_train=60, n_test=40, vocab_size=300, n_classes=4, n_topics=6,
                            mean_length=30, seed=3, **SHAPE)


def same(a: sp.spmatrix, b: sp.spmatrix) -> bool:
    return a.shape == b.shape and (a != b).nnz == 0


# ---------------------------------------------------------------- synthetic corpus


def test_synthetic_corpus_is_seeded_and_labelled(corpus):
    again = synthetic_corpus(60, 40, 300, 4, 6, 30, seed=3, **SHAPE)
    other = synthetic_corpus(60, 40, 300, 4, 6, 30, seed=4, **SHAPE)
    assert all(same(a, b) for a, b in zip(corpus[:2], again[:2]))
    assert all(np.array_equal(a, b) for a, b in zip(corpus[2:], again[2:]))
    assert not same(corpus.train_counts, other.train_counts)
    assert corpus.train_counts.shape == (60, 300) and corpus.test_counts.shape == (40, 300)
    assert corpus.train_counts.dtype == np.int64 and corpus.train_counts.data.min() >= 1
    assert set(np.unique(corpus.train_labels)) <= set(range(4))
    assert np.all(np.diff(corpus.train_labels) >= 0)  # ordered by class, like the real files
    lengths = np.asarray(corpus.train_counts.sum(axis=1)).ravel()
    assert 20 < lengths.mean() < 40


def test_token_sampler_draws_from_each_row():
    from vae_approx.semhash.data import _categorical

    probs = np.array([[0.1, 0.0, 0.6, 0.3], [0.0, 0.0, 0.0, 1.0], [0.25, 0.25, 0.25, 0.25]])
    n = 50_000
    rows = np.repeat(np.arange(3), n)
    draws = _categorical(np.random.default_rng(0), probs, rows)
    freq = np.stack([np.bincount(draws[rows == r], minlength=4) / n for r in range(3)])
    assert np.all(np.abs(freq - probs) <= 5 * np.sqrt(probs * (1 - probs) / n))  # 5 standard errors


def test_synthetic_classes_differ_in_their_words():
    c = synthetic_corpus(400, 10, 200, 2, 6, 80, seed=0, **SHAPE)
    profile = [np.asarray(c.train_counts[c.train_labels == k].sum(axis=0)).ravel() for k in (0, 1)]
    profile = [p / p.sum() for p in profile]
    assert 0.5 * np.abs(profile[0] - profile[1]).sum() > 0.1  # total variation between classes


# ---------------------------------------------------------------- raw format round trip


def test_write_read_round_trip_through_tgz(corpus, tmp_path):
    paths = write_raw_corpus(tmp_path / "raw", *corpus)
    assert sorted(p.name for p in paths.values()) == sorted(RAW_FILES)

    lines = (tmp_path / "raw" / "train.data").read_text().splitlines()
    table = np.array([[int(v) for v in line.split(" ")] for line in lines])
    assert table.shape[1] == 3 and table.min() >= 1
    assert np.all(np.diff(table[:, 0]) >= 0)                       # docIdx ascending
    assert len(table) == corpus.train_counts.nnz                   # one line per nonzero
    labels = (tmp_path / "raw" / "train.label").read_text().split()
    assert [int(v) for v in labels] == (corpus.train_labels + 1).tolist()

    tgz = write_archive(tmp_path / "raw", tmp_path / "corpus.tgz")
    with tarfile.open(tgz) as tar:
        names = set(tar.getnames())
    assert {f"{MEMBER_DIR}/{n}" for n in RAW_FILES} <= names

    back = read_archive(tgz)
    width = back.train_counts.shape[1]
    # the format cannot record words that never occur: columns end at the largest wordIdx
    assert width <= 300 and corpus.train_counts[:, width:].nnz == 0 and corpus.test_counts[:, width:].nnz == 0
    assert same(back.train_counts, corpus.train_counts[:, :width])
    assert same(back.test_counts, corpus.test_counts[:, :width])
    assert np.array_equal(back.train_labels, corpus.train_labels)
    assert np.array_equal(back.test_labels, corpus.test_labels)

    counts, labels = read_raw_split(tmp_path / "raw" / "test.data", tmp_path / "raw" / "test.label", n_words=300)
    assert same(counts, corpus.test_counts) and np.array_equal(labels, corpus.test_labels)


def test_archive_is_byte_reproducible_and_takes_a_file_list(corpus, tmp_path):
    paths = write_raw_corpus(tmp_path / "raw", *corpus)
    a = write_archive(tmp_path / "raw", tmp_path / "a.tgz")
    b = write_archive(list(paths.values()), tmp_path / "b.tgz")
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    with pytest.raises(InputError, match="expected exactly the files"):
        write_archive(list(paths.values())[:3], tmp_path / "c.tgz")


def test_documents_without_words_survive(tmp_path):
    # documents 2 and 4 (of 4) have no words: only the label file knows they exist
    train = sp.csr_matrix(np.array([[1, 0, 2], [0, 0, 0], [0, 3, 0], [0, 0, 0]]))
    test = sp.csr_matrix(np.array([[0, 0, 0], [0, 0, 5]]))
    write_raw_corpus(tmp_path, train, test, np.array([0, 1, 1, 2]), np.array([2, 0]))
    assert (tmp_path / "train.data").read_text() == "1 1 1\n1 3 2\n3 2 3\n"
    assert (tmp_path / "train.label").read_text() == "1\n2\n2\n3\n"
    back = read_archive(write_archive(tmp_path, tmp_path / "x.tgz"))
    assert same(back.train_counts, train) and same(back.test_counts, test)
    assert back.train_labels.tolist() == [0, 1, 1, 2]


# ---------------------------------------------------------------- bad raw files


GOOD_DATA = "1 1 4\n1 3 1\n2 2 2\n3 1 1\n3 4 7\n"
GOOD_LABEL = "1\n2\n2\n"


@pytest.mark.parametrize(
    "data, label, bad_file, match",
    [
        ("0 1 4\n" + GOOD_DATA[6:], GOOD_LABEL, "train.data", r"line 1: docIdx must be 1-based"),
        (GOOD_DATA.replace("2 2 2", "2 0 2"), GOOD_LABEL, "train.data", r"line 3: wordIdx must be 1-based"),
        (GOOD_DATA.replace("3 1 1", "3 1 -1"), GOOD_LABEL, "train.data", r"line 4: count must be a positive"),
        (GOOD_DATA.replace("3 1 1", "3 1 0"), GOOD_LABEL, "train.data", r"line 4: count must be a positive"),
        (GOOD_DATA.replace("3 1 1", "3 1 1.5"), GOOD_LABEL, "train.data", r"line 4: expected 3 integer"),
        (GOOD_DATA.replace("2 2 2", "2 2"), GOOD_LABEL, "train.data", r"line 3: expected 3 integer"),
        (GOOD_DATA.replace("2 2 2", "2 2 2 2"), GOOD_LABEL, "train.data", r"line 3: expected 3 integer"),
        (GOOD_DATA.replace("2 2 2", "2 x 2"), GOOD_LABEL, "train.data", r"line 3: expected 3 integer"),
        (GOOD_DATA + "1 3 5\n", GOOD_LABEL, "train.data", r"line 6 repeats docIdx 1 wordIdx 3 of line 2"),
        (GOOD_DATA, "1\n2\n", "train.data", r"line 4: docIdx 3 exceeds the 2 documents of .*train.label"),
        (GOOD_DATA, "1\n0\n2\n", "train.label", r"line 2: classes are 1-based"),
        (GOOD_DATA, "1\n2 2\n2\n", "train.label", r"line 2: expected 1 integer field"),
        ("", GOOD_LABEL, "train.data", r"file is empty"),
    ],
)
def test_bad_raw_files_name_file_and_line(tmp_path, data, label, bad_file, match):
    (tmp_path / "train.data").write_text(data)
    (tmp_path / "train.label").write_text(label)
    with pytest.raises(InputError, match=match) as err:
        read_raw_split(tmp_path / "train.data", tmp_path / "train.label")
    assert bad_file in str(err.value)


def test_good_small_file_reads_and_allows_blank_and_crlf_lines(tmp_path):
    (tmp_path / "d").write_text(GOOD_DATA.replace("\n", "\r\n") + "\r\n")
    (tmp_path / "l").write_text(GOOD_LABEL + "1\n")  # a fourth document without words
    counts, labels = read_raw_split(tmp_path / "d", tmp_path / "l")
    expected = np.array([[4, 0, 1, 0], [0, 2, 0, 0], [1, 0, 0, 7], [0, 0, 0, 0]])
    assert np.array_equal(counts.toarray(), expected) and labels.tolist() == [0, 1, 1, 0]


def test_missing_raw_file(tmp_path):
    (tmp_path / "l").write_text(GOOD_LABEL)
    with pytest.raises(InputError, match="nothere.data"):
        read_raw_split(tmp_path / "nothere.data", tmp_path / "l")


def _tgz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"{MEMBER_DIR}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buffer.getvalue()


def test_archive_missing_member(tmp_path):
    files = {"train.data": GOOD_DATA.encode(), "train.label": GOOD_LABEL.encode(), "test.data": GOOD_DATA.encode()}
    (tmp_path / "a.tgz").write_bytes(_tgz(files))
    with pytest.raises(InputError, match=r"a\.tgz: member 20news-bydate/matlab/test\.label is missing"):
        read_archive(tmp_path / "a.tgz")


def test_archive_bad_member_names_the_member(tmp_path):
    files = {"train.data": GOOD_DATA.encode(), "train.label": GOOD_LABEL.encode(),
             "test.data": b"1 1 -2\n", "test.label": b"1\n"}
    (tmp_path / "a.tgz").write_bytes(_tgz(files))
    with pytest.raises(InputError, match=r"a\.tgz:20news-bydate/matlab/test\.data: line 1: count"):
        read_archive(tmp_path / "a.tgz")


@pytest.mark.parametrize("keep", ["30%", "60%", "all but the last byte"])
def test_truncated_archive(corpus, tmp_path, keep):
    write_raw_corpus(tmp_path / "raw", *corpus)
    blob = write_archive(tmp_path / "raw", tmp_path / "full.tgz").read_bytes()
    # losing only the gzip trailer (CRC, length) must be caught as well
    n = len(blob) - 1 if keep.startswith("all") else int(len(blob) * int(keep[:-1]) / 100)
    (tmp_path / "cut.tgz").write_bytes(blob[:n])
    with pytest.raises(InputError, match=r"cut\.tgz"):
        read_archive(tmp_path / "cut.tgz")


def test_not_an_archive_or_missing(tmp_path):
    (tmp_path / "junk.tgz").write_bytes(b"this is not a tar file" * 50)
    with pytest.raises(InputError, match=r"junk\.tgz"):
        read_archive(tmp_path / "junk.tgz")
    with pytest.raises(InputError, match=r"absent\.tgz"):
        read_archive(tmp_path / "absent.tgz")


# ---------------------------------------------------------------- vocabulary and smoothing


def hand_made():
    #                    w0 w1 w2 w3 w4 w5      document frequency: w0 3, w1 1, w2 2, w3 2, w4 0, w5 3
    train = np.array([[1, 9, 0, 2, 0, 1],
                      [2, 0, 1, 0, 0, 1],
                      [1, 0, 3, 1, 0, 0],
                      [0, 0, 0, 0, 0, 4]])
    # the test split has words beyond the training width (columns 6, 7), which are dropped
    test = np.array([[1, 1, 1, 1, 1, 1, 5, 5],
                     [0, 0, 2, 0, 0, 0, 0, 1]])
    return sp.csr_matrix(train), sp.csr_matrix(test)


def test_prepare_keeps_words_in_most_training_documents():
    train, test = hand_made()
    p = prepare(train, test, 3, train_labels=[0, 1, 0, 1], test_labels=[1, 1], ties="lowest_index")
    # w0 and w5 (3 documents each); w2 and w3 tie at 2, the lower index wins; w1 has the most
    # occurrences but only in one document, so it is not chosen
    assert p.vocabulary.tolist() == [0, 2, 5]
    assert np.array_equal(p.train.toarray(), train.toarray()[:, [0, 2, 5]])
    assert np.array_equal(p.test.toarray(), test.toarray()[:, [0, 2, 5]])
    counts = np.array([4, 4, 6]) + 1 / 3
    np.testing.assert_allclose(p.smoothing, counts / counts.sum(), rtol=1e-12)
    assert p.smoothing.sum() == pytest.approx(1.0, abs=1e-12)
    assert p.train_labels.tolist() == [0, 1, 0, 1] and p.n_words == 3
    assert p.train.has_sorted_indices and p.train.dtype == np.int32

    assert prepare(train, test, 4, ties="lowest_index").vocabulary.tolist() == [0, 2, 3, 5]
    assert prepare(train, test, 1, ties="lowest_index").vocabulary.tolist() == [0]
    with pytest.raises(InputError, match="unknown vocabulary tie rule 'random'"):
        prepare(train, test, 3, ties="random")
    with pytest.raises(InputError, match="exceeds the 5 distinct words"):
        prepare(train, test, 6, ties="torch_topk")
    with pytest.raises(InputError, match="labels have shape"):
        prepare(train, test, 3, ties="torch_topk", train_labels=[0, 1])


def test_vocabulary_ties_as_the_reproductions_loader_or_by_lowest_index():
    """torch_topk keeps the tied words torch.topk returns on the document frequencies of the
    words up to the last one seen in training (the reproduction's loader: topk over
    (counts > 0).sum(0) of its dense matrix); both rules keep every untied word."""
    import torch
    rng = np.random.default_rng(3)
    dense = (rng.random((30, 200)) < rng.random(200) * 0.3) * rng.integers(1, 4, (30, 200))
    dense[:, 190:] = 0                                              # words never seen in training
    train, test = sp.csr_matrix(dense), sp.csr_matrix(dense[:5])
    df = (dense > 0).sum(0)
    reproduction = np.sort(torch.topk(torch.as_tensor(df[:190]), 60).indices.numpy())
    topk, lowest = (prepare(train, test, 60, ties=t).vocabulary for t in ("torch_topk", "lowest_index"))
    assert np.array_equal(topk, reproduction)
    cut = np.sort(df)[::-1][59]
    assert set(np.flatnonzero(df > cut)) <= set(topk) & set(lowest)
    assert np.all(df[topk] >= cut) and np.all(df[lowest] >= cut)
    assert set(topk) != set(lowest)                                 # the rules do differ on ties here
    assert np.array_equal(lowest[df[lowest] == cut], np.flatnonzero(df == cut)[:len(lowest[df[lowest] == cut])])


def test_prepare_on_synthetic_corpus_and_save_load(corpus, tmp_path):
    p = prepare(corpus.train_counts, corpus.test_counts, 100, ties="torch_topk",
                train_labels=corpus.train_labels, test_labels=corpus.test_labels)
    df = np.asarray((corpus.train_counts > 0).sum(axis=0)).ravel()
    assert df[p.vocabulary].min() >= np.delete(df, p.vocabulary).max()  # nothing better was left out
    assert p.smoothing.sum() == pytest.approx(1.0) and p.smoothing.min() > 0

    save_prepared(p, tmp_path / "prepared.npz")
    assert [f.name for f in tmp_path.iterdir()] == ["prepared.npz"]  # no temporary left behind
    q = load_prepared(tmp_path / "prepared.npz")
    assert same(q.train, p.train) and same(q.test, p.test)
    assert np.array_equal(q.vocabulary, p.vocabulary) and np.array_equal(q.smoothing, p.smoothing)
    assert np.array_equal(q.test_labels, p.test_labels)

    unlabelled = prepare(corpus.train_counts, corpus.test_counts, 100, ties="torch_topk")
    save_prepared(unlabelled, tmp_path / "u.npz")
    assert load_prepared(tmp_path / "u.npz").train_labels is None


def test_load_prepared_rejects_bad_files(corpus, tmp_path):
    p = prepare(corpus.train_counts, corpus.test_counts, 50, ties="torch_topk")
    save_prepared(p, tmp_path / "p.npz")
    blob = (tmp_path / "p.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InputError, match=r"cut\.npz"):
        load_prepared(tmp_path / "cut.npz")
    with pytest.raises(InputError, match=r"none\.npz: file not found"):
        load_prepared(tmp_path / "none.npz")

    with np.load(tmp_path / "p.npz") as z:
        arrays = dict(z)
    bad = dict(arrays, smoothing=arrays["smoothing"] * 2)
    np.savez(tmp_path / "s.npz", **bad)
    with pytest.raises(InputError, match=r"s\.npz: smoothing"):
        load_prepared(tmp_path / "s.npz")
    bad = dict(arrays, train_indices=arrays["train_indices"] + 1000)
    np.savez(tmp_path / "i.npz", **bad)
    with pytest.raises(InputError, match=r"i\.npz: train counts are not a valid CSR"):
        load_prepared(tmp_path / "i.npz")
    bad = {k: v for k, v in arrays.items() if k != "test_indptr"}
    np.savez(tmp_path / "m.npz", **bad)
    with pytest.raises(InputError, match=r"m\.npz: missing arrays \['test_indptr'\]"):
        load_prepared(tmp_path / "m.npz")
