"""Schemathesis checks of examsync's own contract (docs/api.md sections 5 and 6).

Schemathesis' built-in GraphQL checks count every `errors` entry as a failure; the API reference asks for
errors with Apollo's `extensions.code` instead (FORBIDDEN, NOT_FOUND, BAD_USER_INPUT, ...).
So for GraphQL we check what the contract promises: never an HTTP 5xx, every error carries
one of the documented codes, and no error message carries SQL or driver text.
"""
import re

import schemathesis

GRAPHQL_CODES = {
    "UNAUTHENTICATED", "FORBIDDEN", "BAD_USER_INPUT", "GRAPHQL_VALIDATION_FAILED",
    "GRAPHQL_PARSE_FAILED", "PERSISTED_QUERY_NOT_FOUND", "NOT_FOUND", "UNAVAILABLE",
    "RATE_LIMITED", "PERSISTED_QUERY_NOT_IN_LIST", "QUERY_NOT_IN_SAFELIST",
    "UNSUPPORTED_MEDIA_TYPE", "NOT_ACCEPTABLE",
}
SQL_TEXT = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b.*\b(FROM|INTO|SET)\b|sqlx|SQLSTATE|constraint", re.I)


@schemathesis.check
def examsync_contract(ctx, response, case):
    if response.status_code >= 500:
        raise AssertionError(f"HTTP {response.status_code}")
    # Media objects and bundles are bytes, not JSON.
    is_json = "json" in (response.headers.get("content-type") or [""])[0]
    body = response.json() if response.content and is_json else {}
    if isinstance(body, dict):
        for error in body.get("errors") or []:
            code = (error.get("extensions") or {}).get("code")
            if code not in GRAPHQL_CODES:
                raise AssertionError(f"error without a documented extensions.code: {error}")
            if SQL_TEXT.search(error.get("message", "")):
                raise AssertionError(f"SQL text in an error message: {error}")
        message = body.get("message")
        if isinstance(message, str) and SQL_TEXT.search(message):
            raise AssertionError(f"SQL text in an error message: {message}")


@schemathesis.hook
def map_query(ctx, query):
    # A pull cursor is valid only as the server gave it out, so any made-up `since` is a
    # `400 VALIDATION_ERROR` by contract and no generator can produce a valid one: generated
    # values are dropped (the feed's own tests walk real cursors, and bad_cursors_and_limits
    # covers malformed ones).
    operation = getattr(ctx, "operation", None)
    if isinstance(query, dict) and operation is not None and operation.path == "/api/v1/sync/changes":
        query.pop("since", None)
    return query
