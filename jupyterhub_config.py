# Teachlab's JupyterHub configuration: read the deployment settings (TEACHLAB_* variables, see
# docs/configuration.md), apply them (spawner/hub/config.py), then a site's own overrides, read last and
# in name order (jupyterhub_config.d/*.py beside this file, or TEACHLAB_SITE_CONFIG_DIR), as The Littlest
# JupyterHub does.
from spawner.hub.config import apply, settings_or_stop, site_config_files

c = get_config()  # noqa: F821
settings = settings_or_stop()
apply(settings, c)

for site_file in site_config_files(settings, __file__):
    load_subconfig(str(site_file))  # noqa: F821
