"""Test/benchmark/demo harness: real MariaDB, Postfix, Courier and vmaild on loopback.

Not installed; import it with the repository root on PYTHONPATH. Every service class is a
context manager that cleans up everything it started::

    from harness.mariadb.server import MariaDB
    from harness.stack import seed

    with MariaDB() as db:
        seed.load_seed(db)
        ...

One subpackage per component; names are imported from the module that defines them:

- ``common``: what every component uses: free ports and readiness waits (``ports``,
  ``wait``), processes (``procs``), the service context manager (``service``), guarded
  system files (``sysfiles``), certificates (``tls``), Maildirs (``maildir``), scratch
  directories (``tempdir``);
- ``mariadb``: a private MariaDB server (``server``), a primary with GTID replicas and their
  faults (``replication``);
- ``postfix``: a private Postfix instance (``server``; ``config``, ``altdirs``);
- ``courier``: Courier's authdaemond, imapd and pop3d at their compiled-in paths
  (``server``; ``paths``, ``files``, ``procs``, ``tls``);
- ``vmaild``: the real ``vmaild serve`` as a subprocess (``server``);
- ``stack``: the seed tutorial's data and wiring (``seed``), vmaild's shipped files read
  as Postfix and Courier read them (``shipped``), and the whole stack built from them
  (``mailstack``; ``config``, ``clients``, ``procs``);
- ``host``: a booted Debian 12 under systemd-nspawn (``nspawn``) and SMTP load against it
  (``mailload``), for tests/system;
- ``demo``: ``make demo`` (``python -m harness.demo``).
"""
