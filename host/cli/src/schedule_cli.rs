//! `duro schedule …`: the management API's schedule routes from the
//! command line, as tables or (`--json`) the API's JSON.

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::api::BASE;
use crate::cli::{Client, columns, compact, encode, print};

/// What `duro schedule` does.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// List the schedules: state, next fire time, runs started.
    List,
    /// One schedule: its definition, next five fire times, recent runs.
    Show {
        /// Schedule name.
        name: String,
    },
    /// Create a schedule at run time (a manifest's are made by deploys).
    Create {
        /// Schedule name: letters, digits, `-`, `_`, `.`.
        name: String,
        /// Cron expression: 5 fields, 6 with seconds first, or @hourly,
        /// @daily, @weekly, @monthly, @yearly.
        #[arg(long)]
        cron: String,
        /// The orchestration each tick starts.
        #[arg(long)]
        orchestration: String,
        /// IANA time zone the expression is read in.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// Input of each instance, as JSON.
        #[arg(long, default_value = "null")]
        input: String,
        /// skip, buffer_one, allow_all or terminate_previous.
        #[arg(long, default_value = "skip")]
        overlap: String,
        /// latest, all or none.
        #[arg(long, default_value = "latest")]
        catch_up: String,
        /// How late a tick may be and still fire, in milliseconds.
        #[arg(long)]
        catch_up_window_ms: Option<u64>,
        /// Fire each tick up to this much later, in milliseconds.
        #[arg(long)]
        jitter_ms: Option<u64>,
        /// No tick before this time (RFC 3339).
        #[arg(long)]
        start_at: Option<String>,
        /// No tick after this time (RFC 3339).
        #[arg(long)]
        end_at: Option<String>,
        /// Create it paused.
        #[arg(long)]
        paused: bool,
    },
    /// Pause a schedule: no tick fires until it is resumed.
    Pause {
        /// Schedule name.
        name: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a paused schedule from its next tick.
    Resume {
        /// Schedule name.
        name: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        /// Fire the ticks missed while paused (under its catch-up policy).
        #[arg(long)]
        catch_up: bool,
    },
    /// Start a tick now, under the schedule's overlap policy.
    Trigger {
        /// Schedule name.
        name: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Delete a schedule created at run time (its instances stay).
    Delete {
        /// Schedule name.
        name: String,
    },
}

/// Run `command` against the host `client` talks to.
pub(crate) async fn run(
    client: &Client,
    json: bool,
    command: ScheduleCommand,
) -> anyhow::Result<()> {
    let one = |name: &str| format!("{BASE}/schedules/{}", encode(name));
    match command {
        ScheduleCommand::List => {
            let (_, body) = client
                .call("GET", &format!("{BASE}/schedules"), None, None)
                .await?;
            print(json, &body, || list_table(&body));
        }
        ScheduleCommand::Show { name } => {
            let (_, body) = client.call("GET", &one(&name), None, None).await?;
            print(json, &body, || show_text(&body));
        }
        ScheduleCommand::Create {
            name,
            cron,
            orchestration,
            timezone,
            input,
            overlap,
            catch_up,
            catch_up_window_ms,
            jitter_ms,
            start_at,
            end_at,
            paused,
        } => {
            let input: Value = serde_json::from_str(&input)
                .with_context(|| format!("--input {input:?} is not valid JSON"))?;
            let mut definition = json!({
                "name": name, "cron": cron, "orchestration": orchestration,
                "timezone": timezone, "input": input, "overlap": overlap,
                "catchUp": catch_up, "paused": paused,
            });
            for (key, value) in [
                ("catchUpWindowMs", catch_up_window_ms.map(Value::from)),
                ("jitterMs", jitter_ms.map(Value::from)),
                ("startAt", start_at.map(Value::from)),
                ("endAt", end_at.map(Value::from)),
            ] {
                if let Some(value) = value {
                    definition[key] = value;
                }
            }
            let (_, body) = client
                .call(
                    "POST",
                    &format!("{BASE}/schedules"),
                    Some(definition.to_string()),
                    None,
                )
                .await?;
            print(json, &body, || show_text(&body));
        }
        ScheduleCommand::Pause { name, reason } => {
            let body = act(client, &one(&name), "pause", reason, false).await?;
            print(json, &body, || format!("paused {name}"));
        }
        ScheduleCommand::Resume {
            name,
            reason,
            catch_up,
        } => {
            let body = act(client, &one(&name), "resume", reason, catch_up).await?;
            print(json, &body, || {
                format!(
                    "resumed {name}; next fire {}",
                    compact(&body["nextFireTimes"][0])
                )
            });
        }
        ScheduleCommand::Trigger { name, reason } => {
            let body = act(client, &one(&name), "trigger", reason, false).await?;
            print(json, &body, || {
                let triggered = &body["triggered"];
                match triggered["instanceId"].as_str() {
                    Some(id) => format!("triggered {name}: started {id}"),
                    None => format!(
                        "triggered {name}: {} ({})",
                        compact(&triggered["decision"]),
                        compact(&body["recentRuns"][0]["reason"])
                    ),
                }
            });
        }
        ScheduleCommand::Delete { name } => {
            let (_, body) = client.call("DELETE", &one(&name), None, None).await?;
            print(json, &body, || format!("deleted {name}"));
        }
    }
    Ok(())
}

async fn act(
    client: &Client,
    path: &str,
    verb: &str,
    reason: Option<String>,
    catch_up: bool,
) -> anyhow::Result<Value> {
    let mut path = format!("{path}/{verb}?catchUp={catch_up}");
    if let Some(reason) = reason {
        path.push_str(&format!("&reason={}", encode(&reason)));
    }
    Ok(client.call("POST", &path, None, None).await?.1)
}

fn list_table(body: &Value) -> String {
    let rows = body
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            vec![
                compact(&s["name"]),
                compact(&s["definition"]["cron"]),
                compact(&s["definition"]["timezone"]),
                compact(&s["definition"]["orchestration"]),
                if s["paused"] == true {
                    "paused"
                } else {
                    "active"
                }
                .to_string(),
                compact(&s["nextFireTimes"][0]),
                compact(&s["counts"]["started"]),
                compact(&s["origin"]),
            ]
        })
        .collect();
    columns(
        &[
            "SCHEDULE",
            "CRON",
            "ZONE",
            "ORCHESTRATION",
            "STATE",
            "NEXT",
            "STARTED",
            "FROM",
        ],
        rows,
    )
}

fn show_text(body: &Value) -> String {
    let definition = &body["definition"];
    let mut out = String::new();
    for (label, value) in [
        ("schedule", &body["name"]),
        ("cron", &definition["cron"]),
        ("timezone", &definition["timezone"]),
        ("orchestration", &definition["orchestration"]),
        ("overlap", &definition["overlap"]),
        ("catch up", &definition["catchUp"]),
        ("paused", &body["paused"]),
        ("pause reason", &body["pauseReason"]),
        ("from", &body["origin"]),
        ("counts", &body["counts"]),
    ] {
        out.push_str(&format!("{label:<14}{}\n", compact(value)));
    }
    out.push_str("next fires\n");
    for time in body["nextFireTimes"].as_array().into_iter().flatten() {
        out.push_str(&format!("  {}\n", compact(time)));
    }
    let runs = body["recentRuns"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|run| {
            vec![
                compact(&run["tick"]),
                compact(&run["decision"]),
                compact(&run["instanceId"]),
                compact(&run["reason"]),
            ]
        })
        .collect();
    out.push_str(&columns(&["TICK", "DECISION", "INSTANCE", "REASON"], runs));
    out
}
