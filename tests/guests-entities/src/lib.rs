//! Entities the end-to-end tests drive: `Counter` (add, get, reset, fail,
//! spin), `Account` (a balance that refuses to go below zero), and `Relay`
//! (passes what it is given to another entity and starts orchestrations).

use duro_sdk::{EntityContext, EntityId, Error, Result};
use serde::Deserialize;

/// A number, or the JSON text of one: Durable Functions' clients send an
/// operation's input serialized once more.
#[derive(Deserialize)]
#[serde(untagged)]
enum Amount {
    Number(i64),
    Text(String),
}

impl Amount {
    fn value(self) -> Result<i64> {
        match self {
            Amount::Number(n) => Ok(n),
            Amount::Text(text) => text
                .trim()
                .parse()
                .map_err(|_| Error::msg(format!("{text:?} is not a number"))),
        }
    }
}

fn add(ctx: &mut EntityContext<i64>, amount: Amount) -> Result<i64> {
    *ctx.state_mut() += amount.value()?;
    Ok(*ctx.state())
}

fn get(ctx: &mut EntityContext<i64>, _: serde_json::Value) -> Result<i64> {
    Ok(*ctx.state())
}

fn reset(ctx: &mut EntityContext<i64>, _: serde_json::Value) -> Result<()> {
    ctx.set_state(0);
    Ok(())
}

/// Changes the state, then fails: the change must not stay.
fn fail(ctx: &mut EntityContext<i64>, _: serde_json::Value) -> Result<()> {
    *ctx.state_mut() += 1_000_000;
    ctx.signal_entity(&EntityId::new("Counter", "fail-signals"), "add", &1);
    Err(Error::msg("this operation always fails"))
}

/// Runs until the host stops it.
fn spin(_: &mut EntityContext<i64>, _: serde_json::Value) -> Result<()> {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Sleeps an hour by the guest's clock: the sandbox's clock answers at
/// once, so it holds no host thread; then adds one.
fn nap(ctx: &mut EntityContext<i64>, _: serde_json::Value) -> Result<i64> {
    std::thread::sleep(std::time::Duration::from_secs(3600));
    *ctx.state_mut() += 1;
    Ok(*ctx.state())
}

fn deposit(ctx: &mut EntityContext<i64>, amount: i64) -> Result<i64> {
    let balance = *ctx.state() + amount;
    if balance < 0 {
        return Err(Error::msg(format!(
            "insufficient funds: balance {} cannot pay {}",
            ctx.state(),
            -amount
        )));
    }
    ctx.set_state(balance);
    Ok(balance)
}

#[derive(Deserialize)]
struct Forward {
    to: String,
    amount: i64,
}

/// Counts what passes, and signals `to` (a Counter key) with the amount.
fn forward(ctx: &mut EntityContext<i64>, input: Forward) -> Result<i64> {
    *ctx.state_mut() += 1;
    ctx.signal_entity(&EntityId::new("Counter", &input.to), "add", &input.amount);
    Ok(*ctx.state())
}

#[derive(Deserialize)]
struct Remind {
    to: String,
    amount: i64,
    after_ms: u64,
}

/// Signals `add amount` to Counter `to`, to run `after_ms` from now.
fn remind(ctx: &mut EntityContext<i64>, input: Remind) -> Result<()> {
    let at = ctx.current_time() + std::time::Duration::from_millis(input.after_ms);
    ctx.signal_entity_at(
        &EntityId::new("Counter", &input.to),
        at,
        "add",
        &input.amount,
    );
    Ok(())
}

/// Starts the orchestration `Sequence` under the given id.
fn start(ctx: &mut EntityContext<i64>, id: String) -> Result<String> {
    *ctx.state_mut() += 1;
    ctx.start_new_orchestration("Sequence", Some(&id), &serde_json::json!(3))
}

/// What a `Ledger` saw of each sender's numbered signals: every number
/// once, in order; a number skipped is kept as missing, one seen again
/// (or out of order) as a duplicate.
#[derive(Default, serde::Serialize, Deserialize)]
struct Ledger {
    count: u64,
    duplicates: u64,
    senders: std::collections::BTreeMap<String, Seen>,
}

#[derive(Default, serde::Serialize, Deserialize)]
struct Seen {
    last: u64,
    missing: Vec<u64>,
}

#[derive(Deserialize)]
struct Entry {
    sender: String,
    seq: u64,
}

fn record(ctx: &mut EntityContext<Ledger>, entry: Entry) -> Result<()> {
    let ledger = ctx.state_mut();
    ledger.count += 1;
    let seen = ledger.senders.entry(entry.sender).or_default();
    if entry.seq <= seen.last {
        ledger.duplicates += 1;
        return Ok(());
    }
    seen.missing.extend(seen.last + 1..entry.seq);
    seen.last = entry.seq;
    Ok(())
}

duro_sdk::export_entities! {
    "Ledger": Ledger => {
        "record" => record,
    },
    "Counter": i64 => {
        "add" => add,
        "get" => get,
        "reset" => reset,
        "fail" => fail,
        "spin" => spin,
        "nap" => nap,
    },
    "Account": i64 => {
        "deposit" => deposit,
        "get" => get,
    },
    "Relay": i64 => {
        "forward" => forward,
        "start" => start,
        "remind" => remind,
    },
}
