"""Operations: doctor and backup/restore."""
