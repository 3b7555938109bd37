"""What the compose stack test needs from this machine: a Docker engine, the base images and the
images of the stack. None of it belongs to the image users build.

Where the test runs, Docker Hub is not reachable: the Debian base is made with debootstrap and
`docker import`, Python, PostgreSQL and Redis come from Debian's packages, pip inside the build
needs the host's CA bundle (a proxy re-signs TLS), and the torch CPU wheel lies on disk. Each
image is kept for the next run; `docker build` and `docker-compose build` reuse their layers.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import ROOT

HERE = Path(__file__).resolve().parent
PROJECT = "tuneserve-stacktest"
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.cpu.yml", "tests/stack/docker-compose.test.yml")
# Debian's docker.io, by full path: the `docker` first on PATH may be another CLI (without compose).
DOCKER = os.environ.get("TUNESERVE_TEST_DOCKER", "/usr/bin/docker")
DOCKERD = os.environ.get("TUNESERVE_TEST_DOCKERD", "/usr/sbin/dockerd")
DOCKER_SOCKET = Path("/var/run/docker.sock")

CONFIGURED_BASE = "python:3.11-slim"          # Dockerfile.gpu's BASE_IMAGE default
DEBIAN_IMAGE = "tuneserve-stacktest/debian:bookworm"
PYTHON_IMAGE = "tuneserve-stacktest/python:3.11"
BUILD_IMAGE = "tuneserve-stacktest/python-build:3.11"
TUNESERVE_IMAGE = "tuneserve-stacktest/tuneserve:cpu"
TORCH_WHEEL = "torch-2.13.0+cpu-cp311-cp311-*.whl"


class Unavailable(Exception):
    """This machine cannot run the stack: the test is skipped with this reason."""


class Timings:
    """Where the test's time went, phase by phase."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, float]] = []
        self.started = time.monotonic()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.phases.append((name, time.monotonic() - start))

    def report(self) -> str:
        total = time.monotonic() - self.started
        lines = [f"compose stack test: {total:.0f} s in all"]
        lines += [f"  {seconds:6.1f} s  {name}" for name, seconds in self.phases]
        return "\n".join(lines)


def run(args: Sequence[str], *, timeout_s: float = 600, check: bool = True, env: dict[str, str] | None = None,
        input_bytes: bytes | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=input_bytes is None, timeout=timeout_s,
                          env=env, cwd=ROOT, input=input_bytes)
    if isinstance(proc.stdout, bytes):
        proc = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                           proc.stderr.decode(errors="replace"))
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def docker(*args: str, timeout_s: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([DOCKER, *args], timeout_s=timeout_s, check=check)


def _daemon_answers() -> bool:
    try:
        return docker("info", "--format", "{{.ServerVersion}}", timeout_s=20, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


class Engine:
    """The Docker engine: the running one, or a dockerd this test starts (and stops after)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if sys.platform != "linux":
            raise Unavailable("the stack test runs Debian's Docker engine on Linux")
        if not Path(DOCKER).is_file():
            raise Unavailable(f"{DOCKER} (Debian's docker.io) is not installed: `make test` installs it "
                              "as root with apt-get (docker.io docker-compose debootstrap)")
        if shutil.which("docker-compose") is None:
            raise Unavailable("docker-compose is not installed: `make test` installs it as root with apt-get")
        if _daemon_answers():
            return
        if os.geteuid() != 0 or not Path(DOCKERD).is_file():
            raise Unavailable(f"no Docker engine answers, and this user cannot start {DOCKERD} (needs root)")
        log = self.log_path.open("ab")
        # Its defaults (overlay2 storage, bridge networking) are what the stack needs.
        self.proc = subprocess.Popen([DOCKERD], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if DOCKER_SOCKET.exists() and _daemon_answers():
                return
            time.sleep(0.5)
        tail = self.log_path.read_text(errors="replace")[-1500:]
        self.stop()
        raise Unavailable(f"dockerd did not start: {tail}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def image_exists(name: str) -> bool:
    return docker("image", "inspect", name, timeout_s=30, check=False).returncode == 0


def _pulled(name: str) -> bool:
    try:
        return docker("pull", "-q", name, timeout_s=120, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def debian_mirror() -> str:
    """The Debian mirror this host's apt uses (so the images install from the same one)."""
    candidates = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
    for path in candidates:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        found = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, flags=re.M) or \
            re.search(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+/debian)\s", text, flags=re.M)
        if found:
            return found.group(1)
    return "http://deb.debian.org/debian"


def ensure_debian_base(workdir: Path) -> None:
    """A Debian bookworm base image: pulled where Docker Hub answers, else debootstrapped."""
    if image_exists(DEBIAN_IMAGE):
        return
    if _pulled("debian:bookworm-slim"):
        docker("tag", "debian:bookworm-slim", DEBIAN_IMAGE)
        return
    if shutil.which("debootstrap") is None:
        raise Unavailable("no Debian base image can be pulled and debootstrap is not installed to make one")
    rootfs = Path(tempfile.mkdtemp(prefix="stacktest-rootfs-", dir=workdir))
    try:
        run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), debian_mirror()], timeout_s=900)
        run(["sh", "-c", f"tar -C {shlex.quote(str(rootfs))} -c . | {DOCKER} import - {DEBIAN_IMAGE}"],
            timeout_s=300)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def ensure_python_base(workdir: Path) -> str:
    """BASE_IMAGE for the tuneserve image: the configured one where it is here or can be pulled,
    else Debian's Python 3.11 on the local Debian base."""
    for name in (CONFIGURED_BASE, PYTHON_IMAGE):
        if image_exists(name):
            return name
    if _pulled(CONFIGURED_BASE):
        return CONFIGURED_BASE
    ensure_debian_base(workdir)
    docker("build", "-q", "-t", PYTHON_IMAGE, "--build-arg", f"DEBIAN_IMAGE={DEBIAN_IMAGE}",
           "-f", str(HERE / "python.Dockerfile"), str(HERE), timeout_s=900)
    return PYTHON_IMAGE


