//! Load generation from outside the process for the HTTP benchmarks: `wrk` pinned to one
//! core while the server runs on the other, so the load generator is never what limits a
//! fast route.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

/// Pins every thread of this process (those it starts later inherit it) to `cpu`.
pub fn pin_self(cpu: usize) -> Result<(), String> {
    let status = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("taskset: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("taskset -a -p -c {cpu} failed: {status}"))
    }
}

/// CPU time so far of this process's live threads (`/proc/self/task/*/schedstat`, in
/// nanoseconds): read before and after a load run, the server's share of it.
pub fn process_cpu() -> Duration {
    let nanos: u64 = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One wrk run.
pub struct Wrk<'a> {
    /// The wrk executable.
    pub program: &'a str,
    /// The core wrk is pinned to.
    pub cpu: usize,
    /// Open connections (one wrk thread drives them all).
    pub connections: usize,
    pub seconds: u64,
}

impl Wrk<'_> {
    /// Requests/s of GETs of `url` with `headers` (see [`Wrk::run`]).
    pub fn requests_per_second(&self, url: &str, headers: &[(&str, &str)]) -> Result<f64, String> {
        let stdout = self.run(url, headers)?;
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("no Requests/sec in wrk's output:\n{stdout}"))
    }

    /// Requests/s of GETs that take turns through `requests` (each a path with its query,
    /// sent to `base_url`'s host, and its headers): many clients' requests interleaved, as a
    /// server of many users sees them. The requests are formatted once, before the load, by
    /// a wrk script; each connection sends the next one in turn.
    pub fn requests_per_second_rotating(
        &self,
        base_url: &str,
        requests: &[RotatingRequest],
    ) -> Result<f64, String> {
        let mut script = tempfile::Builder::new()
            .suffix(".lua")
            .tempfile()
            .map_err(|e| format!("wrk script: {e}"))?;
        std::io::Write::write_all(&mut script, rotating_script(requests).as_bytes())
            .map_err(|e| format!("wrk script: {e}"))?;
        let stdout = self.run_command(base_url, &[], Some(script.path()))?;
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("no Requests/sec in wrk's output:\n{stdout}"))
    }

    /// wrk's report (with `--latency`) of GETs of `url` with `headers`. Fails if wrk fails
    /// or counts any non-2xx/3xx response or socket error.
    pub fn run(&self, url: &str, headers: &[(&str, &str)]) -> Result<String, String> {
        self.run_command(url, headers, None)
    }

    fn run_command(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        script: Option<&std::path::Path>,
    ) -> Result<String, String> {
        let mut command = Command::new("taskset");
        command
            .args(["-c", &self.cpu.to_string(), self.program, "-t1"])
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{}s", self.seconds))
            .arg("--latency");
        for (name, value) in headers {
            command.args(["-H", &format!("{name}: {value}")]);
        }
        if let Some(script) = script {
            command.arg("-s").arg(script);
        }
        let output = command
            .arg(url)
            .output()
            .map_err(|e| format!("{}: {e}", self.program))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            return Err(format!(
                "wrk failed ({}): {stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        if let Some(line) = stdout
            .lines()
            .find(|l| l.contains("Non-2xx or 3xx") || l.contains("Socket errors"))
        {
            return Err(format!("wrk reports `{}`:\n{stdout}", line.trim()));
        }
        Ok(stdout)
    }
}

/// One GET of [`Wrk::requests_per_second_rotating`].
#[derive(Clone, Debug)]
pub struct RotatingRequest {
    /// The path and query, as sent on the request line.
    pub path: String,
    pub headers: Vec<(String, String)>,
}

/// A wrk script that formats `requests` once per thread and sends them in turn.
fn rotating_script(requests: &[RotatingRequest]) -> String {
    let mut specs = String::new();
    for request in requests {
        let headers: Vec<String> = request
            .headers
            .iter()
            .map(|(name, value)| format!("[{}] = {}", lua_string(name), lua_string(value)))
            .collect();
        specs.push_str(&format!(
            "  {{ {}, {{ {} }} }},\n",
            lua_string(&request.path),
            headers.join(", ")
        ));
    }
    format!(
        "local specs = {{\n{specs}}}\n\
         local requests = {{}}\n\
         local turn = 0\n\
         function init(args)\n\
         \x20 for i, spec in ipairs(specs) do requests[i] = wrk.format(\"GET\", spec[1], spec[2]) end\n\
         end\n\
         function request()\n\
         \x20 turn = turn % #requests + 1\n\
         \x20 return requests[turn]\n\
         end\n"
    )
}

/// `value` as a Lua string literal.
fn lua_string(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::{RotatingRequest, lua_string, rotating_script};

    #[test]
    fn lua_strings_escape_what_lua_would_read_otherwise() {
        assert_eq!(lua_string("plain-cursor_1"), r#""plain-cursor_1""#);
        assert_eq!(lua_string(r#"W/"abc""#), r#""W/\"abc\"""#);
        assert_eq!(lua_string("a\\b\nc\r"), r#""a\\b\nc\r""#);
    }

    #[test]
    fn the_script_sends_each_request_in_turn() {
        let script = rotating_script(&[
            RotatingRequest {
                path: "/a?since=x".into(),
                headers: vec![("Authorization".into(), "Bearer t1".into())],
            },
            RotatingRequest {
                path: "/b".into(),
                headers: vec![("If-None-Match".into(), r#"W/"h""#.into())],
            },
        ]);
        assert!(script.contains(r#"{ "/a?since=x", { ["Authorization"] = "Bearer t1" } },"#));
        assert!(script.contains(r#"{ "/b", { ["If-None-Match"] = "W/\"h\"" } },"#));
        assert!(script.contains("turn = turn % #requests + 1"));
        assert!(script.contains("function init(args)"));
    }
}
