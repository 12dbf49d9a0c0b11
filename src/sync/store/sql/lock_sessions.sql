SELECT id, status FROM test_sessions WHERE id = ANY($1) ORDER BY id FOR UPDATE
