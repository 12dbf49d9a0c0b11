UPDATE test_sessions AS s SET answered_count = s.answered_count + d.a,
  total_questions = s.total_questions + d.a,
  correct_count = s.correct_count + d.c, updated_at = $1, change_seq = $5
FROM unnest($2::uuid[], $3::int4[], $4::int4[]) AS d(id, a, c)
WHERE s.id = d.id AND s.id = ANY($2)
