"""A private Prometheus server and promtool (``server``)."""
