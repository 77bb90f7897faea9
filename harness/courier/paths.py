"""Where Debian's Courier packages put things: compiled-in configuration, socket and
binary paths, shared by :mod:`harness.courier.server` and its helper modules."""

from __future__ import annotations

from pathlib import Path

COURIER_ETC = Path("/etc/courier")
AUTHDAEMONRC = COURIER_ETC / "authdaemonrc"
AUTHPROG = COURIER_ETC / "authProg"
AUTHMYSQLRC = COURIER_ETC / "authmysqlrc"
RUN_COURIER = Path("/run/courier")
AUTHDAEMON_DIR = RUN_COURIER / "authdaemon"
AUTHDAEMON_SOCKET = AUTHDAEMON_DIR / "socket"
#: Written by courierlogger when the packaged init script runs authdaemond.
AUTHDAEMON_PIDFILE = AUTHDAEMON_DIR / "pid"

AUTHDAEMOND_BIN = "/usr/lib/courier/courier-authlib/authdaemond"
COURIERTCPD = "/usr/sbin/couriertcpd"
COURIERTLS = "/usr/bin/couriertls"
IMAPLOGIN = "/usr/lib/courier/courier/imaplogin"
IMAPD = "/usr/bin/imapd"
POP3LOGIN = "/usr/lib/courier/courier/courierpop3login"
POP3D = "/usr/lib/courier/courier/courierpop3d"
#: imapd/pop3d (libgamin) spawn this file-alteration monitor on first use; it
#: detaches and would otherwise linger ~30 s after the harness stops.
GAM_SERVER = "/usr/libexec/gam_server"
AUTHPIPE_LIB = "/usr/lib/courier-authlib/libauthpipe.so"
AUTHMYSQL_LIB = "/usr/lib/courier-authlib/libauthmysql.so"

#: The environment authdaemond (and so authProg) gets: as bare as under init.
BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
