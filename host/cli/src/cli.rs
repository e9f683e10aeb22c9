//! The `duro` command line: `serve`, and client commands that speak to a
//! running host's management API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value;

use crate::api::{BASE, CONTINUATION_HEADER};
use crate::server::{self, ServeConfig};

/// duro: a WebAssembly function host with durable orchestrations.
#[derive(Parser, Debug)]
#[command(name = "duro", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The host client commands talk to.
    #[arg(
        long,
        global = true,
        env = "DURO_HOST",
        default_value = "http://127.0.0.1:7071"
    )]
    host: String,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// The admin key: what `duro serve` requires on the management API,
    /// deploy, the dashboard and /metrics (without one they answer on a
    /// loopback listener only), and what client commands send
    /// (`Authorization: Bearer KEY`).
    #[arg(
        long = "admin-key",
        alias = "key",
        global = true,
        env = "DURO_ADMIN_KEY",
        hide_env_values = true
    )]
    key: Option<String>,
    /// Threads of the async runtime: HTTP, the store's replies, HTTP
    /// functions. Orchestrations, entities and the SQLite writer have
    /// threads of their own, so the default is half the cores (at least
    /// one): more only wake one another for the same work.
    #[arg(long, global = true, env = "DURO_ASYNC_THREADS",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    async_threads: Option<u16>,
}

/// The async runtime's threads when `--async-threads` is not given: half
/// the cores, at least one. On two cores, one thread served the seed at 64
/// clients as fast as two and spent a fifth less CPU per lifecycle at one
/// client (BENCHMARKS.md).
fn default_async_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// The files of an app on this machine: its database and its manifest.
#[derive(clap::Args, Debug)]
struct AppFiles {
    /// Where the app's state lives: a SQLite file (created if missing) or
    /// a `postgres://user:password@host/db` URL (`?schema=name` for a schema
    /// of its own), which several hosts may share.
    #[arg(long, env = "DURO_DATABASE", default_value = ".duro/duro.db")]
    database: crate::database::Database,
    /// The app manifest (default: `duro.toml` in the current folder if there
    /// is one, as in an app made by `duro new`; else the example app's).
    #[arg(long, env = "DURO_MANIFEST")]
    manifest: Option<PathBuf>,
}

impl AppFiles {
    /// The SQLite file, for commands that work on one only.
    fn sqlite_file(&self) -> anyhow::Result<&std::path::Path> {
        match &self.database {
            crate::database::Database::Sqlite(path) => Ok(path),
            other => anyhow::bail!("this command works on a SQLite database only, not {other}"),
        }
    }

