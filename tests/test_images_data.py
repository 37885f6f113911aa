"""Faces experiment data: the uint8 array format, CelebA's zip, downloads, offline Inception."""

import hashlib
import json
import socket
import urllib.request
import zipfile

import numpy as np
import pytest
import torch

from vae_approx.common import InputError
from vae_approx.images import data as D
from vae_approx.images import settings as S
from vae_approx.images.__main__ import main
from vae_approx.images.evaluate import load_inception, make_extractor


def test_digits_array_format():
    images, labels = D.digits_images(32)
    assert images.shape == (1797, 1, 32, 32) and images.dtype == np.uint8
    assert labels.shape == (1797,) and set(labels) == set(range(10))
    assert images.min() == 0 and images.max() == 255
    x = D.to_float(images[:5])
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(D.to_uint8(x), images[:5])  # the mapping v <-> v / 127.5 - 1 round-trips


def test_prepare_digits_writes_memory_mappable_arrays(tmp_path):
    main(["prepare-digits", "--settings", '{"image_size": 32}', "--out", str(tmp_path / "d.npy"),
          "--labels", str(tmp_path / "l.npy")])
    images = D.load_images(tmp_path / "d.npy", channels=1, size=32)
    assert isinstance(images, np.memmap)
    assert len(D.load_labels(tmp_path / "l.npy", len(images))) == 1797
    with pytest.raises(InputError, match="1 channels, expected 3"):
        D.load_images(tmp_path / "d.npy", channels=3)
    with pytest.raises(InputError, match="32x32, expected 64x64"):
        D.load_images(tmp_path / "d.npy", size=64)
    np.save(tmp_path / "f.npy", np.zeros((2, 1, 4, 4), np.float32))
    with pytest.raises(InputError, match="f.npy: expected uint8"):
        D.load_images(tmp_path / "f.npy")
    with pytest.raises(InputError, match="not found"):
        D.load_images(tmp_path / "missing.npy")


@pytest.fixture(scope="module")
def celeba_zip(tmp_path_factory):
    path = tmp_path_factory.mktemp("celeba") / "img_align_celeba.zip"
    D.write_synthetic_celeba_zip(path, 12, seed=0)
    return path


def test_synthetic_zip_has_celebas_layout(celeba_zip):
    from PIL import Image

    with zipfile.ZipFile(celeba_zip) as zf:
        names = zf.namelist()
        assert names[0] == "img_align_celeba/" and names[1:3] == ["img_align_celeba/000001.jpg", "img_align_celeba/000002.jpg"]
        with zf.open(names[1]) as f, Image.open(f) as img:
            assert img.size == (178, 218) and img.format == "JPEG"


def test_prepare_celeba_resizes_and_centre_crops(celeba_zip, tmp_path):
    from PIL import Image
    import io
    import torchvision.transforms as T

    out = tmp_path / "celeba.npy"
    assert D.prepare_celeba(celeba_zip, out, 64, expected_count=12) == 12
    images = D.load_images(out, channels=3, size=64)
    assert images.shape == (12, 3, 64, 64)
    with zipfile.ZipFile(celeba_zip) as zf:
        img = Image.open(io.BytesIO(zf.read("img_align_celeba/000003.jpg"))).convert("RGB")
    # the DCGAN tutorial's transform, ToTensor and Normalize((0.5,) * 3, (0.5,) * 3) included
    expected = T.Compose([T.Resize(64), T.CenterCrop(64), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])(img)
    assert torch.allclose(D.to_float(images[2]), expected, atol=1e-6)


def test_prepare_celeba_rejects_a_wrong_count_and_a_corrupt_member(celeba_zip, tmp_path):
    out = tmp_path / "celeba.npy"
    with pytest.raises(SystemExit, match="12 images img_align_celeba/NNNNNN.jpg, expected 202599"):
        main(["prepare-celeba", "--zip", str(celeba_zip), "--settings",
              '{"image_size": 64, "celeba": {"expected_count": 202599, "md5": ""}}', "--out", str(out)])
    assert list(tmp_path.iterdir()) == []
    # a digest pinned (config.yaml: torchvision's of the real zip): this zip is not it
    with pytest.raises(SystemExit, match="MD5 [0-9a-f]{32}, expected 00d2c5bc6d35e252742224ab0c1e8fcb .*'images.celeba.md5'"):
        main(["prepare-celeba", "--zip", str(celeba_zip), "--settings", json.dumps(
              {"image_size": 64, "celeba": {"expected_count": 12, "md5": "00d2c5bc6d35e252742224ab0c1e8fcb"}}),
              "--out", str(out)])
    assert list(tmp_path.iterdir()) == []
    digest = hashlib.md5(celeba_zip.read_bytes()).hexdigest()
    assert D.prepare_celeba(celeba_zip, out, 64, 12, md5=digest) == 12
    out.unlink()

    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(celeba_zip) as src, zipfile.ZipFile(broken, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data[:200] if name.endswith("000007.jpg") else data)
    with pytest.raises(InputError, match="broken.zip: member img_align_celeba/000007.jpg cannot be decoded"):
        D.prepare_celeba(broken, out, 64, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.zip"]  # no output, no temporary file

    (tmp_path / "other.zip").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="other.zip: not a readable zip"):
        D.prepare_celeba(tmp_path / "other.zip", out, 64, 0)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_fetch_celeba_says_where_to_put_the_zip(tmp_path, no_network, monkeypatch):
    import torchvision.datasets.utils

    def fail(file_id, root, filename=None, md5=None):
        (tmp_path / "celeba" / "partial").write_bytes(b"x")  # whatever a failed download leaves ...
        raise RuntimeError("quota exceeded")

    monkeypatch.setattr(torchvision.datasets.utils, "download_file_from_google_drive", fail)
    out = tmp_path / "celeba" / "img_align_celeba.zip"
    (tmp_path / "celeba").mkdir()
    with pytest.raises(InputError, match=f"quota exceeded.*place it at {out}"):
        D.fetch_celeba(out)
    assert not out.exists()
    out.write_bytes(b"a zip placed by hand")
    D.fetch_celeba(out)  # used as is
    assert out.read_bytes() == b"a zip placed by hand"


