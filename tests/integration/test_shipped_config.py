"""The shipped files on their own (README.md, "Installing on a mail host"): Postfix accepts
every setting, systemd accepts the unit, tmpfiles.d and sysusers.d do what they say,
scripts/install.sh is idempotent and never overwrites a local edit silently, and
postfix/vmaild-maildrop turns exactly one kind of answer into a bounce.

Staging roots stand in for / (``ROOT=... scripts/install.sh``, ``systemd-tmpfiles
--root``): nothing here touches the real /etc.
"""

from __future__ import annotations

import grp
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.common.procs import run
from harness.common.tempdir import shared_tempdir
from harness.postfix.config import cool_down
from harness.postfix.server import Postfix
from harness.stack import shipped
from tests.integration.conftest import require

VENV_VMAILD = Path(sys.executable).parent / "vmaild"


@pytest.fixture
def tmp_root() -> Iterator[Path]:
    path = shared_tempdir("vmaild-root-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def need(*tools: str) -> None:
    require([t for t in tools if shutil.which(t) is None], ", ".join(tools))


def copy_accounts(root: Path) -> None:
    """/etc/passwd and friends without vmail, and with nobody in group courier: what a
    fresh Debian with the mail packages has before vmaild is installed."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        lines = Path(f"/etc/{name}").read_text().splitlines()
        kept = [line for line in lines if not line.startswith("vmail:")]
        if name in ("group", "gshadow"):
            kept = [
                ":".join(line.split(":")[:-1] + [""]) if line.startswith("courier:") else line
                for line in kept
            ]
        (root / "etc" / name).write_text("\n".join(kept) + "\n")
        os.chmod(root / "etc" / name, 0o640 if "shadow" in name else 0o644)


# -- Postfix ----------------------------------------------------------------------------------


def postconf_n(config_dir: Path) -> subprocess.CompletedProcess[str]:
    # Postfix pauses ~2 s before reading a main.cf written in the last 2 s.
    cool_down(config_dir / "main.cf", config_dir / "master.cf")
    return run(["postconf", "-c", str(config_dir), "-n"])


def test_postconf_n_without_unused_parameters(tmp_root: Path) -> None:
    """Debian's main.cf and master.cf plus the shipped snippets, as `postconf -n` sees them:
    every setting known (no "unused parameter" warning), every value as shipped. A seed
    leftover proves the check would catch one."""
    need("postconf")
    require(Postfix.missing_requirements(), "Postfix")
    conf = tmp_root / "postfix"
    conf.mkdir()
    for name in ("main.cf", "master.cf"):
        shutil.copy(f"/etc/postfix/{name}", conf / name)
    settings = {
        **shipped.main_cf_settings(shipped.MAIN_CF),
        **shipped.main_cf_settings(shipped.MAIN_CF_POLICY),
    }
    run(["postconf", "-c", str(conf), "-e", *(f"{k}={v}" for k, v in settings.items())])
    cool_down(conf / "main.cf")
    run(
        [
            "postconf",
            "-c",
            str(conf),
            "-M",
            *(
                "/".join(shipped.master_service_key(e)) + f"={e}"
                for e in shipped.master_cf_entries()
            ),
        ]
    )
    result = postconf_n(conf)
    assert result.stderr == ""
    shown = dict(line.split(" =", 1) for line in result.stdout.splitlines())
    for name, value in settings.items():
        assert shown[name].strip() == value, name
    # maildrop_destination_recipient_limit is known only because master.cf has "maildrop".
    assert "maildrop_destination_recipient_limit" in shown
    cool_down(conf / "main.cf", conf / "master.cf")
    master = run(["postconf", "-c", str(conf), "-M", "maildrop/unix", "smtp/inet"]).stdout
    assert "user=vmail argv=/usr/local/lib/vmaild/vmaild-maildrop socketmap:" in master
    assert " -a " not in master  # -a is the wrapper's business, see postfix/vmaild-maildrop
    assert master.split("\n")[1].split()[4] == "n"  # smtp inet: chroot = n (Cyrus SASL)
    # Port 587: TLS, then a login, and the policy check that defers while vmaild is away.
    submission = dict(
        line.split(" = ", 1)
        for line in run(
            ["postconf", "-c", str(conf), "-x", "-P", "submission/inet"]
        ).stdout.splitlines()
    )
    assert submission["submission/inet/smtpd_tls_security_level"] == "encrypt"
    assert submission["submission/inet/smtpd_client_restrictions"] == (
        "permit_sasl_authenticated,reject"
    )
    assert (
        "default_action=DEFER_IF_PERMIT"
        in submission["submission/inet/smtpd_recipient_restrictions"]
    )
    run(["postconf", "-c", str(conf), "-e", "virtual_create_maildirsize=yes"])
    cool_down(conf / "main.cf")
    assert "unused parameter: virtual_create_maildirsize=yes" in postconf_n(conf).stderr


# -- systemd ----------------------------------------------------------------------------------


def test_unit_passes_systemd_analyze_verify(tmp_root: Path) -> None:
    """The units with ExecStart pointing at this virtualenv's vmaild (verify insists that
    the program exists, and that the socket unit and the service name each other); no
    warnings at all."""
    need("systemd-analyze")
    text = (shipped.SYSTEMD_DIR / "vmaild.service").read_text()
    assert "ExecStart=/usr/local/bin/vmaild serve" in text
    unit = tmp_root / "vmaild.service"
    unit.write_text(text.replace("/usr/local/bin/vmaild", str(VENV_VMAILD)))
    sockets = [tmp_root / name for name in ("vmaild.socket", "vmaild-local.socket")]
    for socket_unit in sockets:
        shutil.copy(shipped.SYSTEMD_DIR / socket_unit.name, socket_unit)
    result = run(["systemd-analyze", "verify", str(unit), *map(str, sockets)], check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert (
        "Requires=vmaild.socket vmaild-local.socket\nAfter=vmaild.socket vmaild-local.socket\n"
        in text
    )
    for line in (
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RuntimeDirectory=vmaild",
        "RuntimeDirectoryPreserve=yes",  # vmaild-local.socket's files are in it
        "User=vmail",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/home/vmail",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=\n",
    ):
        assert line in text, line
    security = run(["systemd-analyze", "security", "--offline=yes", str(unit)], check=False)
    exposure = security.stdout.strip().splitlines()[-1]
    assert "Overall exposure level for vmaild.service: 1." in exposure, exposure


def test_local_socket_unit_holds_the_sockets_of_courier_and_vmailctl() -> None:
    """vmaild-local.socket listens where the shipped vmaild.conf's [auth] and [control] do,
    vmail's only, in the directory vmaild.tmpfiles makes at boot."""
    from vmaild import config as config_mod

    text = (shipped.SYSTEMD_DIR / "vmaild-local.socket").read_text()
    listens = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("Listen")]
    cfg = config_mod.parse(shipped.VMAILD_CONF_EXAMPLE.read_text())
    assert cfg.auth.listen is not None and cfg.control.listen is not None
    assert listens == [cfg.auth.listen.path, cfg.control.listen.path]
    assert listens == ["/run/vmaild/auth.sock", "/run/vmaild/control.sock"]
    for line in (
        "SocketUser=vmail",
        "SocketGroup=vmail",
        "SocketMode=0660",
        "DirectoryMode=0750",
        "RemoveOnStop=yes",
        "Service=vmaild.service",
        "WantedBy=sockets.target",
    ):
        assert f"\n{line}\n" in text, line
    tmpfiles = (shipped.SYSTEMD_DIR / "vmaild.tmpfiles").read_text().splitlines()
    assert "d /run/vmaild 0750 vmail vmail - -" in [" ".join(x.split()) for x in tmpfiles]


