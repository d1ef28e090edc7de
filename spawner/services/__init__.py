"""Hub-managed services, each its own process started by JupyterHub: ``gpu`` (teachlab-gpu: GPU holdings,
quotas and usage), ``courses`` (teachlab-courses: instructors' publishing pages), ``warmer`` (teachlab-warmer:
a class's servers started before it meets), each behind the hub's OAuth."""

import signal

from tornado import ioloop

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # JupyterHub sends SIGINT first, then SIGTERM


def run_until_stopped() -> None:
    """Run the service's event loop until the hub stops it. With handlers of its own, a stop is the end of the
    service's work rather than a KeyboardInterrupt traceback in the hub's log, whatever the process inherited (a
    process started from a background shell starts with SIGINT ignored)."""
    loop = ioloop.IOLoop.current()
    for signum in STOP_SIGNALS:
        loop.asyncio_loop.add_signal_handler(signum, loop.stop)
    loop.start()
