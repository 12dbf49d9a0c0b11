DELETE FROM idempotency_records
WHERE user_id = $1 AND idempotency_key = ANY($2)
