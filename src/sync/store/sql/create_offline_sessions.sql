INSERT INTO test_sessions (id, user_id, offline_session_id, mode, status,
  year, block_id, theme_id, total_questions, answered_count, correct_count,
  started_at, updated_at, change_seq)
SELECT i, $1, o, 'TUTOR', 'ACTIVE', y, NULLIF(b, -2147483648),
  NULLIF(t, -2147483648), 0, 0, 0, $2, $2, $8
FROM unnest($3::uuid[], $4::uuid[], $5::int4[], $6::int4[], $7::int4[])
  AS u(i, o, y, b, t)
ORDER BY o
ON CONFLICT (user_id, offline_session_id)
DO UPDATE SET updated_at = test_sessions.updated_at
RETURNING id, offline_session_id, status
