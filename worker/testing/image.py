"""deploy/Dockerfile built and run with podman on this machine, where no registry is reachable.

The base image the Dockerfile's `FROM` names is made from Debian packages (debootstrap of bookworm
with python3.11) and tagged with the name podman resolves `python:3.11-slim-bookworm` to
(/etc/containers/registries.conf.d/shortnames.conf aliases `python` to docker.io/library/python),
so the Dockerfile builds unchanged. The podman settings this host needs live here and only here:
cgroupfs (no systemd), no default ulimits, runc (crun refuses the hybrid cgroups), host network.

`python -m worker.testing.image` makes the base if it is missing and builds `medic:test`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
BASE = "docker.io/library/python:3.11-slim-bookworm"
IMAGE = "localhost/medic:test"
SUITE = "bookworm"
BASE_PACKAGES = "python3.11,python3-venv,python-is-python3"
CONTAINERS_CONF = '[containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = "cgroupfs"\n'
# HTTPS leaves this machine through an intercepting proxy whose CA only the host trusts: the build's
# pip is handed the host's pip.conf and CA bundle as read-only mounts, which no layer keeps.
HOST_TRUST = ("/etc/pip.conf", "/etc/ssl/certs/ca-certificates.crt")


def _conf_file() -> Path:
    path = Path(tempfile.gettempdir()) / "medic-containers.conf"
    if not path.exists() or path.read_text() != CONTAINERS_CONF:
        path.write_text(CONTAINERS_CONF)
    return path


class PodmanError(RuntimeError):
    """A podman command failed: the message ends with its output, which CalledProcessError hides."""


def podman(
    *args: str, check: bool = True, timeout: float = 600, stdin: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `podman ARGS` with this host's settings; output captured as text.

    Raises:
        PodmanError: `check` and podman exited non-zero.
    """
    env = {**os.environ, "CONTAINERS_CONF": str(_conf_file())}
    argv = ["podman", "--runtime", "runc", *args]
    done = subprocess.run(argv, env=env, timeout=timeout, text=True, capture_output=True, stdin=stdin)
    if check and done.returncode != 0:
        tail = (done.stdout[-3000:] + "\n" + done.stderr[-3000:]).strip()
        raise PodmanError(f"{' '.join(argv[:5])}... exited {done.returncode}:\n{tail}")
    return done


def available() -> str:
    """Why images cannot be built here, or "" when they can."""
    if os.geteuid() != 0:
        return "building images needs root (rootless podman is not set up here)"
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    return f"not installed: {', '.join(missing)}" if missing else ""


def exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


def apt_mirror() -> str:
    """The Debian mirror of the apt sources already configured (deb822 or one-line)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text()
        deb822 = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.M)
        oneline = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s+" + SUITE + r"\s", text, re.M)
        if match := deb822 or oneline:
            return match.group(1)
    raise RuntimeError("no Debian mirror in /etc/apt/sources.list*")


def _slim(rootfs: Path) -> None:
    """Drop what an image never reads (docs, man pages, translations, apt's downloads and lists);
    apt's directories stay, so a Dockerfile may still `apt-get update && apt-get install`."""
    for bulk in ("usr/share/doc", "usr/share/man", "usr/share/locale"):
        shutil.rmtree(rootfs / bulk, ignore_errors=True)
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*_*"):
        for file in rootfs.glob(pattern):
            file.unlink()


def make_base() -> bool:
    """Debootstrap bookworm with python3.11 and import it as BASE; False when it already exists."""
    if exists(BASE):
        return False
    with tempfile.TemporaryDirectory(prefix="medic-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE, str(rootfs), apt_mirror()],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        _slim(rootfs)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        # The runtime stage runs as a user; an imported tarball has no CMD: give it the official one's.
        podman("import", "--change", 'CMD ["python3"]', "-", BASE, stdin=tar.stdout.fileno(), timeout=900)
        tar.stdout.close()
        if tar.wait() != 0:
            raise RuntimeError("tar of the debootstrapped tree failed")
    return True


def build(tag: str = IMAGE, dockerfile: Path = DOCKERFILE, context: Path = ROOT) -> str:
    """`podman build` of the Dockerfile (docker format: OCI images drop HEALTHCHECK); the image ID.

    podman's layer cache keys each step by its instruction and the files it copies, so a rebuild
    after a code change re-runs only the steps from `COPY worker` on. The image this tag named
    before is removed when the tag moves, so builds do not pile up (its cached layers stay).
    """
    before = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False).stdout.strip()
    mounts = [arg for path in HOST_TRUST if Path(path).is_file() for arg in ("--volume", f"{path}:{path}:ro")]
    args = ["build", "--format", "docker", "--network", "host", "--layers", *mounts]
    podman(*args, "-f", str(dockerfile), "-t", tag, str(context), timeout=1200)
    after = podman("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
    if before and before != after:
        podman("rmi", before, check=False)
    return after


@contextlib.contextmanager
def one_builder() -> Iterator[None]:
    """One builder at a time on this host: two would both debootstrap, and each build moves the
    tag the other reads. A test waiting here for a build started ahead of it (tests/conftest.py
    starts one as the session begins) then finds every layer cached."""
    with open(Path(tempfile.gettempdir()) / "medic-image.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure(tag: str = IMAGE) -> str:
    """The base if missing, then the build."""
    with one_builder():
        make_base()
        return build(tag)


def size_mb(ref: str) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", ref).stdout) / 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tag", default=IMAGE)
    parser.add_argument("--base-only", action="store_true", help="Make the base image and stop.")
    ns = parser.parse_args(argv)
    if reason := available():
        print(reason, file=sys.stderr)
        return 2
    with one_builder():
        t0 = time.monotonic()
        made = make_base()
        print(f"base {BASE}: {'made' if made else 'exists'} in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        if ns.base_only:
            return 0
        t1 = time.monotonic()
        image_id = build(ns.tag)
    took = time.monotonic() - t1
    print(f"{ns.tag} {image_id[:12]}: built in {took:.1f} s, {size_mb(ns.tag):.0f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