    /// The manifest given, or the default one.
    fn manifest(&self) -> PathBuf {
        self.manifest.clone().unwrap_or_else(|| {
            let here = PathBuf::from("duro.toml");
            if here.exists() {
                here
            } else {
                PathBuf::from("workflows/scenario/duro.toml")
            }
        })
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new app in the folder NAME: an orchestration, an activity,
    /// an HTTP function and their manifest.
    New {
        /// The app's name (and folder).
        name: String,
        /// The duro guest SDK to depend on (default: the one this duro was
        /// built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build an app's guests for wasm32-wasip2 and put them where its
    /// manifest names them.
    Build {
        /// The app manifest.
        #[arg(long, default_value = "duro.toml")]
        manifest: PathBuf,
    },
    /// Serve an app: its HTTP functions, its orchestrations, the management API.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "DURO_LISTEN", default_value = "127.0.0.1:7071")]
        listen: SocketAddr,
        #[command(flatten)]
        app: AppFiles,
        /// Key required by routes with auth = "function" (app routes only;
        /// it never opens the management API).
        #[arg(long, env = "DURO_FUNCTION_KEY", hide_env_values = true)]
        function_key: Option<String>,
        /// The URL clients reach this host at (e.g. behind a proxy): the
        /// base of the links the management API answers with, and a name
        /// the management API answers to besides localhost.
        #[arg(long, env = "DURO_PUBLIC_URL")]
        public_url: Option<String>,
        /// An origin (scheme://host[:port]) whose pages may change state
        /// through the management API, besides the host's own; repeatable.
        #[arg(
            long = "allowed-origin",
            env = "DURO_ALLOWED_ORIGINS",
            value_delimiter = ','
        )]
        allowed_origins: Vec<String>,
        /// Connections served at once; past it one is answered 503.
        #[arg(long, env = "DURO_MAX_CONNECTIONS", default_value_t = 4096)]
        max_connections: usize,
        /// How long a client may take to send a request's head, and how
        /// long a connection may sit idle between requests.
        #[arg(long, env = "DURO_HEADER_TIMEOUT_MS", default_value_t = 10000)]
        header_timeout_ms: u64,
        /// How long a request body may go without a byte arriving.
        #[arg(long, env = "DURO_BODY_TIMEOUT_MS", default_value_t = 10000)]
        body_timeout_ms: u64,
        /// How long an answer may wait for a client that stopped reading it.
        #[arg(long, env = "DURO_WRITE_TIMEOUT_MS", default_value_t = 30000)]
        write_timeout_ms: u64,
        /// Largest request body an HTTP function or the management API
        /// takes (413 past it).
        #[arg(long, env = "DURO_MAX_REQUEST_BYTES", default_value_t = 2 << 20)]
        max_request_bytes: usize,
        /// Largest JSON value stored for an instance: input, event payload,
        /// output, custom status, activity input and result, reason.
        #[arg(long, env = "DURO_MAX_PAYLOAD_BYTES", default_value_t = 1 << 20)]
        max_payload_bytes: usize,
        /// Most history events one execution may have; an orchestration
        /// that would pass it fails, asking for continue-as-new.
        #[arg(long, env = "DURO_MAX_HISTORY_EVENTS", default_value_t = 50_000)]
        max_history_events: u64,
        /// Most messages (events, terminate, suspend, resume) one instance
        /// may have waiting; past it a sender gets 429.
        #[arg(long, env = "DURO_MAX_INBOX_MESSAGES", default_value_t = duro_core::store::DEFAULT_MAX_INBOX)]
        max_inbox_messages: usize,
        /// Most operations that may wait for a locked entity (kept in its
        /// record); past it an operation fails (a caller gets the error, a
        /// signal is dropped and logged).
        #[arg(long, env = "DURO_MAX_ENTITY_QUEUE", default_value_t = 1_000)]
        max_entity_queue: usize,
        /// Most bytes of input those waiting operations may hold together.
        #[arg(long, env = "DURO_MAX_ENTITY_QUEUE_BYTES", default_value_t = 8 << 20)]
        max_entity_queue_bytes: usize,
        /// A file of variable values: TOML (`name = "value"`, for a `.toml`
        /// file) or dotenv (`NAME=VALUE`). Overrides DURO_VAR_<NAME>.
        #[arg(long = "variables", env = "DURO_VARIABLES_FILE", value_name = "FILE")]
        variables_file: Option<PathBuf>,
        /// A variable's value, NAME=VALUE; repeatable. Overrides the file.
        #[arg(long = "var", value_name = "NAME=VALUE")]
        var: Vec<String>,
        /// A PEM file of certificates to trust for outbound HTTPS besides
        /// the Mozilla roots (a private CA).
        #[arg(long, env = "DURO_CA_FILE")]
        ca_file: Option<PathBuf>,
        /// Where compiled components are cached (default: `$XDG_CACHE_HOME/duro`
        /// or `~/.cache/duro`; created 0700, refused if others may write it).
        #[arg(long, env = "DURO_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
        /// How long one orchestration episode (replay and new steps) may run
        /// before its instance fails.
        #[arg(long, env = "DURO_STEP_BUDGET_MS", default_value_t = 5000)]
        step_budget_ms: u64,
        /// How long one HTTP function call may run before it gets a 500.
        #[arg(long, env = "DURO_TRIGGER_BUDGET_MS", default_value_t = 30000)]
        trigger_budget_ms: u64,
        /// PostgreSQL: how long a host's leases outlive its last renewal,
        /// so how soon another host takes over the work of one that died.
        #[arg(long, env = "DURO_LEASE_TTL_MS", default_value_t = 10000)]
        lease_ttl_ms: u64,
        /// Export every request, episode, commit and activity span to this
        /// OpenTelemetry collector (OTLP over HTTP, e.g. http://127.0.0.1:4318).
        #[arg(long, env = "DURO_OTLP_ENDPOINT")]
        otlp_endpoint: Option<String>,
    },
    /// Start an orchestration instance.
    Start {
        /// Orchestration name.
        name: String,
        /// Input, as JSON.
        #[arg(long, default_value = "null")]
        input: String,
        /// Instance id (default: a new one).
        #[arg(long)]
        id: Option<String>,
    },
    /// Show an instance.
    Status {
        /// Instance id.
        id: String,
        /// Include the history.
        #[arg(long)]
        history: bool,
        /// Wait until the instance has finished, for at most this many
        /// milliseconds (a long poll: the answer comes when it finishes).
        #[arg(long, value_name = "MS", num_args = 0..=1, default_missing_value = "120000")]
        wait: Option<u64>,
    },
    /// List instances.
    List {
        /// Comma-separated runtime statuses.
        #[arg(long)]
        status: Option<String>,
        /// Orchestration name.
        #[arg(long)]
        name: Option<String>,
        /// Only instances whose input equals this JSON value.
        #[arg(long)]
        input: Option<String>,
        /// Newest first.
        #[arg(long)]
        newest_first: bool,
        /// Instance id prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// Created at or after (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Created at or before (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        top: usize,
        /// Follow continuation tokens to the end.
        #[arg(long)]
        all: bool,
    },
    /// Raise an event on an instance.
    Raise {
        /// Instance id.
        id: String,
        /// Event name.
        event: String,
        /// Payload, as JSON.
        #[arg(long, default_value = "null")]
        payload: String,
    },
    /// Terminate an instance.
    Terminate {
        /// Instance id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Suspend an instance.
    Suspend {
        /// Instance id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a suspended instance.
    Resume {
        /// Instance id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Move a running instance to the deployed version of its orchestration
    /// (refused, with the first divergence, if its history does not replay).
    Upgrade {
        /// Instance id.
        id: String,
    },
    /// Deploy a new version of the app to the running host: every in-flight
    /// instance of a changed orchestration is first replayed against the new
    /// code, and the table says which are compatible and where the others
    /// diverge. New instances start on the new version; in-flight ones stay
    /// on theirs unless --upgrade-compatible moves those that replayed.
    Deploy {
        /// The app manifest (its components are uploaded with it).
        #[arg(default_value = "duro.toml")]
        manifest: PathBuf,
        /// Check and print the table only; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Move every compatible in-flight instance to the new version.
        #[arg(long, conflicts_with = "dry_run")]
        upgrade_compatible: bool,
    },
    /// List each orchestration's deployed version and the older ones that
    /// in-flight instances still run on.
    Versions,
    /// Orchestrations started on a cron: list, show, create, pause,
    /// resume, trigger, delete.
    Schedule {
        #[command(subcommand)]
        command: crate::schedule_cli::ScheduleCommand,
    },
    /// Durable entities: signal, get, list, clean.
    Entity {
        #[command(subcommand)]
        command: crate::entity_cli::EntityCommand,
    },
    /// Start an instance again with its original input.
    Restart {
        /// Instance id.
        id: String,
        /// Under a new id (default: the same id, which must have finished).
        #[arg(long)]
        new_id: bool,
    },
    /// Delete a finished instance and its history, or (with --from instead
    /// of an id) every finished instance created in a time range.
    Purge {
        /// Instance id.
        #[arg(required_unless_present = "from", conflicts_with_all = ["from", "to", "status"])]
        id: Option<String>,
        /// Created at or after (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Created at or before (RFC 3339; default now).
        #[arg(long)]
        to: Option<String>,
        /// Comma-separated runtime statuses (default Completed,Failed,Terminated).
        #[arg(long)]
        status: Option<String>,
    },
    /// Fill a database with finished instances of one orchestration, for
    /// tests and benchmarks at scale (works beside a running host).
    Fill {
        #[command(flatten)]
        app: AppFiles,
        /// Orchestration name.
        #[arg(long, default_value = "Workflow")]
        orchestration: String,
        /// How many instances.
        #[arg(long)]
        count: usize,
        /// Their status: Completed, Failed or Terminated.
        #[arg(long, default_value = "Completed")]
        status: String,
        /// Instance n gets the id {id-prefix}{n}.
        #[arg(long, default_value = "fill-")]
        id_prefix: String,
        /// Instance n gets the input "{input-prefix}{n}" (a JSON string).
        #[arg(long, default_value = "fill-")]
        input_prefix: String,
        /// Creation times spread over the last this many seconds.
        #[arg(long, default_value_t = 600)]
        spread_secs: u64,
    },
}

/// The whole `duro` program: logging to stderr, parse, run, exit non-zero
/// with the error on failure.
pub fn main() {
    let cli = Cli::parse();
    let otlp_endpoint = match &cli.command {
        Command::Serve { otlp_endpoint, .. } => otlp_endpoint.clone(),
        _ => None,
    };
    let telemetry = match crate::telemetry::init(otlp_endpoint.as_deref()) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    let threads = cli
        .async_threads
        .map_or_else(default_async_threads, usize::from);
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli, telemetry.link.clone())));
    telemetry.shutdown();
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Run the command line; `serve` joins its spans to traces through
/// `trace_link`.
pub async fn run(cli: Cli, trace_link: Arc<dyn crate::trace::TraceLink>) -> anyhow::Result<()> {
    let client = Client {
        host: cli.host.trim_end_matches('/').to_string(),
        key: cli.key.clone(),
    };
    match cli.command {
        Command::Serve {
            listen,
            app,
            function_key,
            public_url,
            allowed_origins,
            max_connections,
            header_timeout_ms,
            body_timeout_ms,
            write_timeout_ms,
            max_request_bytes,
            max_payload_bytes,
            max_history_events,
            max_inbox_messages,
            max_entity_queue,
            max_entity_queue_bytes,
            variables_file,
            var,
            ca_file,
            cache_dir,
            step_budget_ms,
            trigger_budget_ms,
            lease_ttl_ms,
            otlp_endpoint: _,
        } => {
            server::serve(ServeConfig {
                trace_link,
                listen,
                manifest: app.manifest(),
                database: app.database,
                function_key,
                admin_key: cli.key.clone(),
                public_url,
                allowed_origins,
                http_limits: crate::listen::HttpLimits {
                    max_connections,
                    header_timeout: Duration::from_millis(header_timeout_ms),
                    body_timeout: Duration::from_millis(body_timeout_ms),
                    write_timeout: Duration::from_millis(write_timeout_ms),
                    max_request_bytes,
                },
                limits: crate::runtime::Limits {
                    max_payload_bytes,
                    max_history_events,
                    entity_queue: duro_core::entity::QueueLimits {
                        operations: max_entity_queue,
                        bytes: max_entity_queue_bytes,
                    },
                },
                max_inbox: max_inbox_messages,
                variables: crate::variables::supplied(variables_file.as_deref(), &var)?,
                ca_file,
                cache_dir,
                step_budget: Duration::from_millis(step_budget_ms),
                trigger_budget: Duration::from_millis(trigger_budget_ms),
                lease_ttl: Duration::from_millis(lease_ttl_ms),
            })
            .await
        }
        Command::Start { name, input, id } => {
            check_json(&input, "--input")?;
            let path = match id {
                Some(id) => format!("{BASE}/orchestrators/{}/{}", encode(&name), encode(&id)),
                None => format!("{BASE}/orchestrators/{}", encode(&name)),
            };
            let (_, body) = client.call("POST", &path, Some(input), None).await?;
            print(cli.json, &body, || {
                format!("started {}", body["id"].as_str().unwrap_or("?"))
            });
            Ok(())
        }
        Command::Status { id, history, wait } => {
            let mut path = format!(
                "{BASE}/instances/{}?showInput=true&showHistory={history}",
                encode(&id)
            );
            if let Some(ms) = wait {
                path.push_str(&format!("&waitForCompletion={ms}"));
            }
            let (_, body) = client.call("GET", &path, None, None).await?;
            print(cli.json, &body, || status_text(&body));
            Ok(())
        }
        Command::List {
            status,
            name,
            input,
            newest_first,
            prefix,
            from,
            to,
            top,
            all,
        } => {
            if let Some(input) = &input {
                check_json(input, "--input")?;
            }
            let mut query = vec![format!("top={top}")];
            if newest_first {
                query.push("newestFirst=true".into());
            }
            for (key, value) in [
                ("runtimeStatus", status),
                ("name", name),
                ("input", input),
                ("instanceIdPrefix", prefix),
                ("createdTimeFrom", from),
                ("createdTimeTo", to),
            ] {
                if let Some(value) = value {
                    query.push(format!("{key}={}", encode(&value)));
                }
            }
            let path = format!("{BASE}/instances?{}", query.join("&"));
            let mut rows = Vec::new();
            let mut token = None;
            loop {
                let (headers, body) = client.call("GET", &path, None, token.as_deref()).await?;
                rows.extend(body.as_array().cloned().unwrap_or_default());
                token = headers;
                if !all || token.is_none() {
                    break;
                }
            }
            let body = Value::Array(rows);
            print(cli.json, &body, || table(&body));
            if let Some(token) = token {
                eprintln!("more instances follow (continuation {token}); use --all");
            }
            Ok(())
        }
        Command::Raise { id, event, payload } => {
            check_json(&payload, "--payload")?;
            let path = format!(
                "{BASE}/instances/{}/raiseEvent/{}",
                encode(&id),
                encode(&event)
            );
            client.call("POST", &path, Some(payload), None).await?;
            print(cli.json, &Value::Null, || format!("raised {event} on {id}"));
            Ok(())
        }
        Command::Terminate { id, reason } => {
            control(&client, cli.json, "terminate", &id, reason).await
        }
        Command::Suspend { id, reason } => control(&client, cli.json, "suspend", &id, reason).await,
        Command::Resume { id, reason } => control(&client, cli.json, "resume", &id, reason).await,
        Command::Upgrade { id } => {
            let path = format!("{BASE}/instances/{}/upgrade", encode(&id));
            let (_, body) = client.call("POST", &path, None, None).await?;
            print(cli.json, &body, || {
                format!("{id} runs on {}", body["component"].as_str().unwrap_or("?"))
            });
            Ok(())
        }
        Command::Deploy {
            manifest,
            dry_run,
            upgrade_compatible,
        } => {
            let upload = crate::deploy::AppUpload::read(&manifest)?;
            let path =
                format!("{BASE}/deploy?dryRun={dry_run}&upgradeCompatible={upgrade_compatible}");
            let body = serde_json::to_string(&upload)?;
            let (_, body) = client.call("POST", &path, Some(body), None).await?;
            print(cli.json, &body, || deploy_table(&body));
            Ok(())
        }
        Command::Versions => {
            let (_, body) = client
                .call("GET", &format!("{BASE}/versions"), None, None)
                .await?;
            print(cli.json, &body, || {
                let rows = body
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| {
                        vec![
                            compact(&v["orchestration"]),
                            compact(&v["component"]),
                            if v["current"] == true { "yes" } else { "no" }.to_string(),
                            compact(&v["inFlight"]),
                        ]
                    })
                    .collect();
                columns(
                    &["ORCHESTRATION", "COMPONENT", "CURRENT", "IN FLIGHT"],
                    rows,
                )
            });
            Ok(())
        }
        Command::Restart { id, new_id } => {
            let path = format!(
                "{BASE}/instances/{}/restart?restartWithNewInstanceId={new_id}",
                encode(&id)
            );
            let (_, body) = client.call("POST", &path, None, None).await?;
            print(cli.json, &body, || {
                format!("restarted as {}", body["id"].as_str().unwrap_or("?"))
            });
            Ok(())
        }
        Command::Schedule { command } => crate::schedule_cli::run(&client, cli.json, command).await,
        Command::Entity { command } => crate::entity_cli::run(&client, cli.json, command).await,
        Command::Purge {
            id,
            from,
            to,
            status,
        } => {
            let path = match &id {
                Some(id) => format!("{BASE}/instances/{}", encode(id)),
                None => {
                    let mut query = Vec::new();
                    for (key, value) in [
                        ("createdTimeFrom", from),
                        ("createdTimeTo", to),
                        ("runtimeStatus", status),
                    ] {
                        if let Some(value) = value {
                            query.push(format!("{key}={}", encode(&value)));
                        }
                    }
                    format!("{BASE}/instances?{}", query.join("&"))
                }
            };
            let (_, body) = client.call("DELETE", &path, None, None).await?;
            print(cli.json, &body, || match &id {
                Some(id) => format!("purged {id}"),
                None => format!("purged {} instance(s)", body["instancesDeleted"]),
            });
            Ok(())
        }
        Command::New { name, sdk } => {
            let root = crate::scaffold::new_app(&name, sdk)?;
            println!(
                "created {}: cd {} && duro build && duro serve",
                root.display(),
                root.display()
            );
            Ok(())
        }
        Command::Build { manifest } => {
            let placed = crate::scaffold::build_app(&manifest)?;
            for path in placed {
                println!("built {}", path.display());
            }
            Ok(())
        }
        Command::Fill {
            app,
            orchestration,
            count,
            status,
            id_prefix,
            input_prefix,
            spread_secs,
        } => {
            let status = crate::model::RuntimeStatus::parse(&status)
                .with_context(|| format!("--status {status:?} is not a runtime status"))?;
            let spec = crate::fill::FillSpec {
                orchestration,
                count,
                status,
                id_prefix,
                input_prefix,
                spread_ms: spread_secs * 1000,
            };
            let started = std::time::Instant::now();
            let written = crate::fill::fill(app.sqlite_file()?, &app.manifest(), &spec).await?;
            print(
                cli.json,
                &serde_json::json!({ "instancesWritten": written }),
                || format!("wrote {written} instances in {:.1?}", started.elapsed()),
            );
            Ok(())
        }
    }
}