def test_socket_unit_holds_the_sockets_vmaild_conf_names_for_postfix() -> None:
    """vmaild.socket listens where the shipped vmaild.conf's [sasl], [socketmap] and
    [policy] do (vmaild takes sockets by address), with the modes vmaild itself would give
    them, and keeps them while vmaild restarts."""
    from vmaild import config as config_mod

    text = (shipped.SYSTEMD_DIR / "vmaild.socket").read_text()
    listens = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("Listen")]
    cfg = config_mod.parse(shipped.VMAILD_CONF_EXAMPLE.read_text())
    postfix_sockets = [
        listen.path
        for listen in (cfg.sasl.listen, cfg.socketmap.listen, cfg.policy.listen)
        if listen is not None
    ]
    assert (
        listens
        == postfix_sockets
        == [
            "/var/spool/postfix/vmaild/auth",
            "/var/spool/postfix/vmaild/socketmap",
            "/var/spool/postfix/vmaild/policy",
        ]
    )
    for line in (
        "ListenStream=/var/spool/postfix/vmaild/auth",
        "SocketUser=vmail",
        "SocketGroup=postfix",
        "SocketMode=0660",
        "Service=vmaild.service",
        "WantedBy=sockets.target",
    ):
        assert f"\n{line}\n" in text, line


