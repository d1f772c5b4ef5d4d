"""The OpenAPI 3.1 description of /api/v1. Tests check real responses against it."""

from __future__ import annotations

from typing import Any

from training.status import REASONS

ERROR = {"$ref": "#/components/schemas/Error"}
SLUG = "^[a-z0-9]+(-[a-z0-9]+)*$"


def _error_responses(*codes: int) -> dict[str, Any]:
    text = {
        400: "The request is malformed: invalid JSON, wrong types or unknown fields.",
        401: "No token, or a token that is not valid, was revoked or has expired (code token_expired).",
        403: "The token lacks the scope this operation needs.",
        404: "No such person or policy.",
        405: "The method is not allowed here.",
        413: "The body is too large.",
        415: "The body is not JSON.",
    }
    return {
        str(code): {
            "description": text[code],
            "content": {"application/json": {"schema": ERROR}},
        }
        for code in codes
    }


def document() -> dict[str, Any]:
    timestamp = {"type": ["string", "null"], "format": "date-time"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Countersign API",
            "version": "1.0.0",
            "description": "Is this person trained on a policy? For approval workflows and other "
            'systems. Every error is JSON: {"error": {"code", "message"}}. '
            "A token with the training:read scope sees each person's name, email, roles and "
            "module-by-module status (TrainingStatus). A token with only training:status sees "
            "the person's id and the verdict (StatusOnly): no name, email, roles or modules, "
            "and it names people by id only (an email ref is refused with 400 "
            "email_not_allowed, so it cannot test an address for membership).",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": {
            "/api/v1/people/{ref}/training-status": {
                "get": {
                    "operationId": "getTrainingStatus",
                    "summary": "One person's training status on a policy",
                    "parameters": [
                        {
                            "name": "ref",
                            "in": "path",
                            "required": True,
                            "description": "The person's id, or (training:read tokens only) "
                            "their email address.",
                            "schema": {"type": "string", "minLength": 1, "maxLength": 254},
                        },
                        {
                            "name": "policy",
                            "in": "query",
                            "required": False,
                            "description": "The policy's slug; optional when only one exists.",
                            "schema": {"type": "string", "maxLength": 80, "pattern": SLUG},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The person's status.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "oneOf": [
                                            {"$ref": "#/components/schemas/TrainingStatus"},
                                            {"$ref": "#/components/schemas/StatusOnly"},
                                        ]
                                    }
                                }
                            },
                        },
                        **_error_responses(400, 401, 403, 404),
                    },
                }
            },
            "/api/v1/training-status/check": {
                "post": {
                    "operationId": "checkTrainingStatus",
                    "summary": "Several people at once, answered in the order asked",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/CheckRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Each person's status, or not_found.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/CheckResponse"}
                                }
                            },
                        },
                        **_error_responses(400, 401, 403, 404, 413, 415),
                    },
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token with the training:read scope (names, emails and "
                    "module detail) or training:status (ids and the verdict only).",
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "additionalProperties": False,
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "additionalProperties": False,
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
                "TrainingStatus": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [
                        "person",
                        "policy",
                        "trained",
                        "valid_until",
                        "modules",
                        "missing",
                    ],
                    "properties": {
                        "person": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["id", "name", "email", "roles", "active"],
                            "properties": {
                                "id": {"type": "integer"},
                                "name": {"type": "string"},
                                "email": {"type": "string"},
                                "roles": {
                                    "type": "array",
                                    "items": {
                                        "enum": [
                                            "staff",
                                            "governor",
                                            "volunteer",
                                            "parent",
                                            "slt",
                                            "admin",
                                        ]
                                    },
                                },
                                "active": {"type": "boolean"},
                            },
                        },
                        "policy": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["slug", "version"],
                            "properties": {
                                "slug": {"type": "string"},
                                "version": {"type": "string"},
                            },
                        },
                        "trained": {"type": "boolean"},
                        "valid_until": timestamp,
                        "modules": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["slug", "title", "status", "completed_at"],
                                "properties": {
                                    "slug": {"type": "string"},
                                    "title": {"type": "string"},
                                    "status": {"enum": ["not_started", "in_progress", "completed"]},
                                    "completed_at": timestamp,
                                },
                            },
                        },
                        "missing": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["module", "reason"],
                                "properties": {
                                    "module": {
                                        "type": ["string", "null"],
                                        "description": "null for the policy-wide signature",
                                    },
                                    "reason": {"enum": list(REASONS)},
                                },
                            },
                        },
                    },
                },
                "StatusOnly": {
                    "description": "For a training:status token: no name, email, roles or "
                    "module detail.",
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["person", "policy", "trained", "valid_until"],
                    "properties": {
                        "person": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["id"],
                            "properties": {"id": {"type": "integer"}},
                        },
                        "policy": {"$ref": "#/components/schemas/PolicyRef"},
                        "trained": {"type": "boolean"},
                        "valid_until": timestamp,
                    },
                },
                "PolicyRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["slug", "version"],
                    "properties": {
                        "slug": {"type": "string"},
                        "version": {"type": "string"},
                    },
                },
                "CheckRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["people"],
                    "properties": {
                        "people": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 1000,
                            "items": {
                                "oneOf": [
                                    {"type": "integer", "minimum": 1, "maximum": 2147483647},
                                    {"type": "string", "minLength": 1, "maxLength": 254},
                                ]
                            },
                        },
                        "policy": {"type": "string", "maxLength": 80, "pattern": SLUG},
                    },
                },
                "CheckResponse": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["all_trained", "results"],
                    "properties": {
                        "all_trained": {"type": "boolean"},
                        "results": {
                            "type": "array",
                            "items": {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/TrainingStatus"},
                                    {"$ref": "#/components/schemas/StatusOnly"},
                                    {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["ref", "error"],
                                        "properties": {
                                            "ref": {
                                                "type": ["integer", "string", "null"],
                                                "description": "What was asked (a "
                                                "training:status token asks by id only).",
                                            },
                                            "error": {"const": "not_found"},
                                        },
                                    },
                                ]
                            },
                        },
                    },
                },
            },
        },
    }