def _pip_config() -> dict[str, str]:
    proc = run([sys.executable, "-m", "pip", "config", "list"], timeout_s=60, check=False)
    found = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        found[key.rsplit(".", 1)[-1]] = value.strip().strip("'\"")
    return found


def host_ca_bundle() -> Path:
    """The CA bundle this host's pip trusts (the proxy's certificate is in it)."""
    config = _pip_config()
    for candidate in (os.environ.get("PIP_CERT"), config.get("cert"), os.environ.get("SSL_CERT_FILE"),
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise Unavailable("no CA bundle found for pip inside the build (PIP_CERT, pip config `cert`)")


def torch_cpu_wheel(workdir: Path) -> Path:
    """The torch 2.13.0 CPU wheel: in pip's find-links here, or downloaded by pip once."""
    config = _pip_config()
    dirs = " ".join(filter(None, [os.environ.get("PIP_FIND_LINKS"), config.get("find-links")])).split()
    for directory in dirs:
        matches = sorted(glob.glob(os.path.join(directory.removeprefix("file://"), TORCH_WHEEL)))
        if matches:
            return Path(matches[-1])
    cache = workdir / "wheels"
    proc = run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                "--python-version", "3.11", "torch==2.13.0+cpu", "-d", str(cache)],
               timeout_s=900, check=False)
    matches = sorted(cache.glob(TORCH_WHEEL))
    if not matches:
        raise Unavailable(f"no torch 2.13.0 CPU wheel for Python 3.11 here: {proc.stderr[-500:]}")
    return matches[-1]


def ensure_build_image(python_base: str, workdir: Path) -> None:
    """BUILD_IMAGE: python_base with the host's CA bundle and the torch wheel for pip (rebuilt
    from its cached layers each run, so a changed bundle or wheel is picked up)."""
    context = workdir / "build-context"
    (context / "wheels").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(host_ca_bundle(), context / "ca-certificates.crt")
    wheel = torch_cpu_wheel(workdir)
    target = context / "wheels" / wheel.name
    try:
        os.link(wheel, target)
    except OSError:
        shutil.copyfile(wheel, target)
    docker("build", "-q", "-t", BUILD_IMAGE, "--build-arg", f"PYTHON_IMAGE={python_base}",
           "-f", str(HERE / "build.Dockerfile"), str(context), timeout_s=900)
    shutil.rmtree(context, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


class Compose:
    """docker-compose with the test's project name, files and environment."""

    def __init__(self, env_file: Path, api_port: int, python_base: str) -> None:
        self.binary = shutil.which("docker-compose") or "docker-compose"
        self.env = {
            **os.environ,
            # exec and the builds call the `docker` CLI on PATH: Debian's own, first.
            "PATH": f"{Path(DOCKER).parent}:{os.environ.get('PATH', '')}",
            "STACK_ENV_FILE": str(env_file),
            "API_PORT": str(api_port),
            "STACKTEST_BASE_IMAGE": python_base,
            "STACKTEST_BUILD_IMAGE": BUILD_IMAGE,
        }

    def __call__(self, *args: str, timeout_s: float = 900,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        files = [arg for name in COMPOSE_FILES for arg in ("-f", name)]
        return run([self.binary, "-p", PROJECT, *files, *args], timeout_s=timeout_s, check=check,
                   env=self.env)

    def container(self, service: str) -> str:
        ids = self("ps", "-q", service, timeout_s=60).stdout.split()
        if not ids:
            raise RuntimeError(f"no {service} container in {PROJECT}")
        return ids[0]

    def state(self, service: str) -> dict[str, str]:
        fields = "{{.State.Status}}|{{.State.ExitCode}}|{{if .State.Health}}{{.State.Health.Status}}{{end}}"
        out = docker("inspect", "--format", fields, self.container(service), timeout_s=30).stdout.strip()
        status, code, health = out.split("|")
        return {"status": status, "exit_code": code, "health": health}

    def wait_healthy(self, services: Sequence[str], timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(services)
        while pending and time.monotonic() < deadline:
            pending = [s for s in pending if self.state(s)["health"] != "healthy"]
            if pending:
                time.sleep(1)
        if pending:
            states = {s: self.state(s) for s in pending}
            raise TimeoutError(f"not healthy after {timeout_s:.0f} s: {states}\n{self.logs()}")

    def logs(self, tail: int = 60) -> str:
        try:
            proc = self("logs", "--no-color", "--tail", str(tail), timeout_s=60, check=False)
        except subprocess.TimeoutExpired:
            return "(docker-compose logs timed out)"
        return proc.stdout[-12000:]
