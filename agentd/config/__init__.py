"""Configuration: the schema (frozen pydantic models), the loader, the YAML reader."""
