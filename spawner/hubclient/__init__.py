"""JupyterHub's REST API as the lab's hub-managed services call it (the SSH gateway, the class pre-warm), each
with its own service token and least scopes."""

from .api import HubApi, HubRefused, ProgressEvent

__all__ = ["HubApi", "HubRefused", "ProgressEvent"]
