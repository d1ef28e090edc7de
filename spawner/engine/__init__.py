"""Talking to the Docker engine: a checked client and image builds."""

from .client import DockerUnavailable, connect

__all__ = ["DockerUnavailable", "connect"]