async fn control(
    client: &Client,
    json: bool,
    verb: &str,
    id: &str,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let mut path = format!("{BASE}/instances/{}/{verb}", encode(id));
    if let Some(reason) = reason {
        path.push_str(&format!("?reason={}", encode(&reason)));
    }
    client.call("POST", &path, None, None).await?;
    print(json, &Value::Null, || format!("{verb} sent to {id}"));
    Ok(())
}

fn check_json(text: &str, flag: &str) -> anyhow::Result<()> {
    serde_json::from_str::<Value>(text)
        .map(drop)
        .with_context(|| format!("{flag} {text:?} is not valid JSON"))
}

pub(crate) fn print(json: bool, body: &Value, text: impl FnOnce() -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(body).unwrap_or_default());
    } else {
        println!("{}", text());
    }
}

pub(crate) fn compact(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn status_text(body: &Value) -> String {
    let mut out = String::new();
    for key in [
        "instanceId",
        "name",
        "runtimeStatus",
        "input",
        "output",
        "customStatus",
        "createdTime",
        "lastUpdatedTime",
    ] {
        out.push_str(&format!("{key:<16} {}\n", compact(&body[key])));
    }
    if let Some(events) = body["historyEvents"].as_array() {
        out.push_str("history:\n");
        for event in events {
            out.push_str(&format!(
                "  {}  {}\n",
                compact(&event["timestamp"]),
                compact(&event["eventType"])
            ));
        }
    }
    out.trim_end().to_string()
}

fn table(body: &Value) -> String {
    let rows = body
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    ["instanceId", "name", "runtimeStatus", "createdTime"]
                        .map(|key| compact(&i[key]))
                        .to_vec()
                })
                .collect()
        })
        .unwrap_or_default();
    columns(&["INSTANCE", "NAME", "STATUS", "CREATED"], rows)
}

