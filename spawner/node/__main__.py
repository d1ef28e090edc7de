"""``python -m spawner.node``: the node agent's commands (spawner/node/agent.py)."""

import sys

from .agent import main

sys.exit(main())