def test_tmpfiles_gives_vmail_the_authdaemond_directory_only(tmp_root: Path) -> None:
    """Debian's courier-authdaemon tmpfiles entry plus ours, applied by systemd-tmpfiles as
    at boot: vmail (what maildrop runs as) can reach the socket, other users cannot."""
    need("systemd-tmpfiles", "setpriv")
    copy_accounts(tmp_root)
    with open(tmp_root / "etc" / "passwd", "a") as f:  # vmail, as sysusers/install add it
        f.write("vmail:x:5000:5000::/home/vmail:/usr/sbin/nologin\n")
    with open(tmp_root / "etc" / "group", "a") as f:
        f.write("vmail:x:5000:\n")
    d = tmp_root / "etc" / "tmpfiles.d"
    d.mkdir(parents=True)
    courier = Path("/usr/lib/tmpfiles.d/courier-authdaemon.conf")
    shutil.copy(courier if courier.exists() else Path(os.devnull), d / courier.name)
    shutil.copy(shipped.SYSTEMD_DIR / "vmaild.tmpfiles", d / "vmaild.conf")
    run(["systemd-tmpfiles", f"--root={tmp_root}", "--create"])
    socket_dir = tmp_root / "run" / "courier" / "authdaemon"
    assert oct(socket_dir.stat().st_mode & 0o777) == "0o750"
    probe = socket_dir / "probe"
    probe.write_text("x")
    os.chmod(probe, 0o644)
    for parent in (tmp_root, tmp_root / "run", tmp_root / "run" / "courier"):
        os.chmod(parent, 0o755)

    def readable_by(user: str) -> bool:
        return (
            run(
                [
                    "setpriv",
                    f"--reuid={user}",
                    f"--regid={user}",
                    "--clear-groups",
                    "cat",
                    str(probe),
                ],
                check=False,
            ).returncode
            == 0
        )

    assert readable_by("vmail")
    assert not readable_by("nobody")
    # The directory of vmaild's socketmap and policy sockets, inside Postfix's queue.
    assert_postfix_socket_dir(tmp_root)


def test_sysusers_creates_the_seed_accounts(tmp_root: Path) -> None:
    need("systemd-sysusers")
    copy_accounts(tmp_root)
    conf = tmp_root / "etc" / "sysusers.d"
    conf.mkdir(parents=True)
    shutil.copy(shipped.SYSTEMD_DIR / "vmaild.sysusers", conf / "vmaild.conf")
    run(["systemd-sysusers", f"--root={tmp_root}"])
    passwd = (tmp_root / "etc" / "passwd").read_text()
    group = (tmp_root / "etc" / "group").read_text()
    assert "\nvmail:x:5000:5000:virtual mail owner:/home/vmail:/usr/sbin/nologin\n" in passwd
    assert "\nvmail:x:5000:\n" in group
    assert next(line for line in group.splitlines() if line.startswith("courier:")).endswith(
        ":postfix"
    )


# -- scripts/install.sh -----------------------------------------------------------------------


