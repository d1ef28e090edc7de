"""The demo lab of ``make up`` and the tests' harness: the local login provider, the proxy and the hub as
processes on one machine, with demo accounts. Nothing outside this package imports it; production runs
the hub from ``deploy/`` instead."""
