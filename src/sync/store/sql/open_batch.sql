WITH seen AS MATERIALIZED (
  SELECT change_seq FROM users WHERE id = $1
), bumped AS (
  UPDATE users SET change_seq = change_seq + 1 WHERE id = $1 RETURNING change_seq
), new_sessions AS MATERIALIZED (
  SELECT * FROM unnest($3::uuid[], $4::uuid[], $5::int4[], $6::int4[], $7::int4[])
    AS u(i, o, y, b, t)
), created AS (
  INSERT INTO test_sessions (id, user_id, offline_session_id, mode, status,
    year, block_id, theme_id, total_questions, answered_count, correct_count,
    started_at, updated_at, change_seq)
  SELECT n.i, $1, n.o, 'TUTOR', 'ACTIVE', n.y, NULLIF(n.b, -2147483648),
    NULLIF(n.t, -2147483648), 0, 0, 0, $2, $2, b.change_seq
  FROM new_sessions n CROSS JOIN bumped b
  ORDER BY n.o
  ON CONFLICT (user_id, offline_session_id)
  DO UPDATE SET updated_at = test_sessions.updated_at
  RETURNING id, offline_session_id, status, xmax = 0 AS inserted
), claimed AS (
  INSERT INTO idempotency_records
    (user_id, idempotency_key, payload_hash, attempt_id, session_id, created_at)
  SELECT $1, u.k, encode(u.h, 'hex'), u.a, COALESCE(c.id, u.s), $2
  FROM unnest($8::uuid[], $9::bytea[], $10::uuid[], $11::uuid[]) AS u(k, h, a, s)
  LEFT JOIN new_sessions n ON n.i = u.s
  LEFT JOIN created c ON c.offline_session_id = n.o
  WHERE EXISTS (SELECT 1 FROM bumped) AND (n.i IS NULL OR c.id IS NOT NULL)
  ORDER BY u.k
  ON CONFLICT (user_id, idempotency_key) DO NOTHING
  RETURNING idempotency_key, session_id
), locked AS (
  SELECT l.id, l.status
  FROM (SELECT DISTINCT session_id FROM claimed ORDER BY session_id) AS c
  CROSS JOIN LATERAL
    (SELECT t.id, t.status FROM test_sessions t WHERE t.id = c.session_id FOR UPDATE) AS l
), answers AS (
  SELECT a.id, a.session_id, a.question_id, a.attempt_id, a.selected_option_index,
    a.is_correct, a.answered_at, a.changed_count
  FROM (SELECT DISTINCT c.session_id, u.q
        FROM claimed c JOIN unnest($8::uuid[], $12::uuid[]) AS u(k, q)
          ON u.k = c.idempotency_key
        -- A session this statement inserted has no answers yet: no probe for it.
        WHERE NOT EXISTS (SELECT 1 FROM created n WHERE n.inserted AND n.id = c.session_id)
       ) AS p
  CROSS JOIN LATERAL
    (SELECT * FROM session_answers x
     WHERE x.session_id = p.session_id AND x.question_id = p.q
     LIMIT 1) AS a
)
SELECT 'seq' AS kind, NULL::uuid AS id, NULL::uuid AS offline_session_id,
  NULL::varchar AS status, b.change_seq AS seq, b.change_seq = s.change_seq + 1 AS fresh,
  NULL::uuid AS session_id, NULL::uuid AS question_id, NULL::uuid AS attempt_id,
  NULL::int4 AS selected_option_index, NULL::bool AS is_correct,
  NULL::timestamptz AS answered_at, NULL::int4 AS changed_count
FROM bumped b CROSS JOIN seen s
UNION ALL
SELECT 'created', c.id, c.offline_session_id, c.status, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL
FROM created c
UNION ALL
SELECT 'claim', c.idempotency_key, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL
FROM claimed c
UNION ALL
SELECT 'lock', l.id, NULL, l.status, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM locked l
UNION ALL
SELECT 'answer', a.id, NULL, NULL, NULL, NULL, a.session_id, a.question_id, a.attempt_id,
  a.selected_option_index, a.is_correct, a.answered_at, a.changed_count
FROM answers a
