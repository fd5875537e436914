"""Local mirrors of the upstream image archives: a generated sample mirror for the offline demo and tests, and a
loopback HTTP file server (with fault injection) that serves one."""