/// Rows under a header, each column as wide as its widest cell.
pub(crate) fn columns(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    std::iter::once(&header)
        .chain(rows.iter())
        .map(|row| {
            let last = row.len() - 1;
            row.iter()
                .enumerate()
                .map(|(c, cell)| {
                    if c == last {
                        cell.clone()
                    } else {
                        format!("{cell:<w$}", w = widths[c])
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A deploy's report: one line per in-flight instance checked.
fn deploy_table(body: &Value) -> String {
    let mut out = Vec::new();
    for o in body["orchestrations"].as_array().into_iter().flatten() {
        let what = if o["changed"] == true {
            format!("{} -> {}", short(&o["from"]), short(&o["to"]))
        } else {
            format!("unchanged ({})", short(&o["to"]))
        };
        out.push(format!("orchestration {}: {what}", compact(&o["name"])));
    }
    for name in body["removed"].as_array().into_iter().flatten() {
        out.push(format!(
            "orchestration {}: removed (no new instances)",
            compact(name)
        ));
    }
    let rows: Vec<Vec<String>> = body["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let result = match c["divergence"].as_object() {
                None if c["moved"] == true => "compatible, moved".to_string(),
                None => "compatible".to_string(),
                Some(d) => format!(
                    "diverges at event {}: expected {}, actual {}",
                    compact(&d["event"]),
                    compact(&d["expected"]),
                    compact(&d["actual"])
                ),
            };
            vec![
                compact(&c["instanceId"]),
                compact(&c["orchestration"]),
                result,
            ]
        })
        .collect();
    out.push(String::new());
    if rows.is_empty() {
        out.push("no in-flight instance of a changed orchestration".into());
    } else {
        out.push(columns(&["INSTANCE", "ORCHESTRATION", "RESULT"], rows));
    }
    if body["dryRun"] == true {
        out.push("dry run: nothing was deployed".into());
    }
    out.join("\n")
}

/// A component digest cut to its first 12 hex digits, as in a table.
fn short(digest: &Value) -> String {
    match digest.as_str() {
        Some(d) => d.trim_start_matches("sha256:").chars().take(12).collect(),
        None => "none".into(),
    }
}

/// Percent-encode a path segment or query value (every byte but the
/// unreserved ones).
///
/// ```
/// assert_eq!(duro::cli::encode("a b/\"c\""), "a%20b%2F%22c%22");
/// ```
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) struct Client {
    host: String,
    /// The admin key, sent as `Authorization: Bearer` when set.
    key: Option<String>,
}

impl Client {
    /// One request; returns the continuation header and the JSON body, or an
    /// error carrying the API's message.
    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        continuation: Option<&str>,
    ) -> anyhow::Result<(Option<String>, Value)> {
        let authority = self
            .host
            .strip_prefix("http://")
            .with_context(|| format!("--host {}: only http:// hosts are supported", self.host))?;
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .with_context(|| format!("cannot reach the duro host at {}", self.host))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(token) = continuation {
            request = request.header(CONTINUATION_HEADER, token);
        }
        if let Some(key) = &self.key {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let token = response
            .headers()
            .get(CONTINUATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let bytes = response.into_body().collect().await?.to_bytes();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if !status.is_success() {
            let message = body["error"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| compact(&body));
            bail!(
                "{} {}: {message}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            );
        }
        Ok((token, body))
    }
}
