"""Image data of the faces experiment: one uint8 array file that training memory-maps.

Format: a NumPy .npy file of dtype uint8 and shape [N, C, H, W]; a stored value v in 0..255
stands for the pixel x = v / 127.5 - 1 in [-1, 1] (`to_float`); `to_uint8` is its rounded
inverse. Labels, where there are any (digits), live in a separate int64 .npy file of shape [N].

Sources:
- `digits` (the quick and smoke presets, offline): scikit-learn's bundled 1,797 8x8 digits
  (values 0..16), scaled to [0, 1], upsampled bilinearly to 32x32, one channel.
- CelebA "Align&Cropped" (the paper preset): `img_align_celeba.zip` with 202,599 JPEGs
  `img_align_celeba/000001.jpg` ... read directly from the zip (no unpacking), each resized so
  its shorter side is 64 and centre-cropped to 64x64, as torchvision's Resize(64) +
  CenterCrop(64) in the DCGAN tutorial. `write_synthetic_celeba_zip` writes a small zip in the
  same layout for tests and dry runs.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..common import InputError, atomic_path, sha256
from .settings import INCEPTION_FILE

CELEBA_DIR = "img_align_celeba"
CELEBA_MEMBER = re.compile(r"^img_align_celeba/(\d{6})\.jpg$")
CELEBA_COUNT = 202_599
CELEBA_SIZE = (178, 218)  # width, height of every aligned-and-cropped CelebA image
INCEPTION_SHA256_PREFIX = "6726825d"  # torch.hub names a file <name>-<first 8 hex digits of its SHA-256>.<ext>


# ---------------------------------------------------------------- the array format


def to_float(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 values v -> float32 pixels x = v / 127.5 - 1 in [-1, 1]."""
    if not isinstance(batch, torch.Tensor):  # a read-only memory map: copy (uint8, cheap) before torch sees it
        batch = torch.from_numpy(np.require(batch, requirements=["C", "W"]))
    return batch.float().div_(127.5).sub_(1.0)


def to_uint8(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Pixels in [-1, 1] (clipped) -> the nearest stored value v = round((x + 1) * 127.5)."""
    x = torch.as_tensor(x, dtype=torch.float32)
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def quantize_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> the uint8 values a PNG written by save_image(normalize=True, value_range=(-1, 1)) holds."""
    return ((x.clamp(-1, 1) + 1) * 0.5).mul(255).add_(0.5).clamp_(0, 255).floor_().to(torch.uint8)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] in steps of 1/255, as save_image(normalize=True, value_range=(-1, 1)) + PNG."""
    return quantize_uint8(x).float() / 255


def save_array(array: np.ndarray, path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def load_images(path, channels: int | None = None, size: int | None = None) -> np.ndarray:
    """Memory-map an image array and check its format; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image array: file not found: {path}")
    try:
        images = np.load(path, mmap_mode="r")
    except Exception as exc:
        raise InputError(f"image array {path}: not a readable .npy file ({type(exc).__name__}: {exc})") from exc
    if images.dtype != np.uint8 or images.ndim != 4:
        raise InputError(f"image array {path}: expected uint8 of shape [N, C, H, W], got {images.dtype} {images.shape}")
    n, c, h, w = images.shape
    if n == 0:
        raise InputError(f"image array {path}: holds no images")
    if channels is not None and c != channels:
        raise InputError(f"image array {path}: {c} channels, expected {channels}")
    if size is not None and (h, w) != (size, size):
        raise InputError(f"image array {path}: images of {h}x{w}, expected {size}x{size}")
    return images


def load_labels(path, n: int) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"labels: file not found: {path}")
    try:
        labels = np.load(path)
    except Exception as exc:
        raise InputError(f"labels {path}: not a readable .npy file ({type(exc).__name__}: {exc})") from exc
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels {path}: expected {n} integer labels, got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


# ---------------------------------------------------------------- digits


