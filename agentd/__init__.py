"""agentd: local AI decisions on edge boxes that operators can trust."""

__version__ = "0.1.0"
