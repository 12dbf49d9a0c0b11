SELECT id, offline_session_id, status FROM test_sessions
WHERE id = ANY($2) AND user_id = $1
UNION
SELECT s.id, s.offline_session_id, s.status
FROM unnest($3::uuid[]) AS o(offline) CROSS JOIN LATERAL
  (SELECT * FROM test_sessions t
   WHERE t.user_id = $1 AND t.offline_session_id = o.offline
   LIMIT 1) AS s
