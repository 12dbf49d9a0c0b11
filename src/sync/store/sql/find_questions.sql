SELECT id, options, correct_index, year_id, block_id, theme_id, status
FROM questions
WHERE id = ANY($1)
