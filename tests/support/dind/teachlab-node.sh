#!/bin/sh
# PID 1's child in a Docker-in-Docker node: make mounts shared (the node agent's loop mounts must reach
# dockerd), create loop device nodes (the outer engine gives the node only their cgroup permission), then
# run dockerd in the foreground. With TEACHLAB_NODE_ENGINE_TLS set, dockerd also listens on TCP 2376 with
# mutual TLS (the hub's way to a node's engine, docs/scale-out.md): it waits until the test has written the
# node's certificate, which names the node's address (known only once the node runs), and the CA.
set -eu
mount --make-rshared /
[ -e /dev/loop-control ] || mknod -m 660 /dev/loop-control c 10 237
i=0
while [ "$i" -lt 256 ]; do
    [ -e "/dev/loop$i" ] || mknod -m 660 "/dev/loop$i" b 7 "$i"
    i=$((i + 1))
done
TLS=/etc/docker/tls
if [ -n "${TEACHLAB_NODE_ENGINE_TLS:-}" ]; then
    i=0
    while [ ! -s "$TLS/server.key" ] && [ "$i" -lt 1200 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    set -- --tlsverify --tlscacert "$TLS/ca.crt" --tlscert "$TLS/server.crt" --tlskey "$TLS/server.key" \
        --host tcp://0.0.0.0:2376
fi
exec dockerd --host unix:///var/run/docker.sock "$@"
