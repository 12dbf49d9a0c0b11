//! Media benchmark (docs/benchmarks.md, "## Media").
//!
//! ```text
//! cargo build --release --bin examsync --example bench_media
//! BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test target/release/examples/bench_media
//! ```
//!
//! What it does:
//! 1. draws `BENCH_IMAGES` (1,000) different PNGs of about 300 kB (random pixels, stored
//!    deflate blocks) into a temporary directory; opens a fresh database (a new PostgreSQL
//!    database next to `BENCH_DATABASE_URL`, dropped at the end; without it a temporary
//!    SQLite file);
//! 2. runs the CLI `examsync media import DIR` twice and times both (the second finds every
//!    object present);
//! 3. imports `BENCH_BUNDLES` (16) × 200 questions, one image each, and builds one published
//!    THEME package per 200 (windows of the images shifted by 50: different bundles of about
//!    60 MB);
//! 4. starts `examsync serve` (the binary next to this one, or `BENCH_EXAMSYNC_BIN`) and a
//!    bare axum server (this executable with `--bare DIR`) that serves, from memory, the
//!    status, headers and bytes captured from examsync: the object, its `304`, and the
//!    bundle of the first package. Both are child processes pinned with `taskset` to core
//!    0; this process and the load generator `wrk` run on core 1 (`BENCH_PIN=0`: no
//!    pinning). The first bundle request is timed before anything else asked for it (cold);
//! 5. each of `BENCH_ROUNDS` (3) rounds runs, bare first then examsync, `wrk` for
//!    `BENCH_SECONDS` (10) per scenario: `GET` of the object (`BENCH_CONNECTIONS`, 16
//!    connections), the same with `If-None-Match` (`304`), the bundle (4 connections); then
//!    16 clients each download a different bundle for `BENCH_SECONDS` while the server's
//!    RSS is sampled every 50 ms;
//! 6. prints the median of the rounds and examsync's share of bare, ratios taken within
//!    each round.
//!
//! Every `wrk` run must see no errors and no non-2xx/3xx answers, or the benchmark fails.
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::Response,
    routing::get,
};
use bytes::Bytes;
use examsync::{
    auth::{Role, sign_token},
    media::MediaSha256,
    packages::{self, BuildRequest, PackageScope},
    questions::{QuestionInput, QuestionMediaInput, QuestionStatus, import_questions},
};
use rand::{Rng, SeedableRng};
use sea_orm::{ConnectionTrait, Database};
use uuid::Uuid;

const SECRET: &str = "bench-media-secret-0123456789abcdef";
const PER_BUNDLE: usize = 200;
const SHIFT: usize = 50;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("{name}={v} is not a valid value")),
        Err(_) => Ok(default),
    }
}

