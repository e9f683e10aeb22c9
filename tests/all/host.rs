//! A real `duro serve` process on a free port, and a small blocking HTTP
//! client to talk to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use duro_tests::COMPILE_CACHE;
use serde_json::Value;

/// The `duro` program under test, rebuilt by cargo with the tests.
pub fn duro_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_duro-under-test"))
}

/// Run `duro` as `command` says, expecting it to refuse (a non-zero exit):
/// what it said on stderr.
pub fn refusal(command: &mut Command) -> String {
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "not refused: {stderr}");
    stderr
}

pub use duro_tests::scenario_manifest;

/// The scenario's manifest in `dir` with one more orchestration,
/// `orchestration`, from the test guests.
pub fn test_guest_manifest(dir: &Path, orchestration: &str) -> PathBuf {
    scenario_manifest(
        dir,
        &format!(
            "[[orchestration]]\nname = {orchestration:?}\ncomponent = {:?}\n",
            duro_tests::TEST_GUESTS
        ),
    )
}

/// A running `duro serve`; killed when dropped.
pub struct Host {
    child: Child,
    pub address: String,
}

impl Host {
    /// Start `duro serve` with the scenario manifest on a fresh port.
    pub fn start(dir: &Path) -> Host {
        let manifest = scenario_manifest(dir, "");
        Host::start_with(&manifest, &dir.join("duro.db"), &[])
    }

    /// Start `duro serve` with this manifest and database.
    pub fn start_with(manifest: &Path, database: &Path, extra: &[&str]) -> Host {
        Host::start_with_env(manifest, database, &[], extra)
    }

