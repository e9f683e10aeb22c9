//! HTTP lifecycle benchmark: a real `duro serve` process (release build), and
//! clients on keep-alive connections driving the management API:
//! POST start → poll GET status until Running → POST raiseEvent → poll GET
//! status until 200 (Completed).
//!
//! `cargo bench -p duro-tests --bench http -- [--clients 64] [--lifecycles 4000] [--poll-ms 1]`

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;

const API: &str = "/runtime/webhooks/durabletask";

struct Client {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Client {
    async fn connect(host: &str) -> Client {
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

    async fn call(&mut self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.host)
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        self.sender.ready().await.expect("connection ready");
        let response = self.sender.send_request(request).await.expect("response");
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    async fn wait_for(&mut self, id: &str, status: &str, poll: Duration) {
        let path = format!("{API}/instances/{id}?showInput=false");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, body) = self.call("GET", &path, "").await;
            if body["runtimeStatus"] == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never reached {status}: {body}"
            );
            tokio::time::sleep(poll).await;
        }
    }

    async fn lifecycle(&mut self, n: usize, poll: Duration) -> Duration {
        let (code, body) = self
            .call(
                "POST",
                &format!("{API}/orchestrators/Workflow"),
                &format!("\"b{n}\""),
            )
            .await;
        assert_eq!(code, 202, "{body}");
        let id = body["id"].as_str().expect("id").to_string();
        self.wait_for(&id, "Running", poll).await;
        let raised = Instant::now();
        let (code, _) = self
            .call(
                "POST",
                &format!("{API}/instances/{id}/raiseEvent/Workflow"),
                "null",
            )
            .await;
        assert_eq!(code, 202);
        self.wait_for(&id, "Completed", poll).await;
        raised.elapsed()
    }
}

#[tokio::main]
async fn main() {
    let clients = duro_tests::bench_arg("--clients", 64) as usize;
    let lifecycles = duro_tests::bench_arg("--lifecycles", 4000) as usize;
    let poll = Duration::from_millis(duro_tests::bench_arg("--poll-ms", 1));
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = duro_tests::scenario_manifest(dir.path(), "");
    let mut child = Command::new(env!("CARGO_BIN_EXE_duro-under-test"))
        .args(["serve", "--listen", "127.0.0.1:0", "--manifest"])
        .arg(&manifest)
        .arg("--database")
        .arg(dir.path().join("bench.db"))
        .arg("--cache-dir")
        .arg(duro_tests::COMPILE_CACHE)
        .env("DURO_LOG", "warn")
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

    let mut one = Client::connect(&host).await;
    one.lifecycle(usize::MAX, poll).await;
    let mut latencies = Vec::new();
    for n in 0..200 {
        latencies.push(one.lifecycle(n, poll).await);
    }
    latencies.sort();

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (host, next) = (host.clone(), next.clone());
            tokio::spawn(async move {
                let mut client = Client::connect(&host).await;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= lifecycles {
                        return;
                    }
                    client.lifecycle(1000 + n, poll).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("client");
    }
    let elapsed = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();

    println!(
        "HTTP latency raiseEvent→Completed seen by polling every {poll:?}, 1 client: p50 {:?}  p99 {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100]
    );
    println!(
        "HTTP throughput: {lifecycles} lifecycles with {clients} clients in {elapsed:.2?} = {:.0} lifecycles/s",
        lifecycles as f64 / elapsed.as_secs_f64()
    );
}
