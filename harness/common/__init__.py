"""What every harness component uses: ports, waits, processes, the service context manager,
guarded system files, certificates, Maildirs, scratch directories."""
