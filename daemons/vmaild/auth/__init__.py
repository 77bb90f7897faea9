"""Logins: the service behind ``[auth] listen`` (Courier authpipe requests relayed by
vmaild-authpipe). Kept import-free: the relay imports ``vmaild.auth.settings`` and must
not pull in passlib or pymysql."""
