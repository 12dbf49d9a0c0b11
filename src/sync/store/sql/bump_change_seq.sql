UPDATE users SET change_seq = change_seq + 1 WHERE id = $1 RETURNING change_seq