struct Settings {
    database_url: Option<String>,
    images: usize,
    bundles: usize,
    rounds: usize,
    seconds: u64,
    connections: usize,
    pin: bool,
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        Ok(Settings {
            database_url: std::env::var("BENCH_DATABASE_URL").ok(),
            images: env_or("BENCH_IMAGES", 1000)?,
            bundles: env_or("BENCH_BUNDLES", 16)?,
            rounds: env_or("BENCH_ROUNDS", 3)?,
            seconds: env_or("BENCH_SECONDS", 10)?,
            connections: env_or("BENCH_CONNECTIONS", 16)?,
            pin: std::env::var("BENCH_PIN").map_or(true, |v| v != "0")
                && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2),
        })
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let outcome = match args.get(1).map(String::as_str) {
        Some("--bare") => match args.get(2) {
            Some(dir) => runtime().and_then(|rt| rt.block_on(bare(PathBuf::from(dir)))),
            None => Err("--bare DIR".into()),
        },
        _ => Settings::from_env().and_then(|settings| {
            // Pin before the runtime starts its threads: they inherit this affinity.
            if settings.pin {
                pin_self(1);
            }
            runtime().and_then(|rt| rt.block_on(bench(&settings)))
        }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

fn pin_self(core: usize) {
    let pinned = Command::new("taskset")
        .args(["-cp", &core.to_string(), &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
    if !pinned.is_ok_and(|s| s.success()) {
        eprintln!("warning: taskset failed; nothing is pinned");
    }
}

// ---------------------------------------------------------------------------------------
// The bare server: captured responses served from memory, no auth, no database.

struct Captured {
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl Captured {
    fn save(
        dir: &Path,
        name: &str,
        response_headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), String> {
        let mut text = String::new();
        for (name, value) in response_headers {
            // The bare server's own connection handling writes these.
            if name == header::DATE || name == header::TRANSFER_ENCODING {
                continue;
            }
            text.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("")));
        }
        std::fs::write(dir.join(format!("{name}.headers")), text).map_err(|e| e.to_string())?;
        std::fs::write(dir.join(format!("{name}.body")), body).map_err(|e| e.to_string())
    }

    fn load(dir: &Path, name: &str) -> Result<Captured, String> {
        let text = std::fs::read_to_string(dir.join(format!("{name}.headers")))
            .map_err(|e| e.to_string())?;
        let headers = text
            .lines()
            .filter_map(|line| line.split_once(": "))
            .map(|(n, v)| {
                Ok((
                    HeaderName::try_from(n).map_err(|e| e.to_string())?,
                    HeaderValue::try_from(v).map_err(|e| e.to_string())?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let body = std::fs::read(dir.join(format!("{name}.body"))).map_err(|e| e.to_string())?;
        Ok(Captured {
            headers,
            body: Bytes::from(body),
        })
    }

    fn respond(&self, status: StatusCode) -> Response {
        let mut response = Response::new(Body::from(self.body.clone()));
        *response.status_mut() = status;
        let h = response.headers_mut();
        for (name, value) in &self.headers {
            h.insert(name.clone(), value.clone());
        }
        response
    }
}

struct Bare {
    object: Captured,
    not_modified: Captured,
    bundle: Captured,
    etag: HeaderValue,
}

async fn bare_object(State(bare): State<Arc<Bare>>, headers: HeaderMap) -> Response {
    if headers.get(header::IF_NONE_MATCH) == Some(&bare.etag) {
        return bare.not_modified.respond(StatusCode::NOT_MODIFIED);
    }
    bare.object.respond(StatusCode::OK)
}

async fn bare_bundle(State(bare): State<Arc<Bare>>) -> Response {
    bare.bundle.respond(StatusCode::OK)
}

async fn bare(dir: PathBuf) -> Result<(), String> {
    let object = Captured::load(&dir, "object")?;
    let etag = object
        .headers
        .iter()
        .find(|(n, _)| n == header::ETAG)
        .map(|(_, v)| v.clone())
        .ok_or("no ETag captured")?;
    let bare = Arc::new(Bare {
        object,
        not_modified: Captured::load(&dir, "not_modified")?,
        bundle: Captured::load(&dir, "bundle")?,
        etag,
    });
    let app = Router::new()
        .route("/object", get(bare_object))
        .route("/bundle", get(bare_bundle))
        .with_state(bare);
    let bind = std::env::var("EXAMSYNC_BIND").map_err(|_| "EXAMSYNC_BIND")?;
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .map_err(|e| e.to_string())?;
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------
// Child processes.

struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(
        pin: bool,
        program: &Path,
        args: &[&str],
        envs: &[(&str, String)],
    ) -> Result<Server, String> {
        let port = free_port()?;
        // `taskset` execs the program: the child's pid is the server's.
        let mut command = if pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        command
            .args(args)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .env("EXAMSYNC_BIND", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        Ok(Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        })
    }

    async fn wait_ready(&mut self, client: &reqwest::Client, path: &str) -> Result<(), String> {
        for _ in 0..600 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("a server exited ({status})"));
            }
            if let Ok(r) = client.get(format!("{}{path}", self.base)).send().await
                && r.status().as_u16() < 500
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("a server did not become ready in 60 s".into())
    }

    /// User + system CPU time of the process so far, in µs (from clock ticks of 10 ms).
    fn cpu_us(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // After the command name (in parentheses): utime is field 14, stime field 15.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) as f64 * 1e4)
    }

    /// VmRSS in kB.
    fn rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

// ---------------------------------------------------------------------------------------
// The images.

/// An RGB PNG of random pixels in stored (uncompressed) deflate blocks: about
/// `side² × 3` bytes, different for every seed, and quick to make.
fn random_png(side: u32, seed: u64) -> Vec<u8> {
    use std::io::Write;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let row = side as usize * 3;
    let mut raw = Vec::with_capacity((row + 1) * side as usize);
    for _ in 0..side {
        raw.push(0);
        let start = raw.len();
        raw.resize(start + row, 0);
        rng.fill(&mut raw[start..]);
    }
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::none());
    let _ = encoder.write_all(&raw);
    let idat = encoder.finish().unwrap_or_default();
    let chunk = |out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    };
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn questions(images: &[MediaSha256], bundles: usize) -> Vec<QuestionInput> {
    let mut out = Vec::with_capacity(bundles * PER_BUNDLE);
    for b in 0..bundles {
        for q in 0..PER_BUNDLE {
            let image = images[(b * SHIFT + q) % images.len()];
            out.push(QuestionInput {
                id: Some(Uuid::from_u128(
                    0xbe11_0000_0000_4000_8000_0000_0000_0000 + (b * PER_BUNDLE + q) as u128,
                )),
                stem: format!("Bundle {b}, question {q}: what does the image show?"),
                options: vec!["A finding".into(), "Another finding".into()],
                correct_index: (q % 2) as i32,
                explanation_md: None,
                year_id: 1,
                block_id: Some(1),
                theme_id: Some(1000 + b as i32),
                cognitive_level: None,
                difficulty: None,
                status: Some(QuestionStatus::Published),
                media: Some(vec![QuestionMediaInput {
                    sha256: image.hex(),
                    placement: examsync::media::MediaPlacement::Stem,
                    alt: Some("random pixels".into()),
                }]),
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// wrk.

#[derive(Clone, Copy, Debug, Default)]
struct Wrk {
    requests_per_s: f64,
    bytes_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Server CPU per request (its own process clock: steadier than throughput on a shared
    /// machine).
    cpu_us_per_request: f64,
}

/// `wrk` against `server`, with the server's CPU time per request.
fn wrk_on(
    pin: bool,
    server: &Server,
    path: &str,
    connections: usize,
    seconds: u64,
    headers: &[String],
) -> Result<Wrk, String> {
    let before = server.cpu_us();
    let url = format!("{}{path}", server.base);
    let mut result = wrk(pin, &url, connections, seconds, headers)?;
    if let (Some(before), Some(after)) = (before, server.cpu_us()) {
        result.cpu_us_per_request = (after - before) / (result.requests_per_s * seconds as f64);
    }
    Ok(result)
}

fn wrk(
    pin: bool,
    url: &str,
    connections: usize,
    seconds: u64,
    headers: &[String],
) -> Result<Wrk, String> {
    let mut command = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "1", "wrk"]);
        c
    } else {
        Command::new("wrk")
    };
    command.args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--timeout",
        "60s",
        "--latency",
    ]);
    for h in headers {
        command.args(["-H", h]);
    }
    let output = command
        .arg(url)
        .output()
        .map_err(|e| format!("wrk: {e} (apt-get install -y wrk)"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!("wrk failed:\n{text}"));
    }
    if text.contains("Non-2xx or 3xx") || text.contains("Socket errors") {
        return Err(format!("wrk saw errors on {url}:\n{text}"));
    }
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_owned)
    };
    let number = |value: Option<String>, what: &str| {
        value
            .and_then(|v| parse_unit(&v))
            .ok_or_else(|| format!("wrk output lacks {what}:\n{text}"))
    };
    Ok(Wrk {
        requests_per_s: number(field("Requests/sec:"), "Requests/sec")?,
        bytes_per_s: number(field("Transfer/sec:"), "Transfer/sec")?,
        p50_ms: number(field("50%"), "50%")? * 1e3,
        p99_ms: number(field("99%"), "99%")? * 1e3,
        cpu_us_per_request: 0.0,
    })
}

/// `12.5MB` (bytes, powers of 1024), `3.1ms` (seconds), `1.2k` (count) as a plain number.
fn parse_unit(v: &str) -> Option<f64> {
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit {
        "" | "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "k" => 1e3,
        "M" => 1e6,
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        _ => return None,
    };
    Some(number * factor)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// The run.

/// The CLI import of `dir`, timed: (seconds, objects printed).
fn cli_import(program: &Path, database_url: &str, dir: &Path) -> Result<(f64, usize), String> {
    let started = Instant::now();
    let output = Command::new(program)
        .args(["media", "import"])
        .arg(dir)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let elapsed = started.elapsed().as_secs_f64();
    if !output.status.success() {
        return Err("examsync media import failed".into());
    }
    Ok((
        elapsed,
        output
            .stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
    ))
}

async fn bench(settings: &Settings) -> Result<(), String> {
    let tempdir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (database_url, pg_cleanup) = match &settings.database_url {
        Some(admin_url) if admin_url.starts_with("postgres") => {
            let name = format!("examsync_bench_{}", Uuid::new_v4().simple());
            let admin = Database::connect(admin_url.as_str())
                .await
                .map_err(|e| format!("connect {admin_url}: {e}"))?;
            admin
                .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                .await
                .map_err(|e| e.to_string())?;
            admin.close().await.ok();
            (
                examsync_test_support::replace_database(admin_url, &name),
                Some((admin_url.clone(), name)),
            )
        }
        Some(url) => (url.clone(), None),
        None => (
            format!("sqlite://{}/bench.db?mode=rwc", tempdir.path().display()),
            None,
        ),
    };
    let outcome = run(settings, tempdir.path(), &database_url).await;
    if let Some((admin_url, name)) = pg_cleanup
        && let Ok(admin) = Database::connect(admin_url.as_str()).await
    {
        let _ = admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await;
        admin.close().await.ok();
    }
    outcome
}

async fn run(settings: &Settings, dir: &Path, database_url: &str) -> Result<(), String> {
    let examsync_bin = match std::env::var("BENCH_EXAMSYNC_BIN") {
        Ok(bin) => PathBuf::from(bin),
        Err(_) => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("examsync"))
            .ok_or("cannot locate the examsync binary")?,
    };
    println!("load average at start: {}", load_average());

    // 1. Images.
    let images_dir = dir.join("images");
    std::fs::create_dir_all(&images_dir).map_err(|e| e.to_string())?;
    let mut images = Vec::with_capacity(settings.images);
    let mut image_bytes = 0usize;
    for n in 0..settings.images {
        let png = random_png(316, n as u64);
        images.push(MediaSha256::of(&png));
        image_bytes += png.len();
        std::fs::write(images_dir.join(format!("{n:05}.png")), png).map_err(|e| e.to_string())?;
    }
    println!(
        "{} images, {:.1} MB",
        images.len(),
        image_bytes as f64 / 1e6
    );

    // 2. The CLI import, then again with everything present.
    let (first_s, first_n) = cli_import(&examsync_bin, database_url, &images_dir)?;
    let (again_s, again_n) = cli_import(&examsync_bin, database_url, &images_dir)?;
    if first_n != images.len() || again_n != images.len() {
        return Err(format!("import printed {first_n} and {again_n} objects"));
    }

    // 3. Questions and packages.
    let db = examsync::db::connect(database_url, 5)
        .await
        .map_err(|e| e.to_string())?;
    import_questions(&db, questions(&images, settings.bundles))
        .await
        .map_err(|e| format!("seeding: {e}"))?;
    let mut bundles = Vec::with_capacity(settings.bundles);
    for b in 0..settings.bundles {
        let package = packages::build_package(
            &db,
            BuildRequest {
                name: format!("Media bundle {b}"),
                description: None,
                scope: PackageScope::Theme,
                year_id: Some(1),
                block_id: Some(1),
                theme_id: Some(1000 + b as i32),
                publish: true,
                created_by: None,
            },
        )
        .await
        .map_err(|e| format!("building package {b}: {e}"))?;
        bundles.push(format!("/api/v1/tests/packages/{}/media", package.id));
    }
    // A student whose stored grant covers every package: the benchmark pays for the access
    // check as production does (`EXAMSYNC_ACCESS=grants`, the default).
    let student = Uuid::new_v4();
    let grant = examsync::access::grants::NewGrant::new(
        student.into(),
        PackageScope::Program,
        None,
        None,
        None,
        None,
        None,
    )
    .map_err(|e| e.to_string())?;
    examsync::access::grants::grant(&db, grant)
        .await
        .map_err(|e| format!("granting: {e}"))?;
    db.close().await.ok();

    // 4. examsync, then what the bare server will serve.
    let http = reqwest::Client::builder()
        .no_gzip()
        .no_brotli()
        .build()
        .map_err(|e| e.to_string())?;
    let mut examsync = Server::start(
        settings.pin,
        &examsync_bin,
        &["serve"],
        &[
            ("DATABASE_URL", database_url.to_owned()),
            ("JWT_SECRET", SECRET.to_owned()),
            ("EXAMSYNC_RATE_LIMIT_PER_MINUTE", "0".to_owned()),
            ("EXAMSYNC_PACKAGE_RATE_LIMIT_PER_MINUTE", "0".to_owned()),
        ],
    )?;
    examsync.wait_ready(&http, "/readyz").await?;
    let token = sign_token(SECRET, student, Role::Student, 24 * 3600).map_err(|e| e.to_string())?;
    let auth = format!("Bearer {token}");
    let object_path = format!("/api/v1/media/{}", images[0]);
    let started = Instant::now();
    let response = http
        .get(format!("{}{}", examsync.base, bundles[0]))
        .header("authorization", &auth)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let cold_headers_ms = started.elapsed().as_secs_f64() * 1e3;
    let bundle_headers = response.headers().clone();
    let bundle = response.bytes().await.map_err(|e| e.to_string())?;
    let cold_total_ms = started.elapsed().as_secs_f64() * 1e3;
    Captured::save(dir, "bundle", &bundle_headers, &bundle)?;
    let response = http
        .get(format!("{}{object_path}", examsync.base))
        .header("authorization", &auth)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("the object answered {}", response.status()));
    }
    let object_headers = response.headers().clone();
    let etag = object_headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .ok_or("no ETag")?
        .to_owned();
    let object = response.bytes().await.map_err(|e| e.to_string())?;
    Captured::save(dir, "object", &object_headers, &object)?;
    let response = http
        .get(format!("{}{object_path}", examsync.base))
        .header("authorization", &auth)
        .header("if-none-match", &etag)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != 304 {
        return Err(format!("revalidation answered {}", response.status()));
    }
    Captured::save(dir, "not_modified", &response.headers().clone(), &[])?;
    println!(
        "object {} bytes; bundle {} bytes ({} entries); cold bundle: headers after {cold_headers_ms:.0} ms, whole after {cold_total_ms:.0} ms",
        object.len(),
        bundle.len(),
        PER_BUNDLE,
    );

    let this = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir_arg = dir.display().to_string();
    let mut bare = Server::start(settings.pin, &this, &["--bare", &dir_arg], &[])?;
    bare.wait_ready(&http, "/object").await?;

    // 5. Rounds.
    let s = settings.seconds;
    let auth_header = format!("Authorization: {auth}");
    let inm = format!("If-None-Match: {etag}");
    let mut rows: Vec<(&str, Vec<Wrk>, Vec<Wrk>)> = vec![
        ("GET object", Vec::new(), Vec::new()),
        ("304 object", Vec::new(), Vec::new()),
        ("GET bundle", Vec::new(), Vec::new()),
    ];
    let mut rss = Vec::new();
    let mut parallel = Vec::new();
    for round in 0..settings.rounds {
        println!("round {} (load average {})", round + 1, load_average());
        let c = settings.connections;
        let plans: [(&str, &str, usize, Vec<String>); 3] = [
            ("/object", &object_path, c, vec![auth_header.clone()]),
            (
                "/object",
                &object_path,
                c,
                vec![auth_header.clone(), inm.clone()],
            ),
            ("/bundle", &bundles[0], 4, vec![auth_header.clone()]),
        ];
        for (i, (bare_path, path, connections, headers)) in plans.iter().enumerate() {
            let b = wrk_on(settings.pin, &bare, bare_path, *connections, s, headers)?;
            let e = wrk_on(settings.pin, &examsync, path, *connections, s, headers)?;
            println!(
                "  {:<11} bare {:>9.0} req/s {:>7.1} MB/s | examsync {:>9.0} req/s {:>7.1} MB/s p50 {:.2} ms p99 {:.2} ms ({:.0}%); CPU µs/req bare {:.1} examsync {:.1}",
                rows[i].0,
                b.requests_per_s,
                b.bytes_per_s / 1e6,
                e.requests_per_s,
                e.bytes_per_s / 1e6,
                e.p50_ms,
                e.p99_ms,
                100.0 * e.requests_per_s / b.requests_per_s,
                b.cpu_us_per_request,
                e.cpu_us_per_request,
            );
            rows[i].1.push(b);
            rows[i].2.push(e);
        }
        let (peak, bytes) = different_bundles(&http, &examsync, &bundles, &auth, s).await?;
        println!(
            "  {} clients × different bundles: {:.1} MB/s, server RSS peak {:.1} MB",
            bundles.len(),
            bytes as f64 / s as f64 / 1e6,
            peak as f64 / 1024.0
        );
        rss.push(peak as f64 / 1024.0);
        parallel.push(bytes as f64 / s as f64 / 1e6);
    }

    // 6. The table.
    println!();
    println!("load average at end: {}", load_average());
    println!(
        "| scenario | bare | examsync | examsync / bare | target | CPU µs/req bare | examsync |"
    );
    println!("|---|---:|---:|---:|---|---:|---:|");
    for (name, b, e) in &rows {
        let bundle = name.contains("bundle");
        let value = |w: &Wrk| {
            if bundle {
                w.bytes_per_s / 1e6
            } else {
                w.requests_per_s
            }
        };
        let unit = if bundle { "MB/s" } else { "req/s" };
        let ratio = median(b.iter().zip(e).map(|(b, e)| value(e) / value(b)).collect());
        let target = match *name {
            "GET object" => "≥ 90%",
            "304 object" => "≥ 85%",
            _ => "≥ 90%",
        };
        println!(
            "| {name} | {:.0} {unit} | {:.0} {unit} (p50 {:.2} ms, p99 {:.2} ms) | {:.0}% | {target} | {:.1} | {:.1} |",
            median(b.iter().map(value).collect()),
            median(e.iter().map(value).collect()),
            median(e.iter().map(|w| w.p50_ms).collect()),
            median(e.iter().map(|w| w.p99_ms).collect()),
            100.0 * ratio,
            median(b.iter().map(|w| w.cpu_us_per_request).collect()),
            median(e.iter().map(|w| w.cpu_us_per_request).collect()),
        );
    }
    println!(
        "| {} clients, different bundles | | {:.0} MB/s, server RSS peak {:.0} MB | | < 150 MB |",
        bundles.len(),
        median(parallel),
        median(rss)
    );
    println!(
        "| cold bundle ({PER_BUNDLE} images, {:.1} MB) | | headers {cold_headers_ms:.0} ms, whole {cold_total_ms:.0} ms | | |",
        bundle.len() as f64 / 1e6
    );
    println!(
        "| CLI import of {} images | | {first_s:.2} s ({:.0} objects/s) | | |",
        images.len(),
        images.len() as f64 / first_s
    );
    println!(
        "| the same again (all present) | | {again_s:.2} s ({:.0} objects/s) | {:.1}× faster | ≥ 10× |",
        images.len() as f64 / again_s,
        first_s / again_s
    );
    drop(bare);
    drop(examsync);
    Ok(())
}

/// Each client downloads its own bundle over and over for `seconds` while the server's RSS
/// is sampled: (peak RSS in kB, bytes received).
async fn different_bundles(
    http: &reqwest::Client,
    server: &Server,
    bundles: &[String],
    auth: &str,
    seconds: u64,
) -> Result<(u64, u64), String> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = bundles
        .iter()
        .map(|path| {
            let http = http.clone();
            let url = format!("{}{path}", server.base);
            let auth = auth.to_owned();
            tokio::spawn(async move {
                let mut received = 0u64;
                while Instant::now() < deadline {
                    let response = http
                        .get(&url)
                        .header("authorization", &auth)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    if response.status() != 200 {
                        return Err(format!("a bundle answered {}", response.status()));
                    }
                    let mut response = response;
                    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
                        received += chunk.len() as u64;
                        if Instant::now() >= deadline {
                            break;
                        }
                    }
                }
                Ok::<u64, String>(received)
            })
        })
        .collect();
    let mut peak = 0;
    while Instant::now() < deadline {
        peak = peak.max(server.rss_kb().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut bytes = 0;
    for task in tasks {
        bytes += task.await.map_err(|e| e.to_string())??;
    }
    Ok((peak, bytes))
}
