"""A private Prometheus server (Debian's ``prometheus`` package) for the monitoring test.

It scrapes the given targets every second, loads the given rule files, keeps its data in
its own directory and listens on a free loopback port; nothing of the packaged service
(/etc/prometheus, /var/lib/prometheus, port 9090) is used. Readiness is its own
``/-/ready`` endpoint; it is stopped by the PID the harness started.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.common.ports import LOOPBACK, free_port
from harness.common.procs import exited, stop_process, tail
from harness.common.service import Service
from harness.common.wait import wait_until

PROMETHEUS = "prometheus"
PROMTOOL = "promtool"


class Prometheus(Service):
    """``prometheus`` on 127.0.0.1:<free port> scraping ``targets`` (``job: [host:port]``)."""

    def __init__(
        self,
        targets: dict[str, Sequence[str]],
        rule_files: Sequence[str | os.PathLike[str]] = (),
        *,
        interval: str = "1s",
        start_timeout: float = 30.0,
    ) -> None:
        self._owns_basedir = True
        self.basedir = Path(tempfile.mkdtemp(prefix="vmaild-prometheus-"))
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.targets = {job: list(addresses) for job, addresses in targets.items()}
        self.rule_files = [str(Path(f).resolve()) for f in rule_files]
        self.interval = interval
        self.start_timeout = start_timeout
        self.log_path = self.basedir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def missing_requirements() -> list[str]:
        return [
            f"{b} (Debian package prometheus)"
            for b in (PROMETHEUS, PROMTOOL)
            if shutil.which(b) is None
        ]

    def config(self) -> dict[str, Any]:
        """prometheus.yml (JSON is YAML): one static job per entry of ``targets``."""
        return {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": self.rule_files,
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": addresses}]}
                for job, addresses in self.targets.items()
            ],
        }

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> Prometheus:
        config = self.basedir / "prometheus.yml"
        config.write_text(json.dumps(self.config(), indent=2))
        log = open(self.log_path, "ab")
        try:
            self._proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.basedir / 'data'}",
                    f"--web.listen-address={LOOPBACK}:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.basedir,
                start_new_session=True,
            )
        finally:
            log.close()
        proc = self._proc
        wait_until(
            self._ready,
            self.start_timeout,
            f"prometheus on port {self.port} to be ready",
            interval=0.05,
            abort=lambda: exited(proc, "prometheus", self.log_path),
        )
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    def stop(self) -> None:
        stop_process(self._proc, timeout=10.0)
        self._proc = None

    def log(self) -> str:
        return tail(self.log_path, 50)

    # -- HTTP API ------------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/PATH; returns ``data`` of a successful answer, raises otherwise."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:  # a bad query is 400 with the error in the body
            body = json.load(e)
        if body.get("status") != "success":
            raise ValueError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query: the result vector (a scalar result becomes one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result


def promtool(
    *args: str, cwd: str | os.PathLike[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``promtool ARGS`` and return the completed process (not checked)."""
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=cwd)
