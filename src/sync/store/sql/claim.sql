INSERT INTO idempotency_records
  (user_id, idempotency_key, payload_hash, attempt_id, session_id, created_at)
SELECT $1, k, encode(h, 'hex'), a, s, $2
FROM unnest($3::uuid[], $4::bytea[], $5::uuid[], $6::uuid[]) AS u(k, h, a, s)
ORDER BY k
ON CONFLICT (user_id, idempotency_key) DO NOTHING
RETURNING idempotency_key
