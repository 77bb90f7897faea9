"""The real ``vmaild serve`` as a subprocess (``server``)."""
