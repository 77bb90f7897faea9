"""What every harness service shares: a context manager that starts it, cleans up if the
start fails half-way, and on exit stops it and deletes the directory it made."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Self


class Service:
    """Subclasses implement ``start`` and ``stop`` and set ``_owns_basedir`` (True when
    the harness created ``service_dir()``, by default ``self.basedir``)."""

    _owns_basedir: bool

    def service_dir(self) -> Path:
        return Path(self.basedir)  # type: ignore[attr-defined]

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Stop and, if the harness created it, delete the service's directory."""
        self.stop()
        if self._owns_basedir:
            shutil.rmtree(self.service_dir(), ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