def staging_root(root: Path) -> None:
    """A Debian system with the mail packages installed and nothing of vmaild."""
    copy_accounts(root)
    shutil.copytree("/etc/postfix", root / "etc" / "postfix", symlinks=True)
    for leftover in ("main.cf.vmaild-backup", "master.cf.vmaild-backup"):
        (root / "etc" / "postfix" / leftover).unlink(missing_ok=True)
    courier = root / "etc" / "courier"
    courier.mkdir(parents=True)
    for name in ("authdaemonrc", "imapd", "imapd-ssl", "pop3d", "pop3d-ssl"):
        shutil.copy(f"/etc/courier/{name}", courier / name)
    # The packaged authdaemonrc (a harness run may have left the real one edited).
    rc = courier / "authdaemonrc"
    rc.write_text(
        "\n".join(
            'authmodulelist="authpam"' if line.startswith("authmodulelist=") else line
            for line in rc.read_text().splitlines()
        )
        + "\n"
    )
    (root / "run" / "courier" / "authdaemon").mkdir(parents=True)
    (root / "var" / "spool" / "postfix").mkdir(parents=True)


def install(root: Path) -> list[str]:
    result = run(
        ["bash", str(shipped.INSTALL_SCRIPT)],
        env={**os.environ, "ROOT": str(root), "VMAILD_HOSTNAME": "mail.example.test"},
        timeout=600,
    )
    return result.stdout.splitlines()


def changes(lines: list[str]) -> list[str]:
    return [line for line in lines if ": changed" in line or "NOTICE" in line]


