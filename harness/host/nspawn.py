"""Booted Debian 12 hosts for the system tests: systemd as PID 1 in systemd-nspawn.

The integration tests start MariaDB, Postfix and Courier by hand with private paths; the
system tests install vmaild the way the README says, on a host where the distribution's own
units run under systemd. A :class:`Host` is a copy of a cached debootstrap'd bookworm root,
booted with ``systemd-nspawn --boot --register=no --keep-unit`` (this machine has no
systemd-machined), and commands run in it through ``nsenter -t LEADER -a`` where LEADER is
the container's PID 1.

The host shares this machine's network namespace (no ``--private-network``): apt and pip in
it need this machine's package sources, and the tests reach its services on loopback
(SMTP 25, IMAP 143, ...). :func:`check_ports_free` refuses to boot while any of those ports
is taken.

The base image (``base_image()``) is made once and cached in ``/var/cache/vmaild-systemtest``;
it carries this machine's apt sources and settings, pip configuration and local CA
certificates, without which apt and pip fail inside. Debian packages downloaded inside a host
are kept in ``apt-archives/`` there, bind-mounted as the host's ``/var/cache/apt/archives``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

CACHE = Path(os.environ.get("VMAILD_SYSTEMTEST_CACHE", "/var/cache/vmaild-systemtest"))
HOSTS_DIR = Path(os.environ.get("VMAILD_SYSTEMTEST_HOSTS", "/var/tmp/vmaild-systemtest"))
SUITE = "bookworm"
#: Bumped when what :func:`base_image` puts in the image changes.
IMAGE_VERSION = "1"
INCLUDE = "systemd,systemd-sysv,dbus,ca-certificates"
#: Copied from this machine into every image (when present).
HOST_FILES = (
    "etc/apt/sources.list.d",
    "etc/apt/apt.conf.d/99artifact-registry",
    "etc/apt/apt.conf.d/99farm-no-dep11",
    "etc/pip.conf",
    "etc/xdg/pip",
)
#: The ports the seed's stack and vmaild listen on in a host.
PORTS = (25, 110, 143, 587, 993, 995, 3306, 9125, 10020, 10040)
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class HostError(RuntimeError):
    """A host could not be made, booted, reached or stopped."""


def mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in path.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1]
    raise HostError("no Debian mirror in /etc/apt/sources.list.d or /etc/apt/sources.list")


def _run(cmd: list[str], timeout: float = 600) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise HostError(f"{' '.join(cmd)}: exit {done.returncode}\n{done.stderr[-3000:]}")


def base_image() -> Path:
    """The cached bookworm root (made on first use, about a minute); safe across processes."""
    image = CACHE / f"{SUITE}-v{IMAGE_VERSION}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (image / ".complete").exists():
            return image
        tmp = CACHE / f"{image.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for tool in ("debootstrap", "systemd-nspawn", "nsenter"):
            if shutil.which(tool) is None:
                raise HostError(f"{tool} is missing (scripts/install-systemtest-deps.sh)")
        _run(
            ["debootstrap", "--variant=minbase", f"--include={INCLUDE}", SUITE, str(tmp), mirror()],
            timeout=1200,
        )
        for rel in HOST_FILES:
            src, dst = Path("/") / rel, tmp / rel
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True)
            elif src.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        (tmp / "etc/apt/sources.list").unlink(missing_ok=True)
        cas = tmp / "usr/local/share/ca-certificates"
        cas.mkdir(parents=True, exist_ok=True)
        for crt in Path("/usr/local/share/ca-certificates").glob("*.crt"):
            shutil.copy2(crt, cas / crt.name)
        _run(["chroot", str(tmp), "update-ca-certificates"])
        # A host's console is nspawn's stdout, a file: no getty on it.
        (tmp / "etc/systemd/system/console-getty.service").symlink_to("/dev/null")
        (tmp / ".complete").touch()
        shutil.rmtree(image, ignore_errors=True)
        tmp.rename(image)
        return image


def check_ports_free(ports: tuple[int, ...] = PORTS) -> None:
    taken = []
    for port in ports:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                taken.append(port)
    if taken:
        raise HostError(f"ports {taken} are in use on this machine; a host shares its loopback")


class Host:
    """One booted host. ``with Host("name") as h: h.sh("systemctl status")``."""

    def __init__(
        self, name: str, hostname: str = "mail.raecoo.com", binds: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.hostname = hostname
        self.binds = binds or {}
        self.root = HOSTS_DIR / name
        self.console = HOSTS_DIR / f"{name}.console"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.boots = 0

    # -- life cycle -------------------------------------------------------------------------
    def create(self) -> None:
        """A fresh copy of the base image, named ``hostname``."""
        image = base_image()
        HOSTS_DIR.mkdir(parents=True, exist_ok=True)
        self.destroy()
        _run(["cp", "-a", "--reflink=auto", str(image), str(self.root)])
        short = self.hostname.split(".")[0]
        (self.root / "etc/hostname").write_text(self.hostname + "\n")
        hosts_file = self.root / "etc/hosts"
        hosts = (
            hosts_file.read_text()
            if hosts_file.exists()
            else ("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n")
        )
        (self.root / "etc/hosts").write_text(f"127.0.1.1\t{self.hostname} {short}\n" + hosts)

    def boot(self, timeout: float = 120) -> None:
        check_ports_free()
        archives = CACHE / "apt-archives"
        (archives / "partial").mkdir(parents=True, exist_ok=True)
        cmd = [
            "systemd-nspawn",
            "-D",
            str(self.root),
            "--boot",
            "--register=no",
            "--keep-unit",
            f"--hostname={self.hostname}",
            "--resolv-conf=replace-host",
            f"--bind={archives}:/var/cache/apt/archives",
        ]
        cmd += [f"--bind-ro={src}:{dst}" for src, dst in self.binds.items()]
        with open(self.console, "ab") as console:
            self.nspawn = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.boots += 1
        deadline = time.monotonic() + timeout
        self.leader = 0
        while not self.leader:
            if self.nspawn.poll() is not None:
                raise HostError(
                    f"systemd-nspawn exited {self.nspawn.returncode}: {self.console_tail()}"
                )
            if time.monotonic() > deadline:
                raise HostError(f"no PID 1 after {timeout} s: {self.console_tail()}")
            self.leader = self._find_leader()
            if not self.leader:
                time.sleep(0.1)
        # Until PID 1 has its bus up, systemctl prints nothing and fails: ask again.
        state = ""
        while not state:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HostError(f"not booted after {timeout} s: {self.console_tail()}")
            state = self.run(
                ["systemctl", "is-system-running", "--wait"], timeout=left
            ).stdout.strip()
            if not state:
                time.sleep(0.2)
        if state not in ("running", "degraded"):
            raise HostError(f"boot ended {state!r}: {self.console_tail()}")

    def _find_leader(self) -> int:
        assert self.nspawn is not None
        try:
            for task in Path(f"/proc/{self.nspawn.pid}/task").iterdir():
                for pid in (task / "children").read_text().split():
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return int(pid)
        except OSError:
            pass
        return 0

    def poweroff(self, timeout: float = 90) -> None:
        self._halt("poweroff", timeout, expect=(0,))

    def reboot(self, timeout: float = 120) -> None:
        """A real reboot: systemd shuts down, nspawn exits 133, the same root boots again."""
        self._halt("reboot", timeout, expect=(133,))
        self.boot(timeout)

    def _halt(self, verb: str, timeout: float, expect: tuple[int, ...]) -> None:
        if self.nspawn is None or self.nspawn.poll() is not None:
            return
        subprocess.run(
            self._enter(["systemctl", "--no-block", verb]), capture_output=True, timeout=30
        )
        try:
            code = self.nspawn.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise HostError(f"{verb} took over {timeout} s: {self.console_tail()}") from None
        if code not in expect:
            raise HostError(f"{verb}: nspawn exited {code}: {self.console_tail()}")

    def kill(self) -> None:
        """SIGKILL the container's PID 1 (which ends every process in its PID namespace:
        killing nspawn alone leaves them running) and nspawn."""
        if self.leader:
            try:
                os.kill(self.leader, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.nspawn is not None and self.nspawn.poll() is None:
            os.killpg(self.nspawn.pid, signal.SIGKILL)
            self.nspawn.wait(30)

    def destroy(self) -> None:
        self.kill()
        if self.root.exists():
            _run(["rm", "-rf", "--one-file-system", str(self.root)])
        self.console.unlink(missing_ok=True)

    def __enter__(self) -> Host:
        self.create()
        self.boot()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.poweroff()
        finally:
            self.kill()
            if not os.environ.get("VMAILD_SYSTEMTEST_KEEP"):
                self.destroy()

    # -- commands ---------------------------------------------------------------------------
    def _enter(self, argv: list[str], cwd: str = "/") -> list[str]:
        if not self.leader:
            raise HostError(f"host {self.name} is not running")
        if cwd != "/":
            argv = ["sh", "-c", 'cd "$0" && exec "$@"', cwd, *argv]
        return [
            "nsenter",
            "-t",
            str(self.leader),
            "-a",
            "--",
            "env",
            "-i",
            f"PATH={PATH}",
            "HOME=/root",
            "LANG=C.UTF-8",
            "TERM=dumb",
            *argv,
        ]

    def run(
        self,
        argv: list[str],
        timeout: float = 600,
        check: bool = False,
        input: str | None = None,
        cwd: str = "/",
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        cmd = self._enter([*argv] if not extra else ["env", *extra, *argv], cwd)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
        if check and done.returncode != 0:
            raise HostError(
                f"in {self.name}: {' '.join(argv)}: exit {done.returncode}\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def sh(
        self,
        script: str,
        timeout: float = 600,
        check: bool = True,
        cwd: str = "/",
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``bash -c SCRIPT`` inside the host, as root with a login-like environment."""
        return self.run(["bash", "-c", script], timeout=timeout, check=check, cwd=cwd, env=env)

    def path(self, rel: str) -> Path:
        """A path inside the host, as seen from this machine."""
        return self.root / rel.lstrip("/")

    def console_tail(self, n: int = 4000) -> str:
        try:
            return self.console.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def journal(self, *args: str) -> str:
        return self.run(["journalctl", "--no-pager", "-o", "short-precise", *args]).stdout
