"""The kube-testenv operator: TestEnvironments become isolated per-worker namespaces.

Run it with `python -m testenv_operator`; settings come from TESTENV_* variables (settings.py).
"""
