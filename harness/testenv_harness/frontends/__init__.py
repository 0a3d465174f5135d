"""How users meet the harness: the pytest plugin, the `testenv` command, reused environments
and their holder, and the exported variables.

May import: ground, services, tunnel, dataplane, worker, provision, run
"""
