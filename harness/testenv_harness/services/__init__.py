"""The service types as the harness knows them: one descriptor per type, with what a worker
needs to talk to it (its ping, its reset) and what the local cluster runs for it.

May import: ground
"""
