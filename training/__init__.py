"""Policies, module versions, reading, acknowledgement, and the training-status rule."""
