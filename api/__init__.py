"""The JSON API under /api/v1: token authentication, one error shape, an OpenAPI document."""
