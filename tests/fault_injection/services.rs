//! The processes the suite runs for itself, each behind a guard that stops it on drop (also
//! when the test panics): a private PostgreSQL cluster (initdb/pg_ctl in a temp dir), a
//! private `redis-server`, and `examsync serve` instances (the real binary).
use std::{
    fs::OpenOptions,
    io::Write,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Where the external programs are, and whether PostgreSQL tools must run as `postgres`.
#[derive(Clone, Debug)]
pub struct Tools {
    pub initdb: PathBuf,
    pub pg_ctl: PathBuf,
    pub redis_server: PathBuf,
    /// Set when we are root (initdb refuses root): (uid, gid) of `postgres`.
    pub postgres_user: Option<(u32, u32)>,
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `initdb` and `pg_ctl`: `EXAMSYNC_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`,
/// else `PATH`.
fn postgres_bin() -> Option<(PathBuf, PathBuf)> {
    let pair = |dir: &Path| {
        let (initdb, pg_ctl) = (dir.join("initdb"), dir.join("pg_ctl"));
        (initdb.is_file() && pg_ctl.is_file()).then_some((initdb, pg_ctl))
    };
    if let Some(dir) = std::env::var_os("EXAMSYNC_PG_BIN") {
        return pair(Path::new(&dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    if let Some(found) = versions.iter().rev().find_map(|(_, dir)| pair(dir)) {
        return Some(found);
    }
    Some((on_path("initdb")?, on_path("pg_ctl")?))
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

impl Tools {
    /// Finds every tool, or says which one is missing.
    pub fn find() -> Result<Tools, String> {
        let (initdb, pg_ctl) = postgres_bin()
            .ok_or("PostgreSQL server binaries (initdb, pg_ctl) not found (set EXAMSYNC_PG_BIN)")?;
        let redis_server = on_path("redis-server").ok_or("redis-server not found on PATH")?;
        let uid = command_output("id", &["-u"]).ok_or("`id -u` failed")?;
        let postgres_user = if uid == "0" {
            if on_path("runuser").is_none() {
                return Err("running as root but `runuser` is not available".into());
            }
            let uid = command_output("id", &["-u", "postgres"])
                .and_then(|s| s.parse().ok())
                .ok_or("running as root but there is no `postgres` user for initdb")?;
            let gid = command_output("id", &["-g", "postgres"])
                .and_then(|s| s.parse().ok())
                .ok_or("no group of the `postgres` user")?;
            Some((uid, gid))
        } else {
            None
        };
        Ok(Tools {
            initdb,
            pg_ctl,
            redis_server,
            postgres_user,
        })
    }

    /// A command for a PostgreSQL tool, run as `postgres` when we are root.
    fn pg_command(&self, program: &Path, args: &[&str]) -> Command {
        let mut command = match self.postgres_user {
            Some(_) => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        command.args(args).stdin(Stdio::null());
        command
    }
}

fn check(output: std::io::Result<std::process::Output>, what: &str) -> Result<(), String> {
    let output = output.map_err(|e| format!("{what}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

// ---------------------------------------------------------------------------------------

/// A private PostgreSQL cluster in a temp dir; stopped (immediate) and removed on drop.
pub struct PgCluster {
    tools: Tools,
    data: PathBuf,
    log: PathBuf,
    pub port: u16,
    running: bool,
    // Last: removed after the server has stopped.
    dir: tempfile::TempDir,
}

impl PgCluster {
    /// initdb + configuration + start.
    pub async fn start(tools: &Tools) -> Result<PgCluster, String> {
        // As root the cluster is run by `postgres`, who must be able to reach the directory:
        // /tmp rather than a $TMPDIR that may sit in root's home.
        let mut builder = tempfile::Builder::new();
        builder.prefix("examsync-fault-pg-");
        let dir = match tools.postgres_user {
            Some(_) => builder.tempdir_in("/tmp"),
            None => builder.tempdir(),
        }
        .map_err(|e| format!("temp dir: {e}"))?;
        if let Some((uid, gid)) = tools.postgres_user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(|e| format!("chown the cluster dir to postgres: {e}"))?;
        }
        let data = dir.path().join("data");
        let port = free_port();
        let mut cluster = PgCluster {
            tools: tools.clone(),
            log: dir.path().join("postgres.log"),
            data,
            port,
            running: false,
            dir,
        };
        let data = cluster.data.to_string_lossy().into_owned();
        let initdb = cluster
            .tools
            .pg_command(
                &cluster.tools.initdb,
                &[
                    "-D",
                    &data,
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
            )
            .output();
        check(initdb, "initdb")?;
        // The cluster only listens on 127.0.0.1:<port> and its own socket dir, so it never
        // meets the shared server on 5432. fsync is off: the suite stops PostgreSQL cleanly
        // (fast shutdown), it never crashes it, so durability on disk is not what is tested.
        let mut conf = OpenOptions::new()
            .append(true)
            .open(cluster.data.join("postgresql.conf"))
            .map_err(|e| format!("postgresql.conf: {e}"))?;
        writeln!(
            conf,
            "\n# examsync fault-injection suite\nport = {port}\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\nmax_connections = 100\nfsync = off\n\
             full_page_writes = off\nlogging_collector = off\n",
            cluster.dir.path().display()
        )
        .map_err(|e| format!("postgresql.conf: {e}"))?;
        // The port was free a moment ago; if someone took it since, try another one (a
        // later `port` line overrides an earlier one).
        let mut tries = 0;
        loop {
            match cluster.pg_start().await {
                Ok(()) => return Ok(cluster),
                Err(e) if tries >= 2 => return Err(e),
                Err(_) => {
                    tries += 1;
                    cluster.port = free_port();
                    writeln!(conf, "port = {}", cluster.port)
                        .map_err(|e| format!("postgresql.conf: {e}"))?;
                }
            }
        }
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// `pg_ctl start -w`.
    pub async fn pg_start(&mut self) -> Result<(), String> {
        let (data, log) = (
            self.data.to_string_lossy().into_owned(),
            self.log.to_string_lossy().into_owned(),
        );
        let command = self.tools.pg_command(
            &self.tools.pg_ctl,
            &["-D", &data, "-l", &log, "-w", "-t", "60", "start"],
        );
        let output = tokio::process::Command::from(command)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await;
        check(output, "pg_ctl start").map_err(|e| format!("{e}\n{}", self.log_tail(20)))?;
        self.running = true;
        Ok(())
    }

    /// `pg_ctl stop -m <mode> -w`.
    pub async fn pg_stop(&mut self, mode: &str) -> Result<(), String> {
        let data = self.data.to_string_lossy().into_owned();
        let command = self.tools.pg_command(
            &self.tools.pg_ctl,
            &["-D", &data, "-m", mode, "-w", "-t", "60", "stop"],
        );
        let output = tokio::process::Command::from(command)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await;
        check(output, "pg_ctl stop")?;
        self.running = false;
        Ok(())
    }

    /// `pg_ctl restart -m <mode> -w`: stop and start in one command, as an operator
    /// applying a setting or a minor upgrade would.
    pub async fn pg_restart(&mut self, mode: &str) -> Result<(), String> {
        let (data, log) = (
            self.data.to_string_lossy().into_owned(),
            self.log.to_string_lossy().into_owned(),
        );
        let command = self.tools.pg_command(
            &self.tools.pg_ctl,
            &[
                "-D", &data, "-l", &log, "-m", mode, "-w", "-t", "60", "restart",
            ],
        );
        let output = tokio::process::Command::from(command)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await;
        check(output, "pg_ctl restart").map_err(|e| format!("{e}\n{}", self.log_tail(20)))?;
        self.running = true;
        Ok(())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// A standby of `primary`: `pg_basebackup` (taken directly from the primary), then
    /// started streaming through `link_port` (a relay in front of the primary) under
    /// `application_name = 'standby'`. Hot standby: it answers read-only queries.
    pub async fn standby_of(
        tools: &Tools,
        primary: &PgCluster,
        link_port: u16,
    ) -> Result<PgCluster, String> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("examsync-fault-standby-");
        let dir = match tools.postgres_user {
            Some(_) => builder.tempdir_in("/tmp"),
            None => builder.tempdir(),
        }
        .map_err(|e| format!("temp dir: {e}"))?;
        if let Some((uid, gid)) = tools.postgres_user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(|e| format!("chown the standby dir to postgres: {e}"))?;
        }
        let data = dir.path().join("data");
        let basebackup = tools
            .initdb
            .parent()
            .map(|bin| bin.join("pg_basebackup"))
            .ok_or("no directory of initdb")?;
        let output = tools
            .pg_command(
                &basebackup,
                &[
                    "-D",
                    &data.to_string_lossy(),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &primary.port.to_string(),
                    "-U",
                    "postgres",
                    "-X",
                    "stream",
                    // An immediate checkpoint: a spread one takes minutes on an idle server.
                    "-c",
                    "fast",
                    "--no-sync",
                ],
            )
            .output();
        check(output, "pg_basebackup")?;
        let port = free_port();
        let mut conf = OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .map_err(|e| format!("postgresql.conf: {e}"))?;
        // Later lines override the primary's copied ones.
        writeln!(
            conf,
            "\n# standby\nport = {port}\nunix_socket_directories = '{}'\nhot_standby = on\n\
             primary_conninfo = 'host=127.0.0.1 port={link_port} user=postgres \
             application_name=standby'\nwal_receiver_status_interval = 1s\n",
            dir.path().display()
        )
        .map_err(|e| format!("postgresql.conf: {e}"))?;
        std::fs::write(data.join("standby.signal"), b"")
            .map_err(|e| format!("standby.signal: {e}"))?;
        if let Some((uid, gid)) = tools.postgres_user {
            std::os::unix::fs::chown(data.join("standby.signal"), Some(uid), Some(gid))
                .map_err(|e| format!("chown standby.signal: {e}"))?;
        }
        let mut standby = PgCluster {
            tools: tools.clone(),
            log: dir.path().join("postgres.log"),
            data,
            port,
            running: false,
            dir,
        };
        standby.pg_start().await?;
        Ok(standby)
    }

    /// `pg_ctl promote -w`: the standby leaves recovery on a new timeline.
    pub async fn promote(&self) -> Result<(), String> {
        let data = self.data.to_string_lossy().into_owned();
        let command = self.tools.pg_command(
            &self.tools.pg_ctl,
            &["-D", &data, "-w", "-t", "60", "promote"],
        );
        let output = tokio::process::Command::from(command)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await;
        check(output, "pg_ctl promote").map_err(|e| format!("{e}\n{}", self.log_tail(20)))
    }

    /// SIGKILL to the postmaster and every process it started, as when its machine dies:
    /// nothing shuts down cleanly, nothing more is sent to the standby.
    pub fn kill_hard(&mut self) -> Result<(), String> {
        let pid_file = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .map_err(|e| format!("postmaster.pid: {e}"))?;
        let postmaster: i32 = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or("no pid in postmaster.pid")?;
        let children = children_of(postmaster);
        let kill = |pid: i32| {
            Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if !kill(postmaster) {
            return Err(format!("kill -KILL {postmaster} (postmaster) failed"));
        }
        // A backend may have exited since it was listed: best effort.
        for child in children {
            kill(child);
        }
        self.running = false;
        Ok(())
    }
}

/// The pids whose parent is `pid` (from /proc).
fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let child: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid …`: comm may hold spaces, so read after the last ')'.
            let ppid: i32 = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let data = self.data.to_string_lossy().into_owned();
            let _ = self
                .tools
                .pg_command(
                    &self.tools.pg_ctl,
                    &["-D", &data, "-m", "immediate", "-w", "-t", "30", "stop"],
                )
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The last `lines` lines of a text file (empty when unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------

/// A private `redis-server` (no persistence: a restart comes back empty); killed on drop.
pub struct RedisServer {
    program: PathBuf,
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start(program: &Path, dir: &Path) -> Result<RedisServer, String> {
        let mut server = RedisServer {
            program: program.to_owned(),
            dir: dir.to_owned(),
            port: free_port(),
            child: None,
        };
        server.restart().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and waits until it answers PING.
    pub async fn restart(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let child = Command::new(&self.program)
                .args([
                    "--port",
                    &self.port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    &self.dir.to_string_lossy(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("redis-server: {e}"))?;
            self.child = Some(child);
            for _ in 0..100 {
                if self.ping().await {
                    return Ok(());
                }
                if let Some(child) = self.child.as_mut()
                    && child.try_wait().ok().flatten().is_some()
                {
                    break; // exited (port still held?): try again
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self.kill();
            if Instant::now() > deadline {
                return Err(format!("redis-server on port {} did not start", self.port));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let connect = tokio::time::timeout(
            Duration::from_millis(500),
            client.get_multiplexed_async_connection(),
        );
        let Ok(Ok(mut conn)) = connect.await else {
            return false;
        };
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok()
    }

    /// SIGKILL: the data set is gone with the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------

/// How to start `examsync serve`.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub binary: PathBuf,
    pub database_url: String,
    /// Empty: no `REDIS_URL` (the in-process cache).
    pub redis_url: String,
    pub redis_prefix: String,
    pub jwt_secret: String,
    /// More settings for this instance (e.g. a low `EXAMSYNC_DB_STATEMENT_TIMEOUT_MS`).
    pub extra_env: Vec<(String, String)>,
}

/// One `examsync serve` process on a fixed port (restarted on the same port); SIGKILLed on
/// drop. Its stderr/stdout go to a log file (appended across restarts).
pub struct ServerProcess {
    config: ServeConfig,
    pub port: u16,
    pub log: PathBuf,
    child: Option<Child>,
}

impl ServerProcess {
    pub async fn start(config: &ServeConfig, log: PathBuf) -> Result<ServerProcess, String> {
        let mut server = ServerProcess {
            config: config.clone(),
            port: free_port(),
            log,
            child: None,
        };
        server.restart().await?;
        Ok(server)
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process (again) and waits for `/readyz` to answer 200.
    pub async fn restart(&mut self) -> Result<(), String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .map_err(|e| format!("log file: {e}"))?;
            let log_err = log.try_clone().map_err(|e| e.to_string())?;
            let mut command = Command::new(&self.config.binary);
            // An empty `redis_url`: the in-process cache.
            if self.config.redis_url.is_empty() {
                command.env_remove("REDIS_URL");
            } else {
                command.env("REDIS_URL", &self.config.redis_url);
            }
            let child = command
                .args(["serve", "--bind", &format!("127.0.0.1:{}", self.port)])
                .env("DATABASE_URL", &self.config.database_url)
                .env("EXAMSYNC_REDIS_PREFIX", &self.config.redis_prefix)
                .env("JWT_SECRET", &self.config.jwt_secret)
                // Faults, not access, are tested here: every student answers every question.
                .env("EXAMSYNC_ACCESS", "open")
                .env_remove("JWT_SECRET_PREVIOUS")
                .env_remove("EXAMSYNC_BIND")
                .env("EXAMSYNC_RATE_LIMIT_PER_MINUTE", "0")
                .env("EXAMSYNC_LOG_FORMAT", "text")
                .env("NO_COLOR", "1")
                .env("RUST_LOG", "warn")
                .envs(self.config.extra_env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .spawn()
                .map_err(|e| format!("examsync serve: {e}"))?;
            self.child = Some(child);
            let url = format!("{}/readyz", self.base());
            loop {
                if let Ok(r) = client.get(&url).send().await
                    && r.status().is_success()
                {
                    return Ok(());
                }
                let exited = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                if exited.is_some() || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self.kill();
            if Instant::now() > deadline {
                return Err(format!(
                    "examsync serve on port {} did not become ready:\n{}",
                    self.port,
                    tail(&self.log, 20)
                ));
            }
            // E.g. the port is not free yet after a SIGKILL: try again shortly.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGKILL (`Child::kill` on Unix), then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
