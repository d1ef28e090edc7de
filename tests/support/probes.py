"""Connection probes from inside a student's container: which (host, port) targets it can open a TCP connection to.

A blocked target shows as ``timeout`` (the egress policy drops the packet) or an error name; only ``open`` means
the container reached it. Every target is a listener the test itself started.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

PROBE = (
    "import json, socket, sys\n"
    "from concurrent.futures import ThreadPoolExecutor\n"
    "def reach(target):\n"
    "    try:\n"
    "        socket.create_connection(tuple(target), timeout=3).close(); return 'open'\n"
    "    except socket.timeout:\n"
    "        return 'timeout'\n"
    "    except OSError as exc:\n"
    "        return type(exc).__name__\n"
    "targets = json.loads(sys.argv[1])\n"
    "with ThreadPoolExecutor(len(targets) or 1) as pool:\n"
    "    print(json.dumps(dict(zip(targets, pool.map(reach, targets.values())))))\n"
)


def probe_arguments(container: str, targets: Mapping[str, tuple[str, int]]) -> list[str]:
    """``docker`` arguments that run the probe in ``container``; its standard output is the JSON name -> result."""
    return [
        "exec",
        container,
        "sh",
        "-c",
        'exec "$(command -v python3 || command -v python)" -c "$0" "$1"',
        PROBE,
        json.dumps(dict(targets)),
    ]