    /// [`Host::start_with`], with these environment variables set for the
    /// host.
    pub fn start_with_env(
        manifest: &Path,
        database: &Path,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Host {
        let mut args = vec!["--cache-dir", COMPILE_CACHE, "--trigger-budget-ms", "1000"];
        args.extend_from_slice(extra);
        let mut command = Command::new(duro_binary());
        command.envs(env.iter().copied());
        Host::spawn(command, manifest, database, &args)
    }

    /// Start `duro serve` from `dir` as a user would: relative paths, the
    /// default cache location (in `dir/home-cache`, as `XDG_CACHE_HOME`).
    pub fn start_in(dir: &Path, manifest: &Path, database: &str) -> Host {
        let mut command = Command::new(duro_binary());
        command
            .current_dir(dir)
            .env("XDG_CACHE_HOME", dir.join("home-cache"));
        Host::spawn(command, manifest, Path::new(database), &[])
    }

    pub fn spawn(command: Command, manifest: &Path, database: &Path, extra: &[&str]) -> Host {
        Host::spawn_logging(command, manifest, database, extra, "warn", Stdio::inherit())
    }

    /// [`Host::start_with_env`], its log at `level` written to `log`.
    pub fn start_logging(
        manifest: &Path,
        database: &Path,
        env: &[(&str, &str)],
        extra: &[&str],
        level: &str,
        log: &Path,
    ) -> Host {
        let mut args = vec!["--cache-dir", COMPILE_CACHE, "--trigger-budget-ms", "1000"];
        args.extend_from_slice(extra);
        let mut command = Command::new(duro_binary());
        command.envs(env.iter().copied());
        let file = std::fs::File::create(log).expect("the log file");
        Host::spawn_logging(command, manifest, database, &args, level, Stdio::from(file))
    }

    fn spawn_logging(
        mut command: Command,
        manifest: &Path,
        database: &Path,
        extra: &[&str],
        level: &str,
        stderr: Stdio,
    ) -> Host {
        let mut child = command
            .arg("serve")
            .arg("--listen=127.0.0.1:0")
            .arg("--manifest")
            .arg(manifest)
            .arg("--database")
            .arg(database)
            .args(extra)
            .env("DURO_LOG", level)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("duro starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line
            .trim()
            .strip_prefix("duro listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Host { child, address }
    }

    /// The process id of the host.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: no shutdown code runs.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None, &[])
    }

    pub fn post(&self, path: &str, body: &str) -> Reply {
        self.request("POST", path, Some(body), &[])
    }

    /// One HTTP/1.1 request on a fresh connection.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        try_request(&self.address, method, path, body, headers)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// The pages of a listing, following `x-ms-continuation-token` until the
    /// last page or `max_pages`; each page is the JSON array of one reply.
    pub fn pages(&self, path: &str, max_pages: usize) -> Vec<Vec<Value>> {
        let mut pages = Vec::new();
        let mut token: Option<String> = None;
        while pages.len() < max_pages {
            let headers: Vec<(&str, &str)> = token
                .as_deref()
                .map(|t| vec![("x-ms-continuation-token", t)])
                .unwrap_or_default();
            let page = self.request("GET", path, None, &headers);
            assert_eq!(page.status, 200, "{path}: {}", page.body);
            pages.push(page.json().as_array().unwrap().clone());
            match page.header("x-ms-continuation-token") {
                Some(next) => token = Some(next.to_string()),
                None => break,
            }
        }
        pages
    }

    /// Poll `path` until `done` holds for its JSON body.
    pub fn poll(&self, path: &str, done: impl Fn(&Reply) -> bool) -> Reply {
        let deadline = Instant::now() + crate::support::PATIENCE;
        loop {
            let reply = self.get(path);
            if done(&reply) || Instant::now() > deadline {
                return reply;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Run `duro serve --listen listen` with this manifest, database and
/// `extra` arguments, and expect it to refuse before it listens (a failure,
/// nothing on stdout); its stderr. The test's own `DURO_*` variables are
/// not passed on, so only what the call names configures the host.
pub fn refused_serve(listen: &str, manifest: &Path, database: &Path, extra: &[&str]) -> String {
    let mut command = Command::new(duro_binary());
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("DURO_")) {
        command.env_remove(name);
    }
    let output = command
        .args(["serve", "--listen", listen, "--manifest"])
        .arg(manifest)
        .arg("--database")
        .arg(database)
        .args(extra)
        .output()
        .expect("duro runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "it was served: {stderr}");
    assert!(output.stdout.is_empty(), "it listened: {stderr}");
    stderr
}

/// One HTTP/1.1 request to `address` on a fresh connection; an error if the
/// connection fails or the response is cut off.
pub fn try_request(
    address: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    // As the CLI and Durable Functions' clients do: a body is JSON unless
    // said otherwise (the management API refuses other writes).
    if !body.is_empty()
        && !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
    {
        request.push_str("content-type: application/json\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    Reply::try_parse(&raw)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "response cut off"))
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    fn try_parse(raw: &[u8]) -> Option<Reply> {
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        if headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
        {
            body = dechunk(&body);
        }
        Some(Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body {:?} is not JSON: {e}", self.body))
    }

    /// The `error` message of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {:?}", self.body))
            .to_string()
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
}

/// A local HTTP server for guests to call: it answers the n-th request
/// (from 1) with `answer(n)`, a whole HTTP/1.1 response; returns its
/// address and how many requests it has had. It runs until the test ends.
pub fn local_server(
    answer: impl Fn(usize) -> String + Send + 'static,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let _ = stream.write_all(answer(n).as_bytes());
        }
    });
    (address, count)
}

/// A `200 OK` response with this body, closing the connection.
pub fn ok_response(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The value of the sample `name{labels}` in a metrics page, if present.
pub fn sample(page: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{labels} ");
    page.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

/// How many events of `kind` (`eventType`) the `historyEvents` of an
/// instance's status (`showHistory=true`) hold.
pub fn history_count(status: &Value, kind: &str) -> usize {
    status["historyEvents"]
        .as_array()
        .expect("a status with its history")
        .iter()
        .filter(|e| e["eventType"] == kind)
        .count()
}