def test_install_twice_then_local_edits(tmp_root: Path) -> None:
    need("postconf", "openssl", "systemd-tmpfiles", "useradd")
    staging_root(tmp_root)
    first = install(tmp_root)
    assert changes(first), first
    r = tmp_root
    # What the first run put in place.
    assert (r / "opt/vmaild/bin/vmaild").exists()
    assert run([str(r / "opt/vmaild/bin/vmaild"), "--version"]).stdout.startswith("vmaild ")
    assert os.readlink(r / "usr/local/bin/vmailctl") == "/opt/vmaild/bin/vmailctl"
    assert os.readlink(r / "etc/courier/authProg") == "/usr/local/bin/vmaild-authpipe"
    assert os.access(r / "usr/local/lib/vmaild/vmaild-maildrop", os.X_OK)
    monitoring = shipped.ROOT / "monitoring"  # installed as documentation, byte for byte
    for doc in monitoring.iterdir():
        installed = r / "usr/local/share/doc/vmaild/monitoring" / doc.name
        assert installed.read_bytes() == doc.read_bytes(), installed
    conf = r / "etc/vmaild/vmaild.conf"
    assert conf.read_text() == shipped.VMAILD_CONF_EXAMPLE.read_text()
    assert oct(conf.stat().st_mode & 0o777) == "0o640" and conf.stat().st_gid == 5000
    assert (r / "etc/systemd/system/vmaild.service").read_text() == (
        shipped.SYSTEMD_DIR / "vmaild.service"
    ).read_text()
    for name in ("vmaild.socket", "vmaild-local.socket"):
        assert (r / "etc/systemd/system" / name).read_text() == (
            shipped.SYSTEMD_DIR / name
        ).read_text()
    passwd = (r / "etc/passwd").read_text()
    assert "\nvmail:x:5000:5000:" in passwd
    assert ":postfix" in next(
        line for line in (r / "etc/group").read_text().splitlines() if line.startswith("courier:")
    )
    home = r / "home/vmail"
    assert (home.stat().st_uid, home.stat().st_gid, oct(home.stat().st_mode & 0o777)) == (
        5000,
        5000,
        "0o750",
    )
    # vmaild's sockets for Postfix: vmail creates them, the setgid bit makes them postfix's.
    assert_postfix_socket_dir(r)
    assert "install: /var/spool/postfix/vmaild: changed (vmail:postfix, 2750)" in first
    tls = r / "etc/vmaild/tls"
    assert (
        "CN = mail.example.test"
        in run(["openssl", "x509", "-in", str(tls / "mail.crt"), "-noout", "-subject"]).stdout
    )
    assert oct((tls / "mail.key").stat().st_mode & 0o777) == "0o600"
    assert (r / "etc/courier/authdaemonrc.vmaild-backup").exists()
    rc = (r / "etc/courier/authdaemonrc").read_text()
    assert '\nauthmodulelist="authpipe"\n' in rc and 'authmodulelist="authpam"' not in rc
    assert "\nTLS_CERTFILE=/etc/vmaild/tls/mail.pem\n" in (r / "etc/courier/imapd-ssl").read_text()
    result = postconf_n(r / "etc/postfix")
    assert result.stderr == ""
    assert "virtual_transport = maildrop" in result.stdout
    assert os.getxattr(r / "run/courier/authdaemon", "system.posix_acl_access")

    # Again: nothing to do.
    second = install(tmp_root)
    assert changes(second) == [] and second[-1] == "install: done: nothing to change", second

    # The admin sets the database password: kept, no .new (the shipped file is unchanged).
    conf.write_text(conf.read_text().replace("mail_admin_password", "s3cret"))
    third = install(tmp_root)
    assert changes(third) == []
    assert "install: /etc/vmaild/vmaild.conf: ok (edited here; kept)" in third
    assert "s3cret" in conf.read_text() and not conf.with_suffix(".conf.new").exists()

    # The admin edited the unit, and the shipped unit changed since the last install
    # (simulated by what the install recorded as shipped last time): theirs stays, the new
    # one is written as .new, with a notice.
    unit = r / "etc/systemd/system/vmaild.service"
    unit.write_text(unit.read_text().replace("RestartSec=2s", "RestartSec=5s"))
    pristine = r / "var/lib/vmaild/install/_etc_systemd_system_vmaild.service"
    pristine.write_text(pristine.read_text().replace("TimeoutStopSec=20s", "TimeoutStopSec=9s"))
    fourth = install(tmp_root)
    notices = [line for line in fourth if "NOTICE" in line]
    assert len(notices) == 1 and "/etc/systemd/system/vmaild.service.new" in notices[0]
    assert "RestartSec=5s" in unit.read_text()
    assert Path(f"{unit}.new").read_text() == (shipped.SYSTEMD_DIR / "vmaild.service").read_text()

    # A file nobody edited follows the shipped version without a question.
    tmpfiles = r / "etc/tmpfiles.d/vmaild.conf"
    old = "# an older shipped version\n" + tmpfiles.read_text()
    tmpfiles.write_text(old)
    (r / "var/lib/vmaild/install/_etc_tmpfiles.d_vmaild.conf").write_text(old)
    fifth = install(tmp_root)
    assert "install: /etc/tmpfiles.d/vmaild.conf: changed (updated)" in fifth
    assert tmpfiles.read_text() == (shipped.SYSTEMD_DIR / "vmaild.tmpfiles").read_text()
    # And the admin's Postfix edit of a shipped setting is put back (main.cf is not a
    # conffile of ours; the settings are), with the first backup kept.
    run(["postconf", "-c", str(r / "etc/postfix"), "-e", "message_size_limit=10240000"])
    sixth = install(tmp_root)
    assert any(
        line.startswith("install: /etc/postfix/main.cf: changed (1 settings") for line in sixth
    ), sixth
    assert "message_size_limit = 30720000" in postconf_n(r / "etc/postfix").stdout


# -- postfix/vmaild-maildrop ------------------------------------------------------------------


class FakeVmaild:
    """A one-answer tcp_table or socketmap server, enough for the wrapper's one question."""

    def __init__(self, answer: bytes, path: Path | None = None) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        if path is None:
            self.sock = socket.create_server(("127.0.0.1", 0))
            self.port = self.sock.getsockname()[1]
        else:  # a unix socket, like the shipped [socketmap] listen
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.bind(str(path))
            self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.requests.append(conn.recv(4096))
                conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fake_maildrop(tmp_root: Path) -> Callable[[int], Path]:
    def make(status: int) -> Path:
        script = tmp_root / f"maildrop-{status}"
        script.write_text(f'#!/bin/sh\necho "maildrop $*" >&2\ncat >/dev/null\nexit {status}\n')
        script.chmod(0o755)
        return script

    return make


