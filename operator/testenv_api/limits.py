"""How many workers an environment may have: the CRD, the operator and the pytest plugin agree."""

from __future__ import annotations

#: Most workers one TestEnvironment may ask for: spec.workers' maximum in the CRD, and the largest
#: TESTENV_MAX_WORKERS an operator accepts.
MAX_WORKERS = 256
#: Most workers an operator allows when TESTENV_MAX_WORKERS is not set.
DEFAULT_MAX_WORKERS = 64
#: Most free workers one TestEnvironmentPool may keep (spec.size's maximum in its CRD).
MAX_POOL_SIZE = 64
