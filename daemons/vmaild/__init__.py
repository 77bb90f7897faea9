"""vmaild: Postfix and Courier lookups and logins from MySQL/MariaDB, cached and monitored."""

__version__ = "0.1.0"
