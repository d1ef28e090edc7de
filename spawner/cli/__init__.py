"""The ``teachlab`` command (argparse only): ``course``, ``image`` and ``gpu`` commands over the library."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
