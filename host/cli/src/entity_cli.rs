//! `duro entity …`: the management API's entity routes from the command
//! line (signal, get, list, clean), as text or (`--json`) the API's JSON.

use clap::Subcommand;
use serde_json::Value;

use crate::api::BASE;
use crate::cli::{Client, columns, compact, encode, print};

/// What `duro entity` does.
#[derive(Debug, Subcommand)]
pub enum EntityCommand {
    /// Send an operation to an entity, one way (created by its first).
    Signal {
        /// Entity name.
        name: String,
        /// Entity key.
        key: String,
        /// The operation.
        operation: String,
        /// Its input, as JSON.
        #[arg(long, default_value = "null")]
        input: String,
        /// Run it no earlier than this time (RFC 3339).
        #[arg(long)]
        at: Option<String>,
    },
    /// An entity: its state, lock holder and queue.
    Get {
        /// Entity name.
        name: String,
        /// Entity key.
        key: String,
    },
    /// List entities (of one name, if given), a page at a time.
    List {
        /// Only entities of this name.
        name: Option<String>,
        /// Only keys that start with this (with a name).
        #[arg(long)]
        key_prefix: Option<String>,
        /// Page size (1 to 1000).
        #[arg(long, default_value_t = 100)]
        top: usize,
        /// Also list entities without state.
        #[arg(long)]
        include_deleted: bool,
    },
    /// Delete entities that hold nothing and release locks whose
    /// orchestration has ended.
    Clean,
}

/// Run `command` against the host `client` talks to.
pub(crate) async fn run(client: &Client, json: bool, command: EntityCommand) -> anyhow::Result<()> {
    let one = |name: &str, key: &str| format!("{BASE}/entities/{}/{}", encode(name), encode(key));
    match command {
        EntityCommand::Signal {
            name,
            key,
            operation,
            input,
            at,
        } => {
            serde_json::from_str::<Value>(&input)
                .map_err(|e| anyhow::anyhow!("--input {input:?} is not JSON: {e}"))?;
            let mut path = format!("{}?op={}", one(&name, &key), encode(&operation));
            if let Some(at) = &at {
                path.push_str(&format!("&scheduledTime={}", encode(at)));
            }
            client.call("POST", &path, Some(input), None).await?;
            let body = serde_json::json!({ "signaled": true });
            print(json, &body, || {
                format!("signaled {operation} to {}/{key}", name.to_lowercase())
            });
        }
        EntityCommand::Get { name, key } => {
            let path = format!("{}?showDetails=true", one(&name, &key));
            let (_, body) = client.call("GET", &path, None, None).await?;
            print(json, &body, || get_text(&body));
        }
        EntityCommand::List {
            name,
            key_prefix,
            top,
            include_deleted,
        } => {
            let mut path = match &name {
                Some(name) => format!("{BASE}/entities/{}", encode(name)),
                None => format!("{BASE}/entities"),
            };
            path.push_str(&format!(
                "?fetchState=true&top={top}&includeDeleted={include_deleted}"
            ));
            if let Some(prefix) = &key_prefix {
                path.push_str(&format!("&keyPrefix={}", encode(prefix)));
            }
            let (next, body) = client.call("GET", &path, None, None).await?;
            print(json, &body, || {
                let mut text = list_table(&body);
                if let Some(next) = next {
                    text.push_str(&format!("\nmore after {next}"));
                }
                text
            });
        }
        EntityCommand::Clean => {
            let (_, body) = client
                .call("POST", &format!("{BASE}/entities/clean"), None, None)
                .await?;
            print(json, &body, || {
                format!(
                    "removed {} empty entities, released {} orphaned locks",
                    compact(&body["emptyEntitiesRemoved"]),
                    compact(&body["orphanedLocksReleased"])
                )
            });
        }
    }
    Ok(())
}

fn get_text(body: &Value) -> String {
    let mut out = String::new();
    for (label, value) in [
        ("name", &body["entityId"]["name"]),
        ("key", &body["entityId"]["key"]),
        ("state", &body["state"]),
        ("locked by", &body["lockedBy"]),
        ("queued", &body["queued"]),
        ("operations", &body["operations"]),
        ("last op", &body["lastOperationTime"]),
    ] {
        out.push_str(&format!("{label:<12}{}\n", compact(value)));
    }
    out.trim_end().to_string()
}

fn list_table(body: &Value) -> String {
    let rows = body
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            vec![
                compact(&e["entityId"]["name"]),
                compact(&e["entityId"]["key"]),
                compact(&e["state"]),
                compact(&e["lockedBy"]),
                compact(&e["queued"]),
                compact(&e["lastOperationTime"]),
            ]
        })
        .collect();
    columns(
        &[
            "ENTITY",
            "KEY",
            "STATE",
            "LOCKED BY",
            "QUEUED",
            "LAST OPERATION",
        ],
        rows,
    )
}
