"""Shared plumbing: database, configuration, security helpers, errors, the base template."""
