"""``python -m agentd.cli``."""

from agentd.cli import main

main()
