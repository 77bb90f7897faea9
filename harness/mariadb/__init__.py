"""A private MariaDB server (``server``); a primary and GTID replicas (``replication``)."""