def wrapper(
    maildrop: Path, map_ref: str, address: str = "u ser%x@example.test"
) -> subprocess.CompletedProcess[str]:
    return run(
        [str(shipped.MAILDROP_WRAPPER), map_ref, address, "ext"],
        input="message\n",
        env={"PATH": "/usr/bin:/bin", "VMAILD_MAILDROP": str(maildrop)},
        check=False,
    )


@pytest.mark.parametrize(
    ("status", "passed_on"), [(0, 0), (75, 75), (77, 77), (73, 73), (1, 75), (143, 75)]
)
def test_wrapper_passes_sysexits_on_and_defers_the_rest(
    fake_maildrop: Callable[[int], Path], status: int, passed_on: int
) -> None:
    """maildrop's own verdicts (0 and sysexits codes) stand; exit(1) or a signal -- which
    pipe(8) would bounce as "unknown mail system error" -- becomes a deferral."""
    result = wrapper(fake_maildrop(status), "socketmap:inet:127.0.0.1:9:mailboxes")
    assert result.returncode == passed_on
    assert "maildrop -a -d u ser%x@example.test ext" in result.stderr


@pytest.mark.parametrize(
    ("kind", "answer", "status"),
    [
        ("tcp", b"500 not found\n", 67),
        ("tcp", b"200 example.test/user/\n", 75),
        ("tcp", b"400 database down\n", 75),
        ("socketmap", b"9:NOTFOUND ,", 67),
        ("socketmap", b"22:OK example.test/u ser/,", 75),
        ("socketmap", b"12:TEMP db down,", 75),
        ("socketmap", b"", 75),
    ],
)
def test_wrapper_bounces_only_when_vmaild_agrees(
    fake_maildrop: Callable[[int], Path], kind: str, answer: bytes, status: int
) -> None:
    server = FakeVmaild(answer)
    try:
        ref = (
            f"tcp:127.0.0.1:{server.port}"
            if kind == "tcp"
            else f"socketmap:inet:127.0.0.1:{server.port}:mailboxes"
        )
        result = wrapper(fake_maildrop(67), ref)
    finally:
        server.close()
    assert result.returncode == status, result.stderr
    expected = (
        b"get u%20ser%25x@example.test\n"
        if kind == "tcp"
        else b"30:mailboxes u ser%x@example.test,"
    )
    assert server.requests == [expected]


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (b"9:NOTFOUND ,", 67),
        (b"22:OK example.test/u ser/,", 75),
        (b"12:TEMP db down,", 75),
        (b"", 75),
    ],
)
def test_wrapper_asks_a_unix_socketmap_through_postmap(
    fake_maildrop: Callable[[int], Path], tmp_root: Path, answer: bytes, status: int
) -> None:
    """The shipped map (master.cf.vmaild) is a unix socket, which bash cannot open: the
    wrapper asks through Postfix's own client, and only its silent "not found" counts."""
    need("postmap")
    server = FakeVmaild(answer, tmp_root / "socketmap")
    try:
        result = wrapper(fake_maildrop(67), f"socketmap:unix:{tmp_root}/socketmap:mailboxes")
    finally:
        server.close()
    assert result.returncode == status, result.stderr
    # Postfix's client asks again once when the connection closes without an answer.
    assert set(server.requests) == {b"30:mailboxes u ser%x@example.test,"}


