"""A real single-node SLURM for tests: install it (Debian), configure it in a directory of its
own, start munged, slurmctld and slurmd, wait for the node to be idle, and stop exactly the
daemons it started.

    with SlurmCluster(directory) as cluster:
        subprocess.run(["sbatch", "--wrap", "hostname"], env=cluster.env)

Nothing outside `directory` is configured: the daemons run in the foreground as children of
this process (their process ids are the Popen objects kept here), on free TCP ports, with a
private munge key and socket, so a SLURM or munge already running on the machine is neither
used nor disturbed. Client commands find this cluster through `cluster.env` (SLURM_CONF, and a
PATH whose `srun` restores SLURM_CONF, see `_write_srun_shim`).

Run by hand to poke at a cluster: `python tests/slurm_cluster.py` (Ctrl-C stops it).
Seen working with Debian 12's SLURM 22.05 and munge 0.5.15, as root.
"""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
# binary -> Debian package that ships it
BINARIES = {"slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client", "srun": "slurm-client",
            "squeue": "slurm-client", "sinfo": "slurm-client", "scontrol": "slurm-client",
            "scancel": "slurm-client", "munged": "munge"}
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"])


class SlurmUnavailable(RuntimeError):
    """SLURM could not be installed or started here; the message says why."""


def which(binary: str) -> str | None:
    return shutil.which(binary, path=SEARCH_PATH)


def missing_packages() -> list[str]:
    return sorted({package for binary, package in BINARIES.items() if which(binary) is None})


