#!/bin/sh
# PID 1's child in a Docker-in-Docker node: make mounts shared (the node agent's loop mounts must reach
# dockerd), create loop device nodes (the outer engine gives the node only their cgroup permission), then
# run dockerd in the foreground.
set -eu
mount --make-rshared /
[ -e /dev/loop-control ] || mknod -m 660 /dev/loop-control c 10 237
i=0
while [ "$i" -lt 256 ]; do
    [ -e "/dev/loop$i" ] || mknod -m 660 "/dev/loop$i" b 7 "$i"
    i=$((i + 1))
done
exec dockerd --host unix:///var/run/docker.sock
