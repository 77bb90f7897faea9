"""The parts of the lookup benchmark; ``python -m bench.bench_lookup`` runs it.

- ``common``: names, sizes, the run plan, and the /proc and /metrics readings;
- ``servers``: the private MariaDB, its data, and the vmaild instances under test;
- ``baselines``: the clients measured against vmaild, mariadb-slap and ``postmap -q -``;
- ``runner``: the parts in order, driving bench/loadgen.c against vmaild;
- ``report``: the printed table and the targets.
"""
