"""What each node that runs student servers enforces in its kernel: the egress policy of the students'
network (``firewall``) and size-limited work volumes (``disks``). The hub applies both on its own node
today; a node agent runs the same code on every node of a cluster."""
