"""Code that runs inside JupyterHub: the spawner, its pure container spec, the configuration
(``apply``), roles and scopes, the home page, idle limits and the checks of a hub start."""
