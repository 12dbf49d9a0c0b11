SELECT 'record' AS kind, r.idempotency_key AS id, NULL::uuid AS offline_session_id,
  NULL::varchar AS status, NULL::int4 AS option_count, NULL::int4 AS correct_index,
  NULL::int4 AS year_id, NULL::int4 AS block_id, NULL::int4 AS theme_id,
  r.payload_hash, r.attempt_id, r.session_id
FROM unnest($2::uuid[]) AS k(key) CROSS JOIN LATERAL
  (SELECT * FROM idempotency_records i
   WHERE i.user_id = $1 AND i.idempotency_key = k.key
   LIMIT 1) AS r
UNION ALL
SELECT 'session', s.id, s.offline_session_id, s.status, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL
FROM (
  SELECT id, offline_session_id, status FROM test_sessions
  WHERE id = ANY($3) AND user_id = $1
  UNION
  SELECT t.id, t.offline_session_id, t.status
  FROM unnest($4::uuid[]) AS o(offline) CROSS JOIN LATERAL
    (SELECT * FROM test_sessions x
     WHERE x.user_id = $1 AND x.offline_session_id = o.offline
     LIMIT 1) AS t
) AS s
UNION ALL
SELECT 'question', q.id, NULL, q.status,
  -- What `questions::options_of` reads: an array of strings, else no options.
  CASE WHEN jsonb_typeof(q.options) IS DISTINCT FROM 'array' THEN 0
       WHEN jsonb_path_exists(q.options, 'strict $[*] ? (@.type() != "string")') THEN 0
       ELSE jsonb_array_length(q.options) END,
  q.correct_index,
  q.year_id, q.block_id, q.theme_id, NULL, NULL, NULL
FROM questions q
WHERE q.id = ANY($5)
