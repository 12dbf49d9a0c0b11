SELECT r.idempotency_key, r.payload_hash, r.attempt_id, r.session_id
FROM unnest($2::uuid[]) AS k(key) CROSS JOIN LATERAL
  (SELECT * FROM idempotency_records i
   WHERE i.user_id = $1 AND i.idempotency_key = k.key
   LIMIT 1) AS r
