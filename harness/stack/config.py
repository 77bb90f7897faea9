"""The configuration :class:`harness.stack.mailstack.MailStack` gives its services: the shipped
files (scripts/vmaild.conf.example, postfix/*.vmaild, courier/*.vmaild) with production
addresses and paths replaced by the sandbox's."""

from __future__ import annotations

from pathlib import Path

from harness.mariadb.server import MariaDB
from harness.stack import seed, shipped

#: Keys of courier/*.vmaild that only place the listeners (the harness picks loopback ports).
_LISTENER_KEYS = {
    "ADDRESS",
    "PORT",
    "SSLADDRESS",
    "SSLPORT",
    "IMAPDSSLSTART",
    "IMAPDSTARTTLS",
    "POP3DSSLSTART",
    "MAILDIRPATH",
}
#: sha512_crypt rounds for new hashes: the default 656,000 costs ~0.5 s per login.
TEST_PASSWORD_ROUNDS = 5000


class StackConfig:
    """The configuration half of :class:`harness.stack.mailstack.MailStack` (a mixin: the
    attributes below are MailStack's)."""

    mariadb: MariaDB
    db: seed.SeedDatabase
    ports: dict[str, int]
    sockets: dict[str, Path]
    rundir: Path
    base: Path
    tls_dir: Path
    wrapper: Path
    tls: bool
    log_level: str
    extra_vmaild: dict[str, dict[str, str]]
    extra_main_cf: dict[str, str]

    def vmaild_config(self) -> str:
        """scripts/vmaild.conf.example with the sandbox's database, ports and paths."""
        cp = shipped.vmaild_example()
        cp["database"].update(
            hosts=f"127.0.0.1:{self.mariadb.port}",
            user=self.db.user,
            password=self.db.password,
            dbname=self.db.dbname,
            connect_timeout="1",
            retry_interval="1",
        )
        cp["socketmap"]["listen"] = f"unix:{self.sockets['socketmap']}"
        cp["policy"]["listen"] = f"unix:{self.sockets['policy']}"
        cp["sasl"]["listen"] = f"unix:{self.sockets['sasl']}"
        cp["metrics"]["listen"] = f"127.0.0.1:{self.ports['metrics']}"
        cp["auth"]["listen"] = f"unix:{self.rundir / 'auth.sock'}"
        cp["auth"]["password_rounds"] = str(TEST_PASSWORD_ROUNDS)
        cp["control"]["listen"] = f"unix:{self.rundir / 'control.sock'}"
        cp["mailbox"]["base"] = str(self.base)
        cp["log"]["level"] = self.log_level
        for section, values in self.extra_vmaild.items():
            if not cp.has_section(section):
                cp.add_section(section)
            cp[section].update(values)
        return shipped.ini_text(cp)

    def replacements(self) -> dict[str, str]:
        """Production addresses and paths in the shipped files -> the sandbox's."""
        example = shipped.vmaild_example()
        reps = {example["metrics"]["listen"]: f"127.0.0.1:{self.ports['metrics']}"}
        # Absolute socket paths (the maildrop wrapper's map in master.cf); main.cf's are
        # relative to the queue directory and so already the private instance's.
        for section in ("socketmap", "policy"):
            production = example[section]["listen"].removeprefix("unix:")
            reps[production] = str(self.sockets[section])
        tls = shipped.INSTALLED_TLS_DIR
        reps[f"{tls}/mail.key"] = str(self.tls_dir / "mail.key")
        reps[f"{tls}/mail.crt"] = str(self.tls_dir / "mail.crt")
        reps[f"{tls}/mail.pem"] = str(self.tls_dir / "mail.pem")
        reps[shipped.INSTALLED_WRAPPER] = str(self.wrapper)
        return reps

    def postfix_main_cf(self) -> dict[str, str]:
        reps = self.replacements()
        settings = {
            **shipped.main_cf_settings(shipped.MAIN_CF),
            **shipped.main_cf_settings(shipped.MAIN_CF_POLICY),
        }
        settings = {k: shipped.relocate(v, reps) for k, v in settings.items()}
        if not self.tls:
            for key in (
                "smtpd_tls_chain_files",
                "smtpd_tls_security_level",
                "smtpd_tls_auth_only",
                "smtpd_tls_loglevel",
            ):
                settings.pop(key, None)
        # Test clients connect from 127.0.0.1 and play the internet: with loopback in
        # mynetworks (the harness default) permit_mynetworks would let them relay.
        settings["mynetworks"] = "192.0.2.1/32"
        return {**settings, **self.extra_main_cf}

    def postfix_master_cf(self) -> list[str]:
        """The shipped entries with the public listeners moved to loopback: the harness
        runs ``smtp inet`` itself on 127.0.0.1:<free port> with the same columns (checked),
        and ``submission inet`` (TLS only, so not without ``tls``) on ports["submission"]."""
        reps = self.replacements()
        entries = []
        for entry in shipped.master_cf_entries():
            name, kind = shipped.master_service_key(entry)
            if kind == "inet":
                columns = entry.split()[2:7]
                if columns != ["n", "-", "n", "-", "-"] or entry.split()[7] != "smtpd":
                    raise ValueError(
                        f"unexpected shipped listener {entry!r}: the harness "
                        "runs smtpd with private=n unpriv=- chroot=n"
                    )
                if name != "submission" or not self.tls:
                    continue
                entry = f"127.0.0.1:{self.ports['submission']} " + entry.split(None, 1)[1]
            entries.append(shipped.relocate(entry, reps))
        return entries

    def courier_login_env(self) -> dict[str, str]:
        """courier/{imapd,imapd-ssl,pop3d,pop3d-ssl}.vmaild, evaluated after the packaged
        files, minus the listener placement."""
        env: dict[str, str] = {}
        for name in ("imapd", "imapd-ssl", "pop3d", "pop3d-ssl"):
            env.update(shipped.courier_settings(name))
        reps = self.replacements()
        env = {k: shipped.relocate(v, reps) for k, v in env.items() if k not in _LISTENER_KEYS}
        env["TLS_CACHEFILE"] = ""  # the packaged cache file is global; go without one
        if not self.tls:
            env = {k: v for k, v in env.items() if "TLS" not in k}
        return env
