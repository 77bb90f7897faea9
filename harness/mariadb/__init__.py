"""A private MariaDB server (``server``)."""
