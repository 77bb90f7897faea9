"""``make demo``: bring the stack up on loopback, show it working, tear it down.

Everything runs in a sandbox directory with free ports: a private MariaDB loaded with the
seed tutorial's schema and rows, ``vmaild serve``, and a private Postfix whose virtual
domain, mailbox and alias maps point at vmaild. Each step prints one line.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import seed
from .mariadb import MariaDB
from .ports import free_port
from .postfix import Postfix
from .procs import run
from .vmaild import Vmaild, config_text, seed_ports


class Demo:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.failures = 0

    def step(self, title: str, action: Callable[[], str]) -> None:
        try:
            detail = action()
        except Exception as e:  # noqa: BLE001 - a demo reports and goes on to tear down
            self.failures += 1
            print(f"  FAIL  {title}: {e}", flush=True)
            return
        print(f"  ok    {title}" + (f": {detail}" if detail else ""), flush=True)


def postmap(key: str, table: str) -> str:
    r = run(["postmap", "-q", key, table], check=False)
    if r.returncode == 0:
        return r.stdout.strip()
    return "(temporary failure)" if "error" in r.stderr else "(not found)"


def main() -> int:
    sandbox = Path(tempfile.mkdtemp(prefix="vmaild-demo-"))
    sandbox.chmod(0o755)  # the postfix and courier users must reach their directories
    demo = Demo()
    print(f"vmaild demo, sandbox {sandbox}")
    with MariaDB() as mariadb:
        db = seed.load_seed(mariadb)
        print(f"  ok    MariaDB on 127.0.0.1:{mariadb.port} with the seed's tables and rows "
              f"({len(seed.SEED_USERS)} users, ENCRYPT() passwords)")
        ports, metrics_port, sm = seed_ports(), free_port(), free_port()
        cfg = config_text(db_port=mariadb.port, dbname=db.dbname, user=db.user,
                          password=db.password, ports=ports, socketmap_port=sm,
                          metrics_port=metrics_port).replace("level = debug", "level = info")
        with Vmaild(cfg, sandbox / "vmaild") as vmaild:
            listing = ", ".join(f"{n} {p}" for n, p in ports.items())
            print(f"  ok    vmaild serving tcp: maps ({listing}), socketmap {sm}, "
                  f"metrics {metrics_port}")
            main_cf = {
                "virtual_alias_domains": "",
                "virtual_mailbox_domains": f"tcp:127.0.0.1:{ports['domains']}",
                "virtual_mailbox_maps": f"tcp:127.0.0.1:{ports['mailboxes']}",
                "virtual_alias_maps": (f"tcp:127.0.0.1:{ports['forwardings']}, "
                                       f"tcp:127.0.0.1:{ports['email2email']}"),
                "virtual_transport": "discard:",
                "message_size_limit": "30720000",
            }
            with Postfix(main_cf, basedir=sandbox / "postfix") as postfix:
                print(f"  ok    Postfix on 127.0.0.1:{postfix.smtp_port} with its maps on vmaild")
                mailboxes = f"tcp:127.0.0.1:{ports['mailboxes']}"
                demo.step("postmap -q sales@raecoo.com (mailboxes)",
                          lambda: postmap("sales@raecoo.com", mailboxes))
                demo.step("postmap -q SALES+news@Raecoo.com (case, extension)",
                          lambda: postmap("SALES+news@Raecoo.com", mailboxes))
                demo.step("postmap -q anyone@example.org (aliases, catch-all)",
                          lambda: postmap("anyone@example.org",
                                          f"tcp:127.0.0.1:{ports['forwardings']}"))
                demo.step("postmap -q x'OR'1'='1@raecoo.com (a key, never SQL)",
                          lambda: postmap("x'OR'1'='1@raecoo.com", mailboxes))
                demo.step("socketmap lookup of sales@raecoo.com",
                          lambda: postmap("sales@raecoo.com",
                                          f"socketmap:inet:127.0.0.1:{sm}:mailboxes"))

                def send_ok() -> str:
                    refused = postfix.send("friend@example.net", ["sales@raecoo.com"])
                    return "250, accepted" if not refused else f"refused {refused}"
                demo.step("SMTP to sales@raecoo.com", send_ok)

                def send_unknown() -> str:
                    with postfix.smtp() as s:
                        s.ehlo("demo.example.net")
                        s.mail("friend@example.net")
                        code, text = s.rcpt("nobody@raecoo.com")
                    return f"{code} {text.decode()}"
                demo.step("SMTP to nobody@raecoo.com", send_unknown)

                def outage() -> str:
                    mariadb.stop()
                    try:
                        cached = postmap("sales@raecoo.com", mailboxes)
                        fresh = postmap("alice@example.test", mailboxes)
                    finally:
                        mariadb.start()
                    return f"cached key -> {cached}; uncached key -> {fresh} (400, never 500)"
                demo.step("MariaDB stopped", outage)
                demo.step("MariaDB back, no restart of vmaild",
                          lambda: postmap("alice@example.test", mailboxes))

                def metrics() -> str:
                    lines = [line for line in vmaild.metrics_text(metrics_port).splitlines()
                             if line.startswith("vmaild_lookups_total{map=\"mailboxes\"")]
                    return "; ".join(line.replace("vmaild_lookups_total", "") for line in lines)
                demo.step("metrics", metrics)
        print("  ok    everything stopped")
    if os.environ.get("VMAILD_DEMO_KEEP"):
        print(f"sandbox kept: {sandbox}")
    else:
        shutil.rmtree(sandbox, ignore_errors=True)
    took = time.monotonic() - demo.started
    print(f"demo {'passed' if not demo.failures else 'FAILED'} in {took:.1f} s")
    return 1 if demo.failures else 0


if __name__ == "__main__":
    sys.exit(main())
