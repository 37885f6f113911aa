"""requirements/lock.txt, the tested environment, agrees with pyproject.toml, and everything installs from it."""

import re
import tomllib

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import ROOT

LOCK = ROOT / "requirements" / "lock.txt"


def lock_entries() -> dict[str, tuple[str, list[str]]]:
    """Each locked package, by canonical name: (its == version, its hashes)."""
    text = re.sub(r"\\\n", " ", LOCK.read_text())  # join the backslash-continued lines
    entries = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("-"), f"an option or an editable install in the lock: {line}"
        spec, *options = line.split(" --")
        req = Requirement(spec.strip())
        name = canonicalize_name(req.name)
        pins = list(req.specifier)
        assert len(pins) == 1 and pins[0].operator == "==", f"{spec.strip()}: not pinned to one version"
        assert name not in entries, f"{name} is locked twice"
        entries[name] = (pins[0].version, [o.strip().split("=", 1)[1] for o in options if o.startswith("hash=")])
    return entries


def project_requirements() -> list[Requirement]:
    """Every dependency pyproject.toml declares, with those of every extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    assert {"test", "slurm"} <= set(extras)
    return [Requirement(dep) for dep in project["dependencies"] + [d for deps in extras.values() for d in deps]]


def test_every_dependency_of_pyproject_is_locked_at_a_version_it_allows():
    locked = lock_entries()
    wrong = {}
    for req in project_requirements():
        if req.marker and not req.marker.evaluate():
            continue
        version = locked.get(canonicalize_name(req.name), (None,))[0]
        if version is None or not req.specifier.contains(Version(version), prereleases=True):
            wrong[str(req)] = version
    assert not wrong, f"pyproject.toml's requirement: the lock's version (refresh the lock, README.md): {wrong}"


def test_every_locked_package_has_a_sha256_hash():
    locked = lock_entries()
    assert len(locked) > 50 and {"torch", "snakemake", "pytest", "snakefmt", "snakemake-executor-plugin-slurm"} <= set(locked)
    unhashed = [name for name, (_, hashes) in locked.items()
                if not hashes or not all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes)]
    assert not unhashed, f"locked without a sha256 hash: {unhashed}"


def test_the_conda_environment_installs_the_lock():
    """envs/vae-approx.yaml takes Python 3.11 from conda and every package from the lock, so its versions are the lock's."""
    env = yaml.safe_load((ROOT / "envs" / "vae-approx.yaml").read_text())
    deps = env["dependencies"]
    pip = [d for d in deps if isinstance(d, dict)]
    assert [d for d in deps if not isinstance(d, dict)] == ["python=3.11", "pip"]
    assert pip == [{"pip": ["-r ../requirements/lock.txt"]}]
    assert (ROOT / "envs" / "../requirements/lock.txt").resolve() == LOCK.resolve()


def test_ci_runs_the_readme_commands_that_install_the_lock():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quick_start, re.S)[:2]  # the run's and the tests' set-up
    assert all("\n" not in c for c in commands), commands
    install = "pip install -r requirements/lock.txt && pip install --no-deps -e ."
    assert all(c.startswith(install + " && ") for c in commands), commands
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()
