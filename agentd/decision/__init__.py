"""Decisions: validation, policy, rules, the fleet read model, the engine, shadows (no SQL, no topics)."""
