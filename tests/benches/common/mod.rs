//! What the HTTP benchmarks share: a `duro serve` child process on a fresh
//! port and a keep-alive HTTP/1.1 client.

// Each benchmark includes this module and uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;

/// The management API's base path.
pub const API: &str = "/runtime/webhooks/durabletask";

/// The `duro` binary built with the benchmark (release profile).
pub fn duro() -> Command {
    Command::new(env!("CARGO_BIN_EXE_duro-under-test"))
}

/// A `duro serve` of `manifest` on `database`; killed when dropped.
pub struct Server {
    child: Child,
    /// `127.0.0.1:port`.
    pub host: String,
}

impl Server {
    pub fn start(manifest: &Path, database: &Path) -> Server {
        Server::start_with(manifest, database, &[])
    }

    /// [`Server::start`] with these environment variables set.
    pub fn start_with(manifest: &Path, database: &Path, env: &[(&str, &str)]) -> Server {
        let mut child = duro()
            .args(["serve", "--listen", "127.0.0.1:0", "--manifest"])
            .arg(manifest)
            .arg("--database")
            .arg(database)
            .arg("--cache-dir")
            .arg(duro_tests::COMPILE_CACHE)
            .env("DURO_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("duro starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("first line");
        let host = line
            .trim()
            .strip_prefix("duro listening on http://")
            .expect("listening line")
            .to_string();
        Server { child, host }
    }
}

impl Server {
    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server process's resident memory, in bytes: all of it
    /// (`VmRSS`), and the anonymous part (`RssAnon`: heaps and stacks, not
    /// the database pages SQLite maps from its file, which the kernel can
    /// drop).
    pub fn resident_bytes(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        let field = |name: &str| -> u64 {
            let kib: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} in /proc status"));
            kib * 1024
        };
        (field("VmRSS:"), field("RssAnon:"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keep-alive connection.
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

/// A response: status, continuation header, JSON body.
pub struct Reply {
    pub status: u16,
    pub continuation: Option<String>,
    pub json: serde_json::Value,
}

impl Client {
    pub async fn connect(host: &str) -> Client {
        let stream = tokio::net::TcpStream::connect(host).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(connection);
        Client {
            sender,
            host: host.to_string(),
        }
    }

    pub async fn call(&mut self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let reply = self.request(method, path, body, None).await;
        (reply.status, reply.json)
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
        continuation: Option<&str>,
    ) -> Reply {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.host);
        if let Some(token) = continuation {
            request = request.header("x-ms-continuation-token", token);
        }
        if !body.is_empty() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        self.sender.ready().await.expect("connection ready");
        let response = self.sender.send_request(request).await.expect("response");
        let status = response.status().as_u16();
        let continuation = response
            .headers()
            .get("x-ms-continuation-token")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Reply {
            status,
            continuation,
            json,
        }
    }
}
