WITH released AS (
  DELETE FROM idempotency_records
  WHERE ctid = ANY(ARRAY(
    SELECT r.ctid FROM unnest($12::uuid[]) AS k(key) CROSS JOIN LATERAL
      (SELECT i.ctid FROM idempotency_records i
       WHERE i.user_id = $1 AND i.idempotency_key = k.key LIMIT 1) AS r))
), counted AS (
  UPDATE users SET acked_count = acked_count + $11,
    last_sync_at = CASE WHEN last_sync_at IS NULL OR last_sync_at < $3 THEN $3
                   ELSE last_sync_at END
  WHERE id = $1 AND $11 > 0
), answered AS (
  INSERT INTO session_answers (id, session_id, question_id, attempt_id,
    selected_option_index, is_correct, answered_at, changed_count, created_at, updated_at,
    user_id, change_seq)
  SELECT i, s, q, a, o, ok, t, c, $3, $3, $1, $24
  FROM unnest($16::uuid[], $17::uuid[], $18::uuid[], $19::uuid[], $20::int4[],
    $21::bool[], $22::timestamptz[], $23::int4[]) AS u(i, s, q, a, o, ok, t, c)
  ON CONFLICT (session_id, question_id) DO UPDATE SET
    attempt_id = excluded.attempt_id,
    selected_option_index = excluded.selected_option_index,
    is_correct = excluded.is_correct, answered_at = excluded.answered_at,
    changed_count = excluded.changed_count, updated_at = excluded.updated_at,
    change_seq = excluded.change_seq
), scored AS (
  UPDATE test_sessions AS s SET answered_count = s.answered_count + d.a,
    total_questions = s.total_questions + d.a,
    correct_count = s.correct_count + d.c, updated_at = $3, change_seq = $24
  FROM unnest($25::uuid[], $26::int4[], $27::int4[]) AS d(id, a, c)
  WHERE s.id = d.id AND s.id = ANY($25)
)
INSERT INTO attempts (id, user_id, session_id, question_id, package_id,
  client_attempt_id, idempotency_key, payload_hash, selected_option_index,
  is_correct, answered_at, answered_at_raw, clock_skew_ms, received_at)
SELECT u.a, $1, u.s, u.q,
  NULLIF(u.p, '00000000-0000-0000-0000-000000000000'::uuid), u.c, u.k,
  encode(u.h, 'hex'), u.o, u.ok, u.raw::timestamptz, u.raw, $2, $3
FROM unnest($4::uuid[], $5::uuid[], $6::uuid[], $7::uuid[], $8::int4[],
  $9::bool[], $10::text[], $13::uuid[], $14::uuid[], $15::bytea[])
  AS u(k, q, p, c, o, ok, raw, a, s, h)
