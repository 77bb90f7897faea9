"""Everything built from one configuration: what a reload swaps in as a whole.

A ``Runtime`` holds the database pool, the cache, the lookups and, when configured, the
auth and policy services and the replica lag check. SIGHUP builds a new one from the
re-read file (daemon.py); nothing in it outlives its configuration, so a reload never
mixes the old settings with the new.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .cache import Cache, TTLs
from .config import Config
from .db import Database
from .lagcheck import LagCheck, default_name
from .lookup import Lookups
from .metrics import Metrics
from .schema_fit import SchemaFit

if TYPE_CHECKING:
    from .auth.service import AuthService
    from .policy.service import PolicyService


@dataclass
class Runtime:
    config: Config
    db: Database
    cache: Cache
    lookups: Lookups
    fit: SchemaFit
    auth: AuthService | None = None  # built only with [auth] or [sasl] listen
    policy: PolicyService | None = None  # built only with [policy] listen
    lag: LagCheck | None = None  # built only when some read host is a replica

    @classmethod
    def build(cls, cfg: Config, metrics: Metrics) -> Runtime:
        db = Database(cfg.database, metrics)
        c = cfg.cache
        cache = Cache(TTLs(c.ttl, c.negative_ttl, c.stale_ttl), c.max_entries)
        fit = SchemaFit(cfg, metrics)
        rt = cls(cfg, db, cache, Lookups(cfg, db, cache, metrics, fit=fit), fit)
        # The auth and policy services live in their own packages and are only imported
        # when configured.
        if cfg.auth.listen is not None or cfg.sasl.listen is not None:
            from .auth.service import AuthService

            rt.auth = AuthService.for_config(cfg, db, metrics, fit=fit)
        if cfg.policy.listen is not None:
            from .policy.service import PolicyService

            rt.policy = PolicyService(cfg, db, metrics, fit=fit)
        d = cfg.database
        if d.replicated and d.lag_check_interval > 0:
            rt.lag = LagCheck(d, db.hosts, default_name(cfg.path), metrics)
        return rt

    def close(self) -> None:
        self.fit.active = False
        for service in (self.auth, self.policy):
            if service is not None:
                service.close()
        if self.lag is not None:
            self.lag.close()
        self.db.close()
