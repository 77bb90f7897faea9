"""A booted Debian 12 under systemd-nspawn (``nspawn``) and SMTP load against it
(``mailload``), for the system tests."""