def digits_images(size: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as uint8 [N, 1, size, size] (bilinear upsampling) and labels [N]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # [N, 1, 8, 8] in [0, 1]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return to_uint8(x * 2 - 1), digits.target.astype(np.int64)


# ---------------------------------------------------------------- CelebA


def celeba_members(zf: zipfile.ZipFile, zip_path) -> list[str]:
    members = sorted(name for name in zf.namelist() if CELEBA_MEMBER.match(name))
    if not members:
        raise InputError(f"{zip_path}: no members {CELEBA_DIR}/NNNNNN.jpg; is it CelebA's img_align_celeba.zip?")
    return members


def load_face(data: bytes, size: int) -> np.ndarray:
    """JPEG bytes -> uint8 [3, size, size]: shorter side resized to `size`, then centre-cropped.

    torchvision's Resize(size) + CenterCrop(size) on the PIL image, exactly as the DCGAN
    tutorial's ImageFolder pipeline (bilinear, antialiased).
    """
    from PIL import Image
    import torchvision.transforms.functional as TF

    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        img = TF.center_crop(TF.resize(img, size, interpolation=TF.InterpolationMode.BILINEAR), size)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def prepare_celeba(zip_path, out, size: int, expected_count: int, progress=None, md5: str = "") -> int:
    """Stream the zip's JPEGs into out (uint8 [N, 3, size, size]); returns N.

    The zip's MD5 is checked first (`md5`, images.celeba.md5: torchvision's digest of the real
    file; "" skips it), the count before any decoding, every member as it is decoded, and the
    array is written into a temporary memory-mapped file that takes its name only when complete:
    an error leaves no output behind. (A zip's own CRCs cannot catch a member replaced or
    altered before the zip was written; the digest of the whole file does.)
    """
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise InputError(f"CelebA zip not found: {zip_path}")
    if md5:
        digest = hashlib.md5()
        with open(zip_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        if digest.hexdigest() != md5:
            raise InputError(f"{zip_path}: MD5 {digest.hexdigest()}, expected {md5} (config key "
                             "'images.celeba.md5', torchvision's digest of img_align_celeba.zip); replace the file "
                             "with the real one, or set the key to \"\" to use this zip as it is")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{zip_path}: not a readable zip file ({exc})") from exc
    with zf:
        members = celeba_members(zf, zip_path)
        if expected_count and len(members) != expected_count:
            raise InputError(f"{zip_path}: {len(members)} images {CELEBA_DIR}/NNNNNN.jpg, expected {expected_count}")
        with atomic_path(out) as tmp:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(members), 3, size, size))
            for i, name in enumerate(members):
                try:
                    array[i] = load_face(zf.read(name), size)
                except Exception as exc:
                    raise InputError(f"{zip_path}: member {name} cannot be decoded ({type(exc).__name__}: {exc})") from exc
                if progress is not None and (i + 1) % 10_000 == 0:
                    progress.message(f"{i + 1}/{len(members)} images")
            array.flush()
            del array
            check = np.load(tmp, mmap_mode="r")
            if check.shape != (len(members), 3, size, size):
                raise InputError(f"{out}: wrote shape {check.shape}, expected {(len(members), 3, size, size)}")
            del check
    return len(members)


