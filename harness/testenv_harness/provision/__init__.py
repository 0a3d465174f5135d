"""Making clusters and what they run: the cluster providers (local, kind, existing), the Go
toolchain that builds the Kubernetes binaries, the offline image builds and their recipes, and
the operator as a local process.

May import: ground, services, dataplane
"""
