"""Logins: the service behind ``[auth] listen`` (Courier authpipe requests relayed by
vmaild-authpipe).

The relay itself imports nothing from this package: authpipe_main.py reads only ``[auth]
listen`` and ``relay_timeout``, through vmaild.config, and forwards bytes. Parsing the
configuration imports ``settings`` (the ``[auth]`` checks), so this file and that module
stay free of passlib and pymysql; the rest of the package runs in ``vmaild serve`` only."""