def write_synthetic_celeba_zip(path, n: int, seed: int = 0, size: tuple[int, int] = CELEBA_SIZE) -> None:
    """A zip in CelebA's exact layout: folder entry img_align_celeba/ and n JPEGs NNNNNN.jpg
    of `size` (width, height) showing smooth random blobs (something a GAN can learn)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(zipfile.ZipInfo(f"{CELEBA_DIR}/"), b"")
        for i in range(1, n + 1):
            cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
            radius = rng.uniform(0.2, 0.35) * w
            face = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius ** 2))
            background, colour = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
            img = background + face[..., None] * (colour - background)
            buf = io.BytesIO()
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
            zf.writestr(f"{CELEBA_DIR}/{i:06d}.jpg", buf.getvalue())


def fetch_celeba(out, manual_hint: str | None = None) -> None:
    """Download img_align_celeba.zip with torchvision's Google Drive path (gdown, MD5-checked).

    A zip already at `out` is used as is. On any failure raise InputError saying where to put
    a zip obtained by hand; nothing is left at `out`.
    """
    out = Path(out)
    if out.is_file():
        return
    hint = manual_hint or (f"Download CelebA's 'Align&Cropped Images' zip (img_align_celeba.zip, 202,599 JPEGs, "
                           f"https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html) by hand and place it at {out}; "
                           "the workflow then uses it as is.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=".celeba-download.", dir=out.parent))
    try:
        from torchvision.datasets import CelebA
        from torchvision.datasets.utils import download_file_from_google_drive

        file_id, md5, name = next(entry for entry in CelebA.file_list if entry[2] == "img_align_celeba.zip")
        download_file_from_google_drive(file_id, str(tmpdir), name, md5)
        with zipfile.ZipFile(tmpdir / name) as zf:
            celeba_members(zf, tmpdir / name)
        os.replace(tmpdir / name, out)
    except Exception as exc:
        raise InputError(f"cannot download CelebA ({type(exc).__name__}: {exc}). {hint}") from exc
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# ---------------------------------------------------------------- Inception weights


def inception_weights_path(torch_home) -> Path:
    """Where torch.hub (and so pytorch-fid) looks for the FID Inception weights under TORCH_HOME."""
    return Path(torch_home) / "hub" / "checkpoints" / INCEPTION_FILE


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256_once(path) -> str:
    """SHA-256 of a file, hashed once per process for each (path, size, modification time)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256(path)
    return _DIGESTS[key]


def torch_home_of(weights) -> Path:
    """TORCH_HOME of a weights file at <torch_home>/hub/checkpoints/INCEPTION_FILE (inception_weights_path);
    any other path is an InputError."""
    weights = Path(weights)
    torch_home = weights.parents[2] if len(weights.parents) > 2 else weights.parent
    if inception_weights_path(torch_home) != weights:
        raise InputError(f"Inception weights {weights}: expected a file <torch_home>/hub/checkpoints/{INCEPTION_FILE}")
    return torch_home


def inception_digest_problem(actual: str, sha: str, prefix: str | None = INCEPTION_SHA256_PREFIX) -> str | None:
    """Why a SHA-256 is not that of the expected Inception weights, or None when it is."""
    if prefix and not actual.startswith(prefix):
        return f"SHA-256 {actual} does not start with {prefix}, the hash in its file name"
    if sha and actual != sha.lower():
        return f"SHA-256 {actual} does not match the pinned {sha.lower()}"
    return None


def check_inception_weights(path, sha: str, unverified_ok: bool) -> bool:
    """Check the FID Inception weights at `path` before they are loaded; True when they verify.

    The same check as `fetch_inception`: the SHA-256 must start with INCEPTION_SHA256_PREFIX
    (torch.hub's convention: the 8 hex digits in the file name) and equal `sha` when one is
    pinned (images.inception_sha256). A file placed by hand never passes through
    fetch_inception (Snakemake sees rule download_inception's output and skips the rule), so
    this runs wherever the weights are loaded. The file is hashed once per process (about
    95 MB: well under a second).

    A mismatch is an InputError naming the file, the expected and actual digests and the fix.
    `unverified_ok` (images.inception_unverified_ok; for tests and wiring checks with random
    weights only) lets the file through with a warning on stderr, and returns False: distances
    computed with such weights are not FID, and the callers say so.
    """
    from pytorch_fid.inception import FID_WEIGHTS_URL

    path = Path(path)
    actual = file_sha256_once(path)
    if inception_digest_problem(actual, sha, INCEPTION_SHA256_PREFIX) is None:
        return True
    prefix = f"starting with {INCEPTION_SHA256_PREFIX} (the hash in the file name)"
    if not sha:
        expected = f"a digest {prefix}"
    elif sha.lower().startswith(INCEPTION_SHA256_PREFIX):
        expected = f"{sha.lower()} (pinned by images.inception_sha256)"
    else:
        expected = f"{sha.lower()} (pinned by images.inception_sha256), and a digest {prefix}"
    if not unverified_ok:
        torch_home = path.parents[2] if len(path.parents) > 2 else path.parent
        pinned = " If the pinned images.inception_sha256 is what is wrong, correct it." if sha else ""
        raise InputError(
            f"Inception weights {path} fail their SHA-256 check. Expected SHA-256: {expected}; actual: {actual}. "
            f"This is not pytorch-fid's FID Inception file (a wrong, truncated or corrupt file), so distances "
            f"computed with it would not be FID. Delete it and fetch the right one (rule download_inception, or "
            f"python -m vae_approx.images fetch-inception --torch-home {torch_home}), or download "
            f"{FID_WEIGHTS_URL} by hand and place it at {path}.{pinned} For tests and wiring checks only, "
            f"images.inception_unverified_ok: true (--inception-unverified-ok true) accepts the file; distances "
            f"computed so are not FID.")
    print(f"[images] WARNING: Inception weights {path} are UNVERIFIED (SHA-256 {actual}; expected {expected}), accepted "
          f"because of images.inception_unverified_ok / --inception-unverified-ok (tests and wiring checks only): "
          f"distances computed with them are NOT FID", file=sys.stderr, flush=True)
    return False


