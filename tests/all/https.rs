//! Outbound HTTPS from activities and `ctx.call_http`, against HTTPS
//! servers on loopback signed by a CA this test makes (`--ca-file`): the
//! certificate checked (unknown issuer, wrong name, expired), the scheme
//! and the host patterns of `allowed_hosts`, HTTP/1.1 and HTTP/2.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::host::Host;

const API: &str = "/runtime/webhooks/durabletask";

/// A certificate chain and its key, for a server to present.
pub(crate) type Served = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

/// A test CA and what it signs.
pub(crate) struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        Ca {
            pem: certificate.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for `names`, valid now unless `expired`, and
    /// its key.
    pub(crate) fn sign(&self, names: &[&str], expired: bool) -> Served {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (vec![certificate.der().clone()], key_der)
    }

    /// The CA's certificate in a PEM file under `dir`.
    pub(crate) fn write(&self, dir: &Path) -> std::path::PathBuf {
        let path = dir.join("ca.pem");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(self.pem.as_bytes())
            .unwrap();
        path
    }
}

/// An HTTPS server on loopback presenting `certified`, answering every
/// request with `body` (over HTTP/2 when `h2`, else HTTP/1.1); returns
/// its port and how many requests it answered. It runs until the test
/// process ends.
fn https_server(certified: Served, body: &'static str, h2: bool) -> (u16, Requests) {
    https_service(certified, h2, move |_| (200, body.to_string()))
}

/// What an HTTPS test server received, as it comes.
pub(crate) type Requests = Arc<std::sync::Mutex<Vec<Received>>>;

/// A request an HTTPS test server received: its headers (lower-case
/// names) and body.
pub(crate) type Received = (Vec<(String, String)>, String);

/// An HTTPS server on loopback presenting `certified` whose answer to the
/// n-th request (from 1) is `answer(n)`: (status, body). Returns its port
/// and the requests it received. It runs until the test process ends.
pub(crate) fn https_service(
    certified: Served,
    h2: bool,
    answer: impl Fn(usize) -> (u16, String) + Send + Sync + 'static,
) -> (u16, Requests) {
    let answer = Arc::new(answer);
    let received = Arc::new(std::sync::Mutex::new(Vec::<Received>::new()));
    let record = received.clone();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certified.0, certified.1)
        .unwrap();
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, record, answer) = (acceptor.clone(), record.clone(), answer.clone());
                tokio::spawn(async move {
                    // A client that refuses the certificate ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let (record, answer) = (record.clone(), answer.clone());
                            async move {
                                let headers = (request.headers().iter())
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or("").to_string())
                                    })
                                    .collect();
                                let body = http_body_util::BodyExt::collect(request.into_body())
                                    .await
                                    .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                                    .unwrap_or_default();
                                let n = {
                                    let mut record = record.lock().unwrap();
                                    record.push((headers, body));
                                    record.len()
                                };
                                let (status, body) = answer(n);
                                let mut response = hyper::Response::new(http_body_util::Full::new(
                                    hyper::body::Bytes::from(body),
                                ));
                                *response.status_mut() =
                                    hyper::StatusCode::from_u16(status).unwrap();
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = if h2 {
                        hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(io, service)
                        .await
                    } else {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await
                    };
                });
            }
        });
    });
    (port, received)
}

/// A host whose `Fetch` activity and `HttpCaller` orchestration may reach
/// `allowed`, trusting `ca_file` if given.
fn host_allowing(dir: &Path, allowed: &[String], ca_file: Option<&Path>) -> Host {
    let (guests, activities) = (duro_tests::TEST_GUESTS, duro_tests::TEST_ACTIVITIES);
    let allowed = serde_json::to_string(allowed).unwrap();
    let manifest = duro_tests::scenario_manifest(
        dir,
        &format!(
            "[[orchestration]]\nname = \"FetchThenWait\"\ncomponent = {guests:?}\n\
             [[orchestration]]\nname = \"HttpCaller\"\ncomponent = {guests:?}\n\
             allowed_hosts = {allowed}\n\
             [[activity]]\nname = \"Fetch\"\ncomponent = {activities:?}\n\
             allowed_hosts = {allowed}\n"
        ),
    );
    let ca: Vec<String> = ca_file
        .map(|path| vec!["--ca-file".to_string(), path.display().to_string()])
        .unwrap_or_default();
    let ca: Vec<&str> = ca.iter().map(String::as_str).collect();
    Host::start_with(&manifest, &dir.join("duro.db"), &ca)
}

