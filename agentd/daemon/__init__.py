"""The daemon: the node (composition root), logs, systemd notify, metrics, built-in sources."""
