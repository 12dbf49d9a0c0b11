SELECT id, session_id, question_id, attempt_id, selected_option_index, is_correct,
  answered_at, changed_count
FROM session_answers
WHERE session_id = ANY($1) AND question_id = ANY($2)