def ensure_installed(log=print) -> None:
    """apt-get install the SLURM and munge packages that are missing (root, Debian/Ubuntu only).

    The packages' maintainer scripts would start the system-wide munge (and try slurmctld and
    slurmd) through invoke-rc.d; a temporary /usr/sbin/policy-rc.d (exit 101, the Debian way to
    say "do not start services") prevents that where none exists, and is removed afterwards.
    """
    missing = missing_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"SLURM packages missing ({', '.join(missing)}) and not root to install them")
    if which("apt-get") is None:
        raise SlurmUnavailable(f"SLURM packages missing ({', '.join(missing)}) and no apt-get to install them")
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "PATH": SEARCH_PATH}
    try:
        if made_policy:
            policy.write_text("#!/bin/sh\n# written by vae-approx tests/slurm_cluster.py during apt-get install\nexit 101\n")
            policy.chmod(0o755)
        for command in (["apt-get", "update"],
                        ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]):
            log(f"slurm_cluster: {shlex.join(command)}")
            proc = subprocess.run(command, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SlurmUnavailable(f"{shlex.join(command)} failed ({proc.returncode}):\n"
                                       f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)
    still = missing_packages()
    if still:
        raise SlurmUnavailable(f"after apt-get install, still missing: {', '.join(still)}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_hardware() -> dict[str, str]:
    """`slurmd -C`: the CPU layout and memory slurmd will detect (NodeName=... CPUs=... ...)."""
    proc = subprocess.run([which("slurmd"), "-C"], capture_output=True, text=True, timeout=60)
    fields = {}
    for token in proc.stdout.split():
        key, sep, value = token.partition("=")
        if sep and key in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory"):
            fields[key] = value
    if "CPUs" not in fields:
        fields["CPUs"] = str(os.cpu_count() or 1)
    if "RealMemory" not in fields:
        fields["RealMemory"] = str(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20)
    return fields


class SlurmCluster:
    """One controller, one node (this host), one partition, no accounting, all inside `directory`."""

    def __init__(self, directory: str | os.PathLike | None = None, partition: str = "debug",
                 start_timeout: float = 120.0, log=print):
        self.directory = Path(directory or tempfile.mkdtemp(prefix="vae-approx-slurm-"))
        self.partition = partition
        self.start_timeout = start_timeout
        self.log = log
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.directory / "slurm.conf"
        # munged insists that every directory above its socket be searchable by all, which a
        # pytest tmp_path (under a 0700 directory) is not: the socket gets a directory in /tmp.
        self.socket_dir: Path | None = None
        self.munge_socket = Path("/nonexistent")
        self.bin = self.directory / "bin"
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = self._client_env()

    # ------------------------------------------------------------------ public

    def start(self) -> "SlurmCluster":
        atexit.register(self.stop)  # also when the caller never reaches its own stop()
        try:
            ensure_installed(self.log)
            self._start_munged()
            self._write_files()
            self._start("slurmctld", [which("slurmctld"), "-D", "-f", str(self.conf)])
            self._wait(lambda: "UP" in self._run(["scontrol", "ping"], check=False).stdout, "slurmctld to answer")
            self._start("slurmd", [which("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)])
            self._wait(lambda: self.node_state() == "idle", f"node {self.node} to be idle")
        except BaseException:
            self.stop()
            raise
        self.log(f"slurm_cluster: node {self.node} idle; SLURM_CONF={self.conf}")
        return self

    def stop(self) -> None:
        """Cancel this cluster's jobs, then stop the daemons started here, by their process ids.

        Safe to call twice, and after a failed start.
        """
        try:
            if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
                self._run(["scancel", "--partition", self.partition], check=False)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and self._run(["squeue", "-h", "-t", "R,CG"], check=False).stdout.strip():
                    time.sleep(1)
        except (OSError, subprocess.SubprocessError) as exc:
            self.log(f"slurm_cluster: could not cancel the jobs ({exc}); stopping the daemons anyway")
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.processes.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir = None

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def node_state(self) -> str:
        proc = self._run(["sinfo", "-h", "-N", "-n", self.node, "-o", "%T"], check=False)
        return proc.stdout.strip().rstrip("*~#$@^-")

    def job_states(self) -> dict[str, str]:
        """SLURM job id -> state of every job slurmctld still remembers (MinJobAge after its end)."""
        proc = self._run(["squeue", "-h", "--states=all", "-o", "%i|%T"])
        return dict(line.split("|", 1) for line in proc.stdout.split())

    def logs(self) -> str:
        """The tail of every daemon log, for error messages."""
        parts = []
        for path in sorted(self.directory.glob("*.log")):
            parts.append(f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-40:]))
        return "\n".join(parts)

    # ------------------------------------------------------------------ internals

    def _client_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SQUEUE_"))}
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = os.pathsep.join([str(self.bin), SEARCH_PATH])
        return env

    def _run(self, command: list[str], check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise SlurmUnavailable(f"{shlex.join(command)} failed: {proc.stderr.strip()}\n{self.logs()}")
        return proc

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise SlurmUnavailable(f"{name} exited with {proc.returncode} while waiting for {what}\n{self.logs()}")
            try:
                if ready():
                    return
            except (OSError, subprocess.SubprocessError):
                pass
            time.sleep(0.5)
        raise SlurmUnavailable(f"timed out after {self.start_timeout:.0f} s waiting for {what}\n{self.logs()}")

    def _start(self, name: str, command: list[str]) -> None:
        out = open(self.directory / f"{name}.stdout.log", "w")
        self.processes[name] = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()

    def _start_munged(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket_dir = Path(tempfile.mkdtemp(prefix="vae-approx-munge-", dir="/tmp" if os.path.isdir("/tmp") else None))
        self.socket_dir.chmod(0o755)
        self.munge_socket = self.socket_dir / "munge.socket"
        key = self.directory / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self._start("munged", [which("munged"), "--foreground", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={self.directory / 'munged.pid'}",
                               f"--log-file={self.directory / 'munged.log'}",
                               f"--seed-file={self.directory / 'munged.seed'}"])
        self._wait(self.munge_socket.exists, "munged's socket")

    def _write_files(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for sub in ("state", "spool"):
            (self.directory / sub).mkdir(exist_ok=True)
        hw = node_hardware()
        memory = max(1024, int(int(hw.pop("RealMemory")) * 0.9))
        layout = " ".join(f"{k}={v}" for k, v in hw.items())
        d = self.directory
        self.conf.write_text(f"""\
# A single-node test cluster written by vae-approx tests/slurm_cluster.py
ClusterName=vaeapprox
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={d / 'state'}
SlurmdSpoolDir={d / 'spool'}
SlurmctldPidFile={d / 'slurmctld.pid'}
SlurmdPidFile={d / 'slurmd.pid'}
SlurmctldLogFile={d / 'slurmctld.log'}
SlurmdLogFile={d / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
# squeue (no accounting here) answers for finished jobs only as long as slurmctld keeps them:
# longer than the whole run (which took over 10 minutes on a slow day)
MinJobAge=7200
# a job past its time limit gets SIGTERM, then SIGKILL after KillWait seconds
KillWait=5
InactiveLimit=0
MailProg=/bin/true
NodeName={self.node} NodeAddr=127.0.0.1 {layout} RealMemory={memory} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        self._write_srun_shim()

    def _write_srun_shim(self) -> None:
        """`srun` that restores SLURM_CONF before running the real one.

        snakemake-executor-plugin-slurm-jobstep removes every SLURM_* variable, SLURM_CONF
        included, from the environment of the `srun` that runs a job's command inside its
        allocation. On a real cluster srun then reads /etc/slurm/slurm.conf; this cluster's
        configuration lives in its own directory, so srun is told again where it is.
        """
        self.bin.mkdir(exist_ok=True)
        shim = self.bin / "srun"
        shim.write_text(f"#!/bin/sh\nSLURM_CONF={shlex.quote(str(self.conf))} "
                        f"exec {shlex.quote(which('srun'))} \"$@\"\n")
        shim.chmod(0o755)


if __name__ == "__main__":
    with SlurmCluster() as cluster:
        print(f"export SLURM_CONF={cluster.conf} PATH={cluster.bin}:$PATH   # then sinfo, sbatch, squeue")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    sys.exit(0)
