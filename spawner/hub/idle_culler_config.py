# Configuration file of the jupyterhub-idle-culler service started by the hub (see jupyterhub_config.py).
import os
from pathlib import Path

from spawner.hub.idle import course_idle_arbiter

c.IdleCuller.cull_arbiter_hook = course_idle_arbiter(Path(os.environ["TEACHLAB_CATALOG"]))  # noqa: F821
