WITH answered AS (
  INSERT INTO session_answers (id, session_id, question_id, attempt_id,
    selected_option_index, is_correct, answered_at, changed_count, created_at, updated_at,
    user_id, change_seq)
  SELECT i, s, q, a, o, ok, t, c, $1, $1, $10, $11
  FROM unnest($2::uuid[], $3::uuid[], $4::uuid[], $5::uuid[], $6::int4[],
    $7::bool[], $8::timestamptz[], $9::int4[]) AS u(i, s, q, a, o, ok, t, c)
  ON CONFLICT (session_id, question_id) DO UPDATE SET
    attempt_id = excluded.attempt_id,
    selected_option_index = excluded.selected_option_index,
    is_correct = excluded.is_correct, answered_at = excluded.answered_at,
    changed_count = excluded.changed_count, updated_at = excluded.updated_at,
    change_seq = excluded.change_seq
)
UPDATE test_sessions AS s SET answered_count = s.answered_count + d.a,
  total_questions = s.total_questions + d.a,
  correct_count = s.correct_count + d.c, updated_at = $1, change_seq = $11
FROM unnest($12::uuid[], $13::int4[], $14::int4[]) AS d(id, a, c)
WHERE s.id = d.id AND s.id = ANY($12)
