"""Courier's authdaemond, imapd and pop3d: ``server`` runs them; ``paths`` (compiled-in
paths), ``files`` (the global files' text), ``procs`` (process lookup, crash recovery) and
``tls`` (the SSL listeners) help it."""
