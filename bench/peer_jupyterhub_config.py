# Copied unchanged from ../shared/bench-peer/jupyterhub_config.py (the frozen baseline); bench/class_start.py runs it.
# The baseline Teachlab's spawn benchmarks compare against: plain JupyterHub + DockerSpawner, configured
# the way a department would set it up by hand, on the SAME course image. Use it unchanged; pass the
# settings below through the environment. Measured with it (2 cores, 1,056 spawns, 0 failures): 50
# concurrent first starts p50 71.3 s (Teachlab 83.8 s), warm 69.2 s (Teachlab 69.2 s), idle server 113 MiB.
#   PEER_NETWORK   an existing Docker bridge network for the peer's containers (default peer-bench-net)
#   PEER_IMAGE     the course image (e.g. teachlab/course-intro-python:v1)
#   PEER_CMD       the single-user command inside it (e.g. /opt/jupyter/bin/jupyterhub-singleuser)
#   PEER_CHP       path of configurable-http-proxy
#   PEER_TOKEN_FILE  file holding the admin API token the benchmark uses
# Ports: proxy 127.0.0.1:8010, proxy API 127.0.0.1:8011, hub on the network gateway :8091. State beside
# this file's copy (copy it into a scratch folder first).
import os

import docker

c = get_config()  # noqa: F821
HERE = os.path.dirname(os.path.abspath(__file__))
NET = os.environ.get("PEER_NETWORK", "peer-bench-net")
GW = docker.from_env().networks.get(NET).attrs["IPAM"]["Config"][0]["Gateway"]

c.JupyterHub.bind_url = "http://127.0.0.1:8010"
c.JupyterHub.hub_ip = GW
c.JupyterHub.hub_port = 8091
c.JupyterHub.hub_connect_ip = GW
c.JupyterHub.db_url = f"sqlite:///{HERE}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{HERE}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = f"{HERE}/jupyterhub.pid"
c.ConfigurableHTTPProxy.command = [os.environ.get("PEER_CHP", "configurable-http-proxy")]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:8011"
c.ConfigurableHTTPProxy.pid_file = f"{HERE}/proxy.pid"

c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = os.environ.get("PEER_PASSWORD", "peer-pass")
c.Authenticator.allow_all = True

ADMIN_TOKEN = open(os.environ.get("PEER_TOKEN_FILE", f"{HERE}/admin_token")).read().strip()
c.JupyterHub.services = [{"name": "peer-admin", "api_token": ADMIN_TOKEN}]
c.JupyterHub.load_roles = [{"name": "admin", "services": ["peer-admin"]}]

c.JupyterHub.spawner_class = "docker"
c.DockerSpawner.image = os.environ["PEER_IMAGE"]
c.DockerSpawner.cmd = [os.environ.get("PEER_CMD", "jupyterhub-singleuser")]
c.DockerSpawner.extra_create_kwargs = {"user": "1000:1000", "labels": {"org.peerbench": "1"}}
c.DockerSpawner.network_name = NET
c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.name_template = "peer-jupyter-{username}"
c.DockerSpawner.notebook_dir = "/home/jovyan/work"
c.DockerSpawner.volumes = {"peer-home-{username}": "/home/jovyan/work"}
c.DockerSpawner.remove = True
c.DockerSpawner.pull_policy = "never"
c.DockerSpawner.mem_limit = "1G"
c.DockerSpawner.cpu_limit = 1.0
c.Spawner.start_timeout = 300
c.Spawner.http_timeout = 300
c.JupyterHub.log_level = "INFO"
