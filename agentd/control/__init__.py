"""Control: fleet commands (roles, checks) and the local socket client."""
