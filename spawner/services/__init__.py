"""Hub-managed services, each its own process started by JupyterHub: ``gpu`` (teachlab-gpu: GPU
holdings, quotas and usage, as a REST API and pages behind the hub's OAuth)."""