/// What the `Fetch` activity made of `url`: `Ok` its `{status, body}`, or
/// `Err` the instance's failure.
fn fetch(host: &Host, id: &str, url: &str) -> Result<Value, String> {
    let started = host.post(
        &format!("{API}/orchestrators/FetchThenWait/{id}"),
        &json!(url).to_string(),
    );
    assert_eq!(started.status, 202, "{}", started.body);
    let settled = host.poll(&format!("{API}/instances/{id}?showHistory=true"), |r| {
        r.body.contains("TaskCompleted") || r.json()["runtimeStatus"] == "Failed"
    });
    let status = settled.json();
    if status["runtimeStatus"] == "Failed" {
        return Err(status["output"].to_string());
    }
    let raised = host.post(&format!("{API}/instances/{id}/raiseEvent/Go"), "null");
    assert_eq!(raised.status, 202);
    let done = host.poll(&format!("{API}/instances/{id}"), |r| r.status == 200);
    Ok(done.json()["output"].clone())
}

#[test]
fn an_activity_reaches_https_hosts_its_ca_vouches_for() {
    let ca = Ca::new("duro test CA");
    let (good, good_count) =
        https_server(ca.sign(&["localhost", "127.0.0.1"], false), "secure", false);
    let (h2, _) = https_server(ca.sign(&["localhost"], false), "over h2", true);
    let (wrong_name, wrong_count) = https_server(ca.sign(&["other.example"], false), "x", false);
    let (expired, expired_count) = https_server(ca.sign(&["localhost"], true), "x", false);
    let stranger = Ca::new("someone else's CA");
    let (unknown, unknown_count) = https_server(stranger.sign(&["localhost"], false), "x", false);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path());
    let host = host_allowing(
        dir.path(),
        &["https://localhost:*".into(), "https://127.0.0.1:*".into()],
        Some(&ca_file),
    );

    let ok = fetch(&host, "good", &format!("https://localhost:{good}/pay")).unwrap();
    assert_eq!(ok, json!({ "status": 200, "body": "secure" }));
    let by_ip = fetch(&host, "by-ip", &format!("https://127.0.0.1:{good}/pay")).unwrap();
    assert_eq!(by_ip["body"], "secure");
    assert_eq!(good_count.lock().unwrap().len(), 2);
    let over_h2 = fetch(&host, "h2", &format!("https://localhost:{h2}/")).unwrap();
    assert_eq!(over_h2["body"], "over h2");

    // Each failed check names its cause, and no request went through.
    for (id, port, causes) in [
        (
            "wrong-name",
            wrong_name,
            ["notvalidforname", "not valid for name"],
        ),
        ("expired", expired, ["expired", "expired"]),
        ("unknown", unknown, ["unknownissuer", "unknown issuer"]),
    ] {
        let error = fetch(&host, id, &format!("https://localhost:{port}/")).unwrap_err();
        let lower = error.to_lowercase();
        assert!(
            lower.contains("tls handshake") && causes.iter().any(|c| lower.contains(c)),
            "{id}: {error}"
        );
    }
    for count in [wrong_count, expired_count, unknown_count] {
        assert_eq!(count.lock().unwrap().len(), 0);
    }
    // Plain HTTP to a host allowed for HTTPS only is refused.
    let plain = fetch(&host, "plain", &format!("http://localhost:{good}/")).unwrap_err();
    assert!(plain.contains("HttpRequestDenied"), "{plain}");

    // ctx.call_http records the cause in the history, and the result.
    let started = host.post(
        &format!("{API}/orchestrators/HttpCaller/caller-unknown"),
        &json!(format!("https://localhost:{unknown}/")).to_string(),
    );
    assert_eq!(started.status, 202);
    let done = host.poll(
        &format!("{API}/instances/caller-unknown?showHistory=true&showHistoryOutput=true"),
        |r| r.status == 200,
    );
    assert!(
        done.json()["output"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("UnknownIssuer"),
        "{}",
        done.body
    );
    let started = host.post(
        &format!("{API}/orchestrators/HttpCaller/caller-good"),
        &json!(format!("https://localhost:{good}/")).to_string(),
    );
    assert_eq!(started.status, 202);
    let done = host.poll(&format!("{API}/instances/caller-good"), |r| r.status == 200);
    assert_eq!(done.json()["output"]["body"], "secure", "{}", done.body);
}

