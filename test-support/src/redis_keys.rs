//! Deleting the keys a test or a benchmark left in a shared Redis.

use std::time::Duration;

/// Deletes every key that starts with `prefix` and returns how many went. It uses `SCAN … MATCH`
/// in steps and `UNLINK`s each step's keys, never one `KEYS`: on a Redis that holds many other
/// keys, `KEYS` blocks the server for the whole keyspace and can outlast the connection's
/// timeout. Memory stays at one step's keys, whatever the count.
pub fn delete_by_prefix(url: &str, prefix: &str) -> Result<usize, String> {
    let client = redis::Client::open(url).map_err(|e| format!("Redis URL: {e}"))?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .map_err(|e| format!("Redis unreachable: {e}"))?;
    let pattern = format!("{prefix}*");
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(10_000)
            .query(&mut conn)
            .map_err(|e| format!("SCAN: {e}"))?;
        if !keys.is_empty() {
            let unlinked: usize = redis::cmd("UNLINK")
                .arg(&keys)
                .query(&mut conn)
                .map_err(|e| format!("UNLINK: {e}"))?;
            deleted += unlinked;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}
