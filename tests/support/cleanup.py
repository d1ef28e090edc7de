"""Removing what a test session or a benchmark made on the engine, by the label it put on everything."""

from __future__ import annotations


def remove_labelled(client, label: str) -> None:
    """Containers, volumes, networks and images carrying ``label`` (``key=value``)."""
    import docker.errors

    filters = {"label": label}
    for container in client.containers.list(all=True, filters=filters):
        container.remove(force=True)
    for volume in client.volumes.list(filters=filters):
        volume.remove(force=True)
    for network in client.networks.list(filters=filters):
        network.remove()
    for image in client.images.list(filters=filters):
        try:
            client.images.remove(image.id, force=True)
        except docker.errors.APIError:  # shared layers of a removed parent
            pass
