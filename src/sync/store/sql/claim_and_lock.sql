WITH claimed AS (
  INSERT INTO idempotency_records
    (user_id, idempotency_key, payload_hash, attempt_id, session_id, created_at)
  SELECT $1, k, encode(h, 'hex'), a, s, $2
  FROM unnest($3::uuid[], $4::bytea[], $5::uuid[], $6::uuid[]) AS u(k, h, a, s)
  ORDER BY k
  ON CONFLICT (user_id, idempotency_key) DO NOTHING
  RETURNING idempotency_key, session_id
)
SELECT 'claim' AS kind, c.idempotency_key AS id, NULL::varchar AS status FROM claimed c
UNION ALL
SELECT 'session', l.id, l.status FROM (
  SELECT t.id, t.status FROM test_sessions t
  WHERE t.id IN (SELECT session_id FROM claimed)
  ORDER BY t.id FOR UPDATE
) AS l