def test_wrapper_defers_when_vmaild_is_unreachable_or_misconfigured(
    fake_maildrop: Callable[[int], Path], tmp_root: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # closed again below: nobody listens there
    assert wrapper(fake_maildrop(67), f"tcp:127.0.0.1:{port}").returncode == 75
    assert wrapper(fake_maildrop(67), f"socketmap:unix:{tmp_root}/none:mailboxes").returncode == 75
    # Relative to what? pipe(8)'s working directory is not the wrapper's business.
    assert wrapper(fake_maildrop(67), "socketmap:unix:vmaild/socketmap:mailboxes").returncode == 75
    assert wrapper(fake_maildrop(0), "mysql:/etc/postfix/x.cf").returncode == 75


def test_install_points_postfix_where_a_kept_vmaild_conf_listens(tmp_root: Path) -> None:
    """An upgrade from before vmaild served the maps and the policy on unix sockets: the
    admin's vmaild.conf (kept, the new one lands as .new) still listens on 127.0.0.1:10020
    and :10040, so main.cf and master.cf must name those, not sockets nobody serves."""
    need("postconf", "openssl", "systemd-tmpfiles", "useradd")
    staging_root(tmp_root)
    conf = tmp_root / "etc/vmaild/vmaild.conf"
    conf.parent.mkdir(parents=True)
    old = shipped.VMAILD_CONF_EXAMPLE.read_text()
    for section, address in (("socketmap", "127.0.0.1:10020"), ("policy", "127.0.0.1:10040")):
        old = old.replace(
            f"listen = unix:/var/spool/postfix/vmaild/{section}", f"listen = {address}"
        )
    conf.write_text(old.replace("mail_admin_password", "s3cret"))
    lines = install(tmp_root)
    assert any("vmaild.conf: NOTICE" in line for line in lines), lines
    assert conf.read_text() == old.replace("mail_admin_password", "s3cret")
    etc = tmp_root / "etc/postfix"
    shown = postconf_n(etc).stdout
    assert "virtual_mailbox_maps = socketmap:inet:127.0.0.1:10020:mailboxes" in shown
    assert "check_policy_service { inet:127.0.0.1:10040, timeout=5s, default_action=DUNNO }" in (
        shown
    )
    assert "unix:vmaild" not in shown
    master = run(["postconf", "-c", str(etc), "-M", "maildrop/unix", "submission/inet"]).stdout
    assert "vmaild-maildrop socketmap:inet:127.0.0.1:10020:mailboxes " in master
    assert "inet:127.0.0.1:10040, timeout=5s, default_action=DEFER_IF_PERMIT" in master
    assert "unix:vmaild/" not in master and "postfix/vmaild/" not in master
    # Run again: the same, nothing to change.
    assert changes(install(tmp_root)) == []


def test_install_enables_the_socket_units_where_vmaild_is_enabled(tmp_root: Path) -> None:
    """A fresh install leaves enabling to the admin (the last line says how); an upgrade
    of a host whose vmaild is enabled enables vmaild.socket and vmaild-local.socket,
    without starting anything, and asks for the restart that brings them in
    (vmaild.service requires them)."""
    need("postconf", "openssl", "systemd-tmpfiles", "useradd", "systemctl")
    staging_root(tmp_root)
    wants = tmp_root / "etc/systemd/system/sockets.target.wants"
    fresh = install(tmp_root)
    assert not wants.exists() or not list(wants.iterdir())
    assert (
        "then: systemctl enable --now vmaild.socket vmaild-local.socket vmaild; restart "
        in fresh[-1]
    ), fresh
    run(["systemctl", f"--root={tmp_root}", "enable", "--quiet", "vmaild.service"])
    upgrade = install(tmp_root)
    assert changes(upgrade) == [
        "install: vmaild.socket: changed (enabled: Postfix's sockets stay open while vmaild"
        " restarts)",
        "install: vmaild-local.socket: changed (enabled: Courier's logins and lookups wait"
        " while vmaild restarts)",
    ]
    assert upgrade[-1].endswith("; restart vmaild"), upgrade[-3:]
    for name in ("vmaild.socket", "vmaild-local.socket"):
        assert os.readlink(wants / name) == f"/etc/systemd/system/{name}"
    again = install(tmp_root)
    assert "install: vmaild.socket: ok (enabled)" in again
    assert "install: vmaild-local.socket: ok (enabled)" in again


def assert_postfix_socket_dir(root: Path) -> None:
    """vmaild's socketmap and policy sockets live in Postfix's queue directory, in a
    directory vmail creates and the setgid bit hands to group postfix: 2750 vmail:postfix."""
    st = (root / "var/spool/postfix/vmaild").stat()
    assert (st.st_uid, grp.getgrgid(st.st_gid).gr_name, oct(st.st_mode & 0o7777)) == (
        5000,
        "postfix",
        "0o2750",
    )


def without_sasl(text: str) -> str:
    """vmaild.conf as shipped before vmaild served SMTP AUTH: no [sasl] section."""
    start = text.index("# SMTP AUTH: Postfix's smtpd asks vmaild directly")
    end = text.index("\n[mailbox]")
    return text[:start] + text[end + 1 :]


def test_install_upgrades_smtp_auth_to_vmaild(tmp_root: Path) -> None:
    """A host installed before [sasl] existed: Postfix on Cyrus SASL, the admin's
    vmaild.conf kept. The upgrade adds [sasl] to that file (once) and switches Postfix to
    it; an admin who removes [sasl] again keeps Postfix on Cyrus SASL for good."""
    need("postconf", "openssl", "systemd-tmpfiles", "useradd")
    staging_root(tmp_root)
    etc = tmp_root / "etc/postfix"
    run(["postconf", "-c", str(etc), "-e", "smtpd_sasl_type=cyrus", "smtpd_sasl_path=smtpd"])
    conf = tmp_root / "etc/vmaild/vmaild.conf"
    conf.parent.mkdir(parents=True)
    old = without_sasl(shipped.VMAILD_CONF_EXAMPLE.read_text()).replace(
        "mail_admin_password", "s3cret"
    )
    assert "\n[sasl]" not in old
    conf.write_text(old)
    lines = install(tmp_root)
    added = "changed ([sasl] added: Postfix asks vmaild for SMTP AUTH)"
    assert f"install: /etc/vmaild/vmaild.conf: {added}" in lines
    text = conf.read_text()
    assert text.startswith(old) and text.endswith(
        "\n[sasl]\nlisten = unix:/var/spool/postfix/vmaild/auth\n"
    )
    assert (tmp_root / "etc/vmaild/vmaild.conf.vmaild-backup").read_text() == old
    shown = postconf_n(etc).stdout
    assert "smtpd_sasl_type = dovecot\n" in shown and "smtpd_sasl_path = vmaild/auth\n" in shown
    # vmaild reads the result: [sasl] listens where Postfix looks.
    cfg = run([str(VENV_VMAILD), "check", "--no-db", "-c", str(conf)], check=False)
    assert cfg.returncode == 0, cfg.stderr
    assert changes(install(tmp_root)) == []

    # The admin goes back to Cyrus SASL: [sasl] removed; make install leaves it so.
    conf.write_text(old)
    lines = install(tmp_root)
    assert "install: /etc/vmaild/vmaild.conf: ok (no [sasl]: SMTP AUTH stays on Cyrus SASL)" in (
        lines
    )
    assert conf.read_text() == old
    shown = postconf_n(etc).stdout
    assert "smtpd_sasl_type = cyrus\n" in shown and "smtpd_sasl_path = smtpd\n" in shown


def test_install_names_a_sasl_socket_elsewhere(tmp_root: Path) -> None:
    need("postconf", "openssl", "systemd-tmpfiles", "useradd")
    staging_root(tmp_root)
    conf = tmp_root / "etc/vmaild/vmaild.conf"
    conf.parent.mkdir(parents=True)
    etc = tmp_root / "etc/postfix"
    shipped_text = shipped.VMAILD_CONF_EXAMPLE.read_text()
    for listen, path in (
        ("unix:/var/spool/postfix/private/vmaild-auth", "private/vmaild-auth"),
        ("127.0.0.1:12345", "inet:127.0.0.1:12345"),
    ):
        conf.write_text(
            shipped_text.replace(
                "listen = unix:/var/spool/postfix/vmaild/auth", f"listen = {listen}"
            )
        )
        install(tmp_root)
        assert f"smtpd_sasl_path = {path}\n" in postconf_n(etc).stdout
