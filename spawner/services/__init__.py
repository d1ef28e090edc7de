"""Hub-managed services, each its own process started by JupyterHub: ``gpu`` (teachlab-gpu: GPU holdings,
quotas and usage), ``courses`` (teachlab-courses: instructors' publishing pages), ``warmer`` (teachlab-warmer:
a class's servers started before it meets), each behind the hub's OAuth."""

from tornado import ioloop


def run_until_stopped() -> None:
    """Run the service's event loop until the hub stops it: the hub stops its managed services with SIGINT, which
    is the end of the service's work, not an error to print a traceback for."""
    try:
        ioloop.IOLoop.current().start()
    except KeyboardInterrupt:
        pass
