"""A demonstration federation: realistic people and training records, made by ``flask demo``."""