def fetch_inception(torch_home, sha: str, url: str | None = None,
                    prefix: str | None = INCEPTION_SHA256_PREFIX) -> Path:
    """Download pytorch-fid's Inception weights into <torch_home>/hub/checkpoints/, atomically.

    The file's SHA-256 must start with `prefix` (the hash part of the file name, as torch.hub's
    check_hash verifies) and equal `sha` (hex) when one is pinned. A file already there is
    checked the same way and kept.
    """
    from pytorch_fid.inception import FID_WEIGHTS_URL

    url = url or FID_WEIGHTS_URL
    out = inception_weights_path(torch_home)
    manual = f"Download {url} by hand and place it at {out}; the workflow then uses it as is."

    def check(path) -> None:
        problem = inception_digest_problem(sha256(path), sha, prefix)
        if problem is not None:
            raise InputError(f"{url}: {problem}")

    if out.is_file():
        check(out)
        return out
    try:
        with atomic_path(out) as tmp:
            print(f"[images fetch-inception] {url} -> {out}", file=sys.stderr, flush=True)
            with urllib.request.urlopen(url, timeout=120) as response, open(tmp, "wb") as f:
                shutil.copyfileobj(response, f)
            check(tmp)
    except InputError as exc:
        raise InputError(f"{exc}. {manual}") from exc
    except OSError as exc:
        raise InputError(f"cannot download {url} ({exc}). {manual}") from exc
    return out


def write_random_inception_weights(path, calibrate: bool = False) -> None:
    """A state dict in the layout of pytorch-fid's FID InceptionV3, with RANDOM values.

    Only for tests and dry runs of the wiring (offline loading from TORCH_HOME); distances
    computed with it are not FID and must never be reported as such. Through the freshly
    initialised layers the pool3 features shrink to about 1e-7 (distances about 1e-14);
    `calibrate` sets every BatchNorm's statistics from one batch of random images (training
    mode, momentum 1), so that the features, and the distances between image sets, keep a
    useful size.
    """
    from pytorch_fid import inception as I

    net = I._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = I.FIDInceptionA(192, 32), I.FIDInceptionA(256, 64), I.FIDInceptionA(288, 64)
    net.Mixed_6b, net.Mixed_6c = I.FIDInceptionC(768, 128), I.FIDInceptionC(768, 160)
    net.Mixed_6d, net.Mixed_6e = I.FIDInceptionC(768, 160), I.FIDInceptionC(768, 192)
    net.Mixed_7b, net.Mixed_7c = I.FIDInceptionE_1(1280), I.FIDInceptionE_2(2048)
    if calibrate:
        norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for m in norms:
            m.momentum = 1.0
        net.train()
        with torch.no_grad():
            net(torch.rand(8, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    with atomic_path(path) as tmp:
        torch.save(net.state_dict(), tmp)
