"""The ground floor: what every wing may use, with nothing of ours below it.

Errors, waiting with a deadline, child processes tied to the run, local ports and their
reservations, files (the cache root, one lock helper, one atomic write) and the Kubernetes API
client with its identity and rights checks.

May import: (nothing of testenv_harness)
"""
