"""One test run's set-up and tear-down (the SynchronizedBeforeSuite part): cluster, CRD,
operator, port plan, the TestEnvironment, heartbeat; and the run's state on disk.

May import: ground, services, tunnel, dataplane, worker, provision
"""
