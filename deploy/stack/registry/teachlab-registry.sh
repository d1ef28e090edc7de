#!/bin/sh
# Start the stack's registry: TLS only, with the certificate and key given at run time (TEACHLAB_REGISTRY_CERTIFICATE,
# TEACHLAB_REGISTRY_KEY: files, Docker secrets in a stack), the images on the volume at /var/lib/docker-registry. The
# key is copied for the registry's own user (a secret is root's), then the server runs as that user.
set -eu
certificate="${TEACHLAB_REGISTRY_CERTIFICATE:?the registry serves TLS only: set TEACHLAB_REGISTRY_CERTIFICATE to its certificate file}"
key="${TEACHLAB_REGISTRY_KEY:?the registry serves TLS only: set TEACHLAB_REGISTRY_KEY to its key file}"
storage=/var/lib/docker-registry
tls=/run/teachlab-registry

install -d -o docker-registry -g docker-registry -m 0750 "$storage"
install -d -o docker-registry -g docker-registry -m 0700 "$tls"
install -o docker-registry -g docker-registry -m 0644 "$certificate" "$tls/certificate.pem"
install -o docker-registry -g docker-registry -m 0600 "$key" "$tls/key.pem"
exec setpriv --reuid=docker-registry --regid=docker-registry --init-groups \
    /usr/bin/docker-registry serve /etc/docker/registry/config.yml
