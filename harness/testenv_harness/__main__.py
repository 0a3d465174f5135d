"""`python -m testenv_harness`: the `testenv` command, where its script is not on PATH."""

from testenv_harness.frontends.cli import main

raise SystemExit(main())
