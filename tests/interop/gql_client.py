"""Interop check with a third-party GraphQL client (Python `gql`).

The client fetches the schema by introspection, validates the documents below against it
locally (as code generators do), then runs `packages` and `syncAttempts`.
Env: EXAMSYNC_URL, EXAMSYNC_TOKEN, EXAMSYNC_QUESTION_ID. Prints one JSON line; exit 0 on success.
"""
import datetime
import hashlib
import json
import os
import sys
import uuid

from gql import Client, gql
from gql.transport.requests import RequestsHTTPTransport

url = os.environ["EXAMSYNC_URL"] + "/graphql"
token = os.environ["EXAMSYNC_TOKEN"]
question_id = os.environ["EXAMSYNC_QUESTION_ID"]

transport = RequestsHTTPTransport(url=url, headers={"Authorization": f"Bearer {token}"}, retries=0)
client = Client(transport=transport, fetch_schema_from_transport=True)

packages = gql(
    """
    query Packages($filter: PackageFilter) {
      packages(filter: $filter) { id name scope scopeData version versionHash questionCount
        publishedAt downloadPath questions { id questionId options correctIndex } }
    }
    """
)
sync = gql(
    """
    mutation Sync($input: SyncAttemptsInput!) {
      syncAttempts(input: $input) {
        results { clientAttemptId status serverAttemptId serverSessionId errorCode message }
      }
    }
    """
)

with client as session:
    listed = session.execute(packages, variable_values={"filter": {"latest": True}})
    assert client.schema is not None, "schema was not fetched by introspection"
    assert client.schema.get_type("TestPackage") is not None
    assert listed["packages"], listed

    answered_at = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=3)).isoformat()
    # The previous server's (legacy) payload hash, as Python computed it.
    legacy = json.dumps(
        {"answered_at": answered_at, "question_id": question_id, "selected_option_index": 0}, sort_keys=True
    )
    attempt = {
        "clientAttemptId": str(uuid.uuid4()),
        "idempotencyKey": str(uuid.uuid4()),
        "offlineSessionId": str(uuid.uuid4()),
        "questionId": question_id,
        "selectedOptionIndex": 0,
        "answeredAt": answered_at,
        "payloadHash": hashlib.sha256(legacy.encode()).hexdigest(),
    }
    first = session.execute(sync, variable_values={"input": {"attempts": [attempt]}})
    again = session.execute(sync, variable_values={"input": {"attempts": [attempt]}})
    statuses = [first["syncAttempts"]["results"][0]["status"], again["syncAttempts"]["results"][0]["status"]]
    assert statuses == ["ACKED", "DUPLICATE"], (first, again)
    assert first["syncAttempts"]["results"][0]["serverAttemptId"] == again["syncAttempts"]["results"][0]["serverAttemptId"]

print(json.dumps({"ok": True, "packages": len(listed["packages"]), "statuses": statuses}))