def test_fetch_inception_checks_the_digest_and_leaves_nothing(tmp_path):
    src = tmp_path / "weights.pth"
    src.write_bytes(b"weights")
    home = tmp_path / "torch"
    with pytest.raises(InputError, match="does not start with 6726825d"):
        D.fetch_inception(home, "", url=src.as_uri())
    with pytest.raises(InputError, match="does not match the pinned"):
        D.fetch_inception(home, "0" * 64, url=src.as_uri(), prefix=None)
    assert not D.inception_weights_path(home).exists()
    assert list(D.inception_weights_path(home).parent.iterdir()) == []
    path = D.fetch_inception(home, D.sha256(src), url=src.as_uri(), prefix=None)
    assert path == home / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth" and path.read_bytes() == b"weights"


def test_inception_loads_offline_from_torch_home(tmp_path, no_network):
    """Random weights test the wiring only (with the explicit opt-out); they are never called FID."""
    home = tmp_path / "torch"
    weights = D.inception_weights_path(home)
    assert str(weights) == S.inception_weights({"torch_home": str(home)})  # where the rules expect the file
    assert D.torch_home_of(weights) == home
    with pytest.raises(InputError, match="pt_inception-2015-12-05-6726825d.pth.*rule download_inception"):
        make_extractor("inception", torch.device("cpu"), weights, 1, "", False)
    with pytest.raises(InputError, match="expected a file <torch_home>/hub/checkpoints/"):
        make_extractor("inception", torch.device("cpu"), home / "weights.pth", 1, "", False)
    D.write_random_inception_weights(weights)
    extractor = make_extractor("inception", torch.device("cpu"), weights, 1, "", True)
    assert extractor.metric == "fid" and extractor.dim == 2048 and extractor.frechet == "eigh"
    assert not extractor.verified and "NOT FID" in extractor.label
    features = extractor(torch.rand(2, 1, 32, 32) * 2 - 1)  # grey images are repeated over 3 channels
    assert features.shape == (2, 2048) and torch.isfinite(features).all()


def test_hand_placed_wrong_inception_weights_are_refused_unless_explicitly_accepted(tmp_path, no_network, capsys):
    """A file placed by hand never passes through fetch-inception (Snakemake skips
    download_inception when its output exists), so loading checks the SHA-256 itself."""
    home = tmp_path / "torch"
    weights = D.inception_weights_path(home)
    D.write_random_inception_weights(weights)
    actual = D.sha256(weights)
    for load in (lambda: make_extractor("inception", torch.device("cpu"), weights, 3, "", False),
                 lambda: load_inception(home, "cpu", "", False)):
        with pytest.raises(InputError) as err:
            load()
        message = str(err.value)
        for phrase in (str(weights), f"actual: {actual}", "starting with 6726825d", "not be FID",
                       "fetch-inception --torch-home", "place it at", "inception_unverified_ok"):
            assert phrase in message, phrase
    pinned = "ab" * 32
    with pytest.raises(InputError, match=f"Expected SHA-256: {pinned}"):
        make_extractor("inception", torch.device("cpu"), weights, 3, pinned.upper(), False)
    assert capsys.readouterr().err == ""
    # the explicit opt-out (tests and wiring checks only): loaded, with a warning, marked unverified
    extractor = make_extractor("inception", torch.device("cpu"), weights, 3, "", True)
    assert not extractor.verified and "UNVERIFIED" in extractor.label and "NOT FID" in extractor.label
    warning = capsys.readouterr().err
    assert "WARNING" in warning and str(weights) in warning and "UNVERIFIED" in warning and "NOT FID" in warning


def test_inception_weights_that_verify_are_fid_and_hashed_once(tmp_path, monkeypatch, capsys):
    """Stand-in for the real file: a prefix that these random weights do have."""
    weights = D.inception_weights_path(tmp_path / "torch")
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"stand-in weights")
    actual = D.sha256(weights)
    monkeypatch.setattr(D, "INCEPTION_SHA256_PREFIX", actual[:8])
    calls = []
    monkeypatch.setattr(D, "sha256", lambda path: calls.append(path) or actual)
    assert D.check_inception_weights(weights, "", False) is True
    assert D.check_inception_weights(weights, actual.upper(), False) is True  # the pinned digest, in any case
    with pytest.raises(InputError, match="Expected SHA-256: " + "0" * 64 + r" \(pinned"):
        D.check_inception_weights(weights, "0" * 64, False)
    assert D.check_inception_weights(weights, "0" * 64, unverified_ok=True) is False
    assert len(calls) == 1  # one hash per process for an unchanged file
    assert "UNVERIFIED" in capsys.readouterr().err
