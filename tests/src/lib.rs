//! Shared by the end-to-end tests: find the real `wick` binary, start it on a free port, and talk
//! plain HTTP/1.1 to it (the SDK-level checks live in tests/e2e).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `wick` binary next to the test's build directory (target/<profile>/wick), or `WICK_BIN`.
pub fn wick_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WICK_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let bin = profile_dir.join("wick");
    assert!(
        bin.is_file(),
        "{} missing: build it first (scripts/test runs `cargo build --release --bin wick`)",
        bin.display()
    );
    bin
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A running `wick serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Where the server's log (stderr) goes.
    pub fn log_path(port: u16) -> PathBuf {
        std::env::temp_dir().join(format!("wick-e2e-{port}.log"))
    }

    /// Starts `wick serve` on a free port with `extra` arguments and waits until `/ready`. The
    /// KV cache is 256 MiB unless `extra` names `--kv-cache-mib`.
    pub fn start(extra: &[&str]) -> Server {
        let port = free_port();
        // A log left by another run on this port (earlier test runs on this machine) is not
        // this server's: start_on appends, for restarts.
        let _ = std::fs::remove_file(Self::log_path(port));
        Self::start_on(port, extra)
    }

    /// [`Server::start`] on a given port (a restart where the last one listened).
    pub fn start_on(port: u16, extra: &[&str]) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Self::log_path(port))
            .expect("log file");
        let kv: &[&str] = if extra.contains(&"--kv-cache-mib") {
            &[]
        } else {
            &["--kv-cache-mib", "256"]
        };
        let child = Command::new(wick_binary())
            .args(["serve", "--port", &port.to_string()])
            .args(kv)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("wick starts");
        let server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Some((200, _)) = http_get(port, "/ready") {
                return server;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("wick serve did not become ready on port {port}");
    }
}

/// The model `wick serve` serves with no model flags (scripts/fetch-default-model's).
pub const DEFAULT_MODEL_ID: &str = "SmolLM2-135M-Instruct.Q4_1";

/// What the SDK test files (tests/e2e, tests/e2e-node) read to reach `server`: its base URL,
/// the default model, and `api_key`.
pub fn sdk_env(server: &Server, api_key: &str) -> [(&'static str, String); 3] {
    [
        ("WICK_BASE_URL", format!("http://127.0.0.1:{}/v1", server.port)),
        ("WICK_MODEL_ID", DEFAULT_MODEL_ID.to_string()),
        ("WICK_API_KEY", api_key.to_string()),
    ]
}

/// `GET path` → (status, whole response text), or None if the connection failed.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    request(port, "GET", path, None)
}

/// One HTTP/1.1 request with `Connection: close`; the response is read to the end.
pub fn request(port: u16, method: &str, path: &str, json: Option<&str>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    s.write_all(request_head(method, path, json).as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, out))
}

pub fn request_head(method: &str, path: &str, json: Option<&str>) -> String {
    let body = json.unwrap_or("");
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Sends `raw` (a whole HTTP/1.1 request) and returns the whole response text.
pub fn request_raw(port: u16, raw: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    s.write_all(raw.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// A response: status, headers (names lower-cased) and body (de-chunked).
pub struct Reply {
    pub status: u16,
    pub headers: std::collections::HashMap<String, String>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// `POST path` with a JSON body; panics if the server does not answer.
pub fn post_json(port: u16, path: &str, body: &serde_json::Value) -> Reply {
    let (status, text) = request(port, "POST", path, Some(&body.to_string())).expect("the server answers");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let headers: std::collections::HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"));
    Reply {
        status,
        body: if chunked { dechunk(body) } else { body.to_string() },
        headers,
    }
}

/// The payload of a `Transfer-Encoding: chunked` body.
pub fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    out
}

/// The value of the first `/metrics` sample line that starts with `line_start` (a metric name
/// and its labels, as Prometheus' text format writes them).
pub fn metric(port: u16, line_start: &str) -> Option<f64> {
    let (_, text) = http_get(port, "/metrics")?;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// An SSE body (a Responses stream) as (event name, data) pairs; events without data (keep-alive
/// comments) are left out.
pub fn sse_events(body: &str) -> Vec<(String, serde_json::Value)> {
    body.split("\n\n")
        .filter_map(|e| {
            let field = |name: &str| e.lines().find_map(|l| l.strip_prefix(name));
            let data = serde_json::from_str(field("data: ")?).unwrap_or_else(|err| panic!("{err}: {e}"));
            Some((field("event: ").unwrap_or_default().to_string(), data))
        })
        .collect()
}

/// The fallback model's path, from scripts/fetch-fallback-model (idempotent; it fetches the
/// model if it is missing).
pub fn fallback_model() -> String {
    fetched_model("scripts/fetch-fallback-model")
}

/// The default model's path (the file `wick serve` serves with no model flags), from
/// scripts/fetch-default-model (idempotent), for tests that name it as a source.
pub fn default_model() -> String {
    fetched_model("scripts/fetch-default-model")
}

/// The path a fetch script prints (it fetches the model if it is missing).
fn fetched_model(script: &str) -> String {
    let out = Command::new(root().join(script))
        .output()
        .unwrap_or_else(|e| panic!("{script} runs: {e}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("a path").trim().to_string()
}
