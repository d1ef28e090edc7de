"""``python -m spawner.ssh``: the teachlab-ssh service, as the hub starts it."""

from .service import main

main()