#[test]
fn without_its_ca_file_a_host_trusts_only_the_public_roots() {
    let ca = Ca::new("duro test CA");
    let (port, count) = https_server(ca.sign(&["localhost"], false), "x", false);
    let dir = tempfile::tempdir().unwrap();
    let host = host_allowing(dir.path(), &["https://localhost:*".into()], None);
    let error = fetch(&host, "untrusted", &format!("https://localhost:{port}/")).unwrap_err();
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert_eq!(count.lock().unwrap().len(), 0);

    // A CA file that holds no certificate is refused before listening.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate").unwrap();
    let manifest = duro_tests::scenario_manifest(dir.path(), "");
    let stderr = crate::host::refused_serve(
        "127.0.0.1:0",
        &manifest,
        &dir.path().join("other.db"),
        &["--ca-file", empty.to_str().unwrap()],
    );
    assert!(stderr.contains("holds no PEM certificate"), "{stderr}");
}

#[test]
fn host_patterns_cover_subdomains_and_default_ports() {
    // Checked through the manifest as a host reads it.
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("duro test CA");
    let (port, _) = https_server(ca.sign(&["localhost"], false), "x", false);
    let ca_file = ca.write(dir.path());
    // `https://localhost` means port 443 only: this server's port is not it.
    let host = host_allowing(
        dir.path(),
        &["https://localhost".into(), "https://*.localhost:*".into()],
        Some(&ca_file),
    );
    let denied = fetch(&host, "port", &format!("https://localhost:{port}/")).unwrap_err();
    assert!(denied.contains("HttpRequestDenied"), "{denied}");
}

#[test]
fn an_answer_that_stops_coming_is_cut_off_between_bytes() {
    // A server that sends its head and a tenth of its body, then nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                let _ = std::io::Read::read(&mut stream, &mut buffer);
                let _ =
                    stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789");
                std::thread::sleep(std::time::Duration::from_secs(20));
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (guests, activities) = (duro_tests::TEST_GUESTS, duro_tests::TEST_ACTIVITIES);
    // The attempt's budget (4 s) caps the wait between bytes.
    let manifest = duro_tests::scenario_manifest(
        dir.path(),
        &format!(
            "[[orchestration]]\nname = \"FetchThenWait\"\ncomponent = {guests:?}\n\
             [[activity]]\nname = \"Fetch\"\ncomponent = {activities:?}\n\
             allowed_hosts = [\"http://{address}\"]\ntimeout_ms = 4000\n"
        ),
    );
    let host = Host::start_with(&manifest, &dir.path().join("duro.db"), &[]);
    let started = std::time::Instant::now();
    let error = fetch(&host, "stalled", &format!("http://{address}/slow")).unwrap_err();
    assert!(error.contains("reading the body"), "{error}");
    assert!(
        !error.contains("did not finish") && !error.contains("was stopped"),
        "{error}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
}
