#!/bin/sh
# configurable-http-proxy reads its API token only from CONFIGPROXY_AUTH_TOKEN: read it from the Docker
# secret into this process's environment (never the container's configuration), then drop root.
set -eu
CONFIGPROXY_AUTH_TOKEN="$(cat "${TEACHLAB_PROXY_TOKEN_FILE:?the proxy token secret is missing}")"
export CONFIGPROXY_AUTH_TOKEN
exec setpriv --reuid=nobody --regid=nogroup --clear-groups configurable-http-proxy "$@"
