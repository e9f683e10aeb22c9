//! Orchestrations only the tests use: one that diverges from the scenario's
//! `Workflow`, a buggy one that branches on replay, ones that trap or spin,
//! and probes of the sandbox's determinism.

use duro_sdk::{Either, OrchestrationContext, Result, select, when_all};
use serde_json::{Value, json};

/// Same name as the scenario's `Workflow`, different first call: replaying a
/// `Workflow` history against this must report a divergence.
async fn workflow_with_timer_first(ctx: OrchestrationContext) -> Result<String> {
    ctx.sleep(std::time::Duration::from_secs(1)).await;
    let _: Value = ctx.wait_for_external_event("Workflow").await?;
    Ok("done".into())
}

/// Version 2 of the scenario's `WorkflowWithTimeout`: the same scheduling
/// calls in the same order, a different output. An instance started on
/// version 1 may move to it.
async fn workflow_with_timeout_v2(ctx: OrchestrationContext) -> Result<Value> {
    let input: Value = ctx.input()?;
    let timeout = input["timeout_ms"].as_u64().unwrap_or(0);
    let event = ctx.wait_for_external_event::<Value>("Workflow");
    let timer = ctx.sleep(std::time::Duration::from_millis(timeout));
    let result = match select(event, timer).await {
        Either::Left(payload) => json!({ "outcome": "event", "payload": payload? }),
        Either::Right(()) => json!({ "outcome": "timeout" }),
    };
    Ok(json!({ "version": 2, "result": result }))
}

/// A classic determinism bug: it schedules something else when replayed.
async fn fickle(ctx: OrchestrationContext) -> Result<String> {
    if ctx.is_replaying() {
        ctx.sleep(std::time::Duration::from_secs(1)).await;
    } else {
        let _: Value = ctx.wait_for_external_event("Go").await?;
    }
    Ok("unreachable on replay".into())
}

/// Joins three timers due at once, which fire in one episode (a run of
/// completions that a replay hands over in one batch), then completes with
/// the payload of `Go`. With `{"drift": true}` it is buggy: replayed, it
/// schedules a fourth timer (and drops it) after the first fires, a
/// divergence in the middle of the run.
async fn trio(ctx: OrchestrationContext) -> Result<Value> {
    let drift = ctx.input::<Value>()?["drift"] == true;
    let now = ctx.current_time();
    let mut timers: Vec<_> = (0..3).map(|_| ctx.create_timer(now)).collect();
    timers.remove(0).await;
    if drift && ctx.is_replaying() {
        drop(ctx.sleep(std::time::Duration::from_secs(3600)));
    }
    when_all(timers).await;
    ctx.wait_for_external_event("Go").await
}

/// Waits for `A` then `B`: raising `B` first exercises buffering.
async fn sequence(ctx: OrchestrationContext) -> Result<Vec<Value>> {
    let a: Value = ctx.wait_for_external_event("A").await?;
    let b: Value = ctx.wait_for_external_event("B").await?;
    Ok(vec![a, b])
}

/// Panics: a trap that must fail only its own instance.
async fn panics(_ctx: OrchestrationContext) -> Result<()> {
    panic!("deliberate panic in an orchestration");
}

/// Never yields: the step budget must stop it.
async fn spin(_ctx: OrchestrationContext) -> Result<()> {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Records what the sandbox shows before and after a wait, so the test can
/// check that replay sees the same clock and GUIDs.
async fn probe(ctx: OrchestrationContext) -> Result<Value> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let ctx_now = ctx
        .current_time()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let guid = ctx.new_guid();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let file = std::fs::read_to_string("/etc/passwd").is_ok();
    let first =
        json!({ "now": now, "ctxNow": ctx_now, "guid": guid, "env": env.len(), "file": file });
    ctx.set_custom_status(&first);
    let _: Value = ctx.wait_for_external_event("Go").await?;
    Ok(json!({ "first": first, "guid2": ctx.new_guid() }))
}

/// Grows its memory until the host's limit stops it.
async fn hog(_ctx: OrchestrationContext) -> Result<usize> {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        chunks.push(vec![1u8; 16 << 20]);
        if chunks.len() > 1024 {
            return Ok(chunks.len());
        }
    }
}

/// Counts up by continuing as new until it reaches 3.
async fn counter(ctx: OrchestrationContext) -> Result<u32> {
    let n: u32 = ctx.input()?;
    if n < 3 {
        ctx.continue_as_new(&(n + 1));
    }
    Ok(n)
}

/// An eternal counter: adds each `Add` event to its input and continues as
/// new; its custom status is the running total. Events raised while an
/// execution ends must reach the next one.
async fn eternal_counter(ctx: OrchestrationContext) -> Result<u64> {
    let total: u64 = ctx.input()?;
    ctx.set_custom_status(&total);
    let add: u64 = ctx.wait_for_external_event("Add").await?;
    ctx.continue_as_new(&(total + add));
    Ok(total + add)
}

/// Waits for `Approve`, sending itself a reminder (a fresh timer, raced
/// with a fresh wait) every `reminder_ms`: each losing wait is dropped, and
/// an `Approve` raised after some reminders must still be taken.
async fn reminders(ctx: OrchestrationContext) -> Result<Value> {
    let every: u64 = ctx.input()?;
    let mut sent = 0u32;
    loop {
        let approve = ctx.wait_for_external_event::<Value>("Approve");
        let reminder = ctx.sleep(std::time::Duration::from_millis(every));
        match select(approve, reminder).await {
            Either::Left(payload) => return Ok(json!({ "approved": payload?, "reminders": sent })),
            Either::Right(()) => {
                sent += 1;
                ctx.set_custom_status(&sent);
            }
        }
    }
}

/// Like `Reminders`, but keeps one wait alive across the races by racing a
/// reference to it.
async fn kept_wait(ctx: OrchestrationContext) -> Result<Value> {
    let every: u64 = ctx.input()?;
    let mut sent = 0u32;
    let mut approve = ctx.wait_for_external_event::<Value>("Approve");
    loop {
        let reminder = ctx.sleep(std::time::Duration::from_millis(every));
        match select(&mut approve, reminder).await {
            Either::Left(payload) => {
                return Ok(
                    json!({ "approved": payload?, "reminders": sent, "task": approve.id() }),
                );
            }
            Either::Right(()) => {
                sent += 1;
                ctx.set_custom_status(&sent);
            }
        }
    }
}

/// Two waits for the same event, the first dropped unfinished: the one
/// event raised must go to the second.
async fn second_wait(ctx: OrchestrationContext) -> Result<Value> {
    drop(ctx.wait_for_external_event::<Value>("E"));
    let payload: Value = ctx.wait_for_external_event("E").await?;
    Ok(payload)
}

/// Generation 0 waits for `Go` and continues as new; generation 1 races a
/// timer an hour away (its task #0, like generation 0's wait) with `Go`. A
/// timer that fired for generation 0 must not complete generation 1's.
async fn timer_after_continue(ctx: OrchestrationContext) -> Result<String> {
    let generation: u32 = ctx.input()?;
    if generation == 0 {
        let _: Value = ctx.wait_for_external_event("Go").await?;
        ctx.continue_as_new(&1);
        return Ok("continued".into());
    }
    let timer = ctx.sleep(std::time::Duration::from_secs(3600));
    let go = ctx.wait_for_external_event::<Value>("Go");
    Ok(match select(timer, go).await {
        Either::Left(()) => "timer".into(),
        Either::Right(_) => "event".into(),
    })
}

/// Collects one GUID per execution over three executions.
async fn guids(ctx: OrchestrationContext) -> Result<Vec<String>> {
    let mut seen: Vec<String> = ctx.input()?;
    seen.push(ctx.new_guid());
    if seen.len() < 3 {
        ctx.continue_as_new(&seen);
    }
    Ok(seen)
}

/// Sleeps with the standard library: a WASI sleep must return at once on
/// the episode's clock, not hold a host thread for an hour.
async fn std_sleep(ctx: OrchestrationContext) -> Result<String> {
    std::thread::sleep(std::time::Duration::from_secs(3600));
    let _: Value = ctx.wait_for_external_event("Go").await?;
    Ok("slept".into())
}

/// Computes for a while (`input` million steps) in every episode, then
/// waits for `Go`: guests that overlap in time.
async fn crunch(ctx: OrchestrationContext) -> Result<u64> {
    let millions: u64 = ctx.input()?;
    let mut n: u64 = 0;
    while n < millions * 1_000_000 {
        n = std::hint::black_box(n + 1);
    }
    let _: Value = ctx.wait_for_external_event("Go").await?;
    Ok(n)
}

/// Waits for `Approve` at most `input` milliseconds, twice: the second
/// wait shows that an event raised after the first timeout is kept for it.
async fn approval(ctx: OrchestrationContext) -> Result<Value> {
    let timeout = std::time::Duration::from_millis(ctx.input()?);
    let first = ctx
        .wait_for_external_event_with_timeout::<Value>("Approve", timeout)
        .await?;
    ctx.set_custom_status(&json!({ "first": first }));
    let second = ctx
        .wait_for_external_event_with_timeout::<Value>(
            "Approve",
            std::time::Duration::from_secs(3600),
        )
        .await?;
    Ok(json!({ "first": first, "second": second }))
}

/// Three activities in sequence: ((1 + 2) + 3) + input.
async fn chain(ctx: OrchestrationContext) -> Result<i64> {
    let base: i64 = ctx.input()?;
    let a: i64 = ctx.call_activity("Add", &vec![1, 2]).await?;
    let b: i64 = ctx.call_activity("Add", &vec![a, 3]).await?;
    ctx.call_activity("Add", &vec![b, base]).await
}

/// `input` activities at once, their results summed.
async fn fan_out(ctx: OrchestrationContext) -> Result<i64> {
    let n: i64 = ctx.input()?;
    let calls = (0..n).map(|i| ctx.call_activity::<_, i64>("Add", &vec![i, 1]));
    let results = duro_sdk::when_all(calls).await;
    let mut sum = 0;
    for result in results {
        sum += result?;
    }
    Ok(sum)
}

/// Calls the activity named in its input (`{"name", "input", "retries"}`),
/// retrying as asked, and reports its output or its error as a value.
async fn call_one(ctx: OrchestrationContext) -> Result<Value> {
    let call: Value = ctx.input()?;
    let name = call["name"].as_str().unwrap_or_default().to_string();
    let retries = call["retries"].as_u64().unwrap_or(0) as u32;
    let task = if retries > 0 {
        let policy = duro_sdk::RetryPolicy {
            backoff_coefficient: 2.0,
            ..duro_sdk::RetryPolicy::new(retries + 1, std::time::Duration::from_millis(100))
        };
        ctx.call_activity_with_retry::<_, Value>(&name, &call["input"], policy)
    } else {
        ctx.call_activity::<_, Value>(&name, &call["input"])
    };
    Ok(match task.await {
        Ok(output) => json!({ "ok": output }),
        Err(error) => json!({ "error": error.to_string() }),
    })
}

/// Calls `Fetch` on its input URL, waits for `Go`, and returns what the
/// fetch returned: the wait makes the next episode replay the call.
async fn fetch_then_wait(ctx: OrchestrationContext) -> Result<Value> {
    let url: String = ctx.input()?;
    let fetched: Value = ctx.call_activity("Fetch", &url).await?;
    let _: Value = ctx.wait_for_external_event("Go").await?;
    Ok(fetched)
}

/// Calls the sub-orchestration named in its input (`{"name", "id",
/// "input"}`) and reports its output or its error as a value.
async fn parent(ctx: OrchestrationContext) -> Result<Value> {
    let call: Value = ctx.input()?;
    let name = call["name"].as_str().unwrap_or_default().to_string();
    let id = call["id"].as_str().map(String::from);
    let child = ctx.call_sub_orchestration::<_, Value>(&name, id.as_deref(), &call["input"]);
    Ok(match child.await {
        Ok(output) => json!({ "ok": output }),
        Err(error) => json!({ "error": error.to_string() }),
    })
}

/// Schedules `input` timers due at once and takes them all in the next
/// episode, then takes `Go` events until one says `"stop"`: a history of
/// about twice `input` events in two episodes, then one short episode per
/// event (the replay benchmark's long histories).
async fn timers(ctx: OrchestrationContext) -> Result<u64> {
    let n: u64 = ctx.input()?;
    let now = ctx.current_time();
    when_all((0..n).map(|_| ctx.create_timer(now))).await;
    loop {
        let go: Value = ctx.wait_for_external_event("Go").await?;
        if go == "stop" {
            return Ok(n);
        }
    }
}

/// Waits for `Verdict`: `true` completes, `false` fails.
async fn verdict(ctx: OrchestrationContext) -> Result<&'static str> {
    let accepted: bool = ctx.wait_for_external_event("Verdict").await?;
    if accepted {
        Ok("accepted")
    } else {
        Err(duro_sdk::Error::msg("rejected"))
    }
}

/// Calls `Verdict` as the child `{"id"}` with up to `{"attempts"}` attempts
/// 200 ms apart, and reports its output or its last error as a value.
async fn retrying_parent(ctx: OrchestrationContext) -> Result<Value> {
    let call: Value = ctx.input()?;
    let id = call["id"].as_str().map(String::from);
    let attempts = call["attempts"].as_u64().unwrap_or(1) as u32;
    let policy = duro_sdk::RetryPolicy::new(attempts, std::time::Duration::from_millis(200));
    let child = ctx.call_sub_orchestration_with_retry::<_, Value>(
        "Verdict",
        id.as_deref(),
        &Value::Null,
        policy,
    );
    Ok(match child.await {
        Ok(output) => json!({ "ok": output }),
        Err(error) => json!({ "error": error.to_string() }),
    })
}

/// The monitor pattern: poll (an activity), sleep, continue as new, until
/// the poll says done. Input `[cycle, last]`; output the cycles run.
async fn monitor(ctx: OrchestrationContext) -> Result<u64> {
    let (cycle, last): (u64, u64) = ctx.input()?;
    let polled: i64 = ctx.call_activity("Add", &[cycle as i64, 1]).await?;
    if polled as u64 > last {
        return Ok(cycle);
    }
    ctx.sleep(std::time::Duration::from_millis(5)).await;
    ctx.continue_as_new(&(cycle + 1, last));
    Ok(cycle)
}

/// GETs its input URL with `ctx.call_http`, following 202 polling.
async fn http_caller(ctx: OrchestrationContext) -> Result<Value> {
    let url: String = ctx.input()?;
    Ok(
        match ctx
            .call_http(duro_sdk::HttpRequest::get(&url).poll_async())
            .await
        {
            Ok(response) => json!({ "status": response.status, "body": response.body }),
            Err(error) => json!({ "error": error.to_string() }),
        },
    )
}

/// One instruction of a [`program`].
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
enum Op {
    /// Wait for the event of this name; log its payload.
    Wait(String),
    /// Sleep this many milliseconds; log `"t"`.
    Timer(u64),
    /// Race the event of this name with a timer; log the payload or
    /// `"timeout"`.
    Race(String, u64),
    /// Join this many timers due at once, this many milliseconds ahead (they
    /// fire in one episode: a run of completions); log `["t", count]`.
    Timers(u32, u64),
    /// Call the `Add` activity on `[n]`; log its output.
    Activity(i64),
    /// Continue as new with the rest of the program and the log.
    Continue,
    /// Signal `add n` to the Counter keyed by the instance id; log nothing.
    Signal(i64),
    /// Call `add n` on that Counter; log the count it returns.
    Call(i64),
    /// Lock that Counter, call `add n` inside the critical section, let go;
    /// log the count.
    Locked(i64),
}

/// The input (and continue-as-new input) of a [`program`].
#[derive(serde::Serialize, serde::Deserialize)]
struct Program {
    ops: Vec<Op>,
    log: Vec<Value>,
}

/// Runs a program of the simulation's vocabulary: what it logs is checked
/// against a reference model. Its custom status is the log so far.
async fn program(ctx: OrchestrationContext) -> Result<Vec<Value>> {
    let Program { ops, mut log } = ctx.input()?;
    let counter = duro_sdk::EntityId::new("Counter", &ctx.instance_id());
    ctx.set_custom_status(&log);
    for (at, op) in ops.iter().enumerate() {
        match op {
            Op::Wait(name) => log.push(ctx.wait_for_external_event(name).await?),
            Op::Timer(ms) => {
                ctx.sleep(std::time::Duration::from_millis(*ms)).await;
                log.push(json!("t"));
            }
            Op::Timers(count, ms) => {
                let after = std::time::Duration::from_millis(*ms);
                when_all((0..*count).map(|_| ctx.sleep(after))).await;
                log.push(json!(["t", count]));
            }
            Op::Race(name, ms) => {
                let event = ctx.wait_for_external_event::<Value>(name);
                let timer = ctx.sleep(std::time::Duration::from_millis(*ms));
                log.push(match select(event, timer).await {
                    Either::Left(payload) => payload?,
                    Either::Right(()) => json!("timeout"),
                });
            }
            Op::Activity(n) => log.push(json!(ctx.call_activity::<_, i64>("Add", &[*n]).await?)),
            Op::Signal(n) => ctx.signal_entity(&counter, "add", n),
            Op::Call(n) => log.push(json!(ctx.call_entity::<_, i64>(&counter, "add", n).await?)),
            Op::Locked(n) => {
                let section = ctx.lock_entities(std::slice::from_ref(&counter)).await?;
                log.push(json!(ctx.call_entity::<_, i64>(&counter, "add", n).await?));
                drop(section);
            }
            Op::Continue => {
                let rest = ops[at + 1..].to_vec();
                ctx.continue_as_new(&Program { ops: rest, log });
                return Ok(Vec::new());
            }
        }
        ctx.set_custom_status(&log);
    }
    Ok(log)
}

/// Fails with an error the orchestration returns itself.
async fn refuses(_ctx: OrchestrationContext) -> Result<()> {
    Err(duro_sdk::Error::msg("refused on purpose"))
}

/// Calls `get` on Counter `key` `times` times and adds `step` between
/// calls: the results it saw, in order (replayed, the same).
async fn entity_caller(ctx: OrchestrationContext) -> Result<Vec<i64>> {
    let input: Value = ctx.input()?;
    let key = input["key"].as_str().unwrap_or("c").to_string();
    let times = input["times"].as_u64().unwrap_or(1);
    let counter = duro_sdk::EntityId::new("Counter", &key);
    let mut seen = Vec::new();
    for _ in 0..times {
        let after: i64 = ctx.call_entity(&counter, "add", &1).await?;
        seen.push(after);
    }
    // A failing operation's error comes back as an error.
    let failed = ctx.call_entity::<_, ()>(&counter, "fail", &()).await;
    seen.push(if failed.is_err() { -1 } else { 0 });
    ctx.signal_entity(&counter, "add", &100);
    if let Some(delay) = input["later_ms"].as_u64() {
        let at = ctx.current_time() + std::time::Duration::from_millis(delay);
        ctx.signal_entity_at(&counter, at, "add", &1000);
    }
    Ok(seen)
}

/// Moves `amount` from Account `from` to Account `to` inside a critical
/// section on both: reads, checks, then two deposits. `hold_ms` waits
/// (a durable timer) while holding the locks.
async fn transfer(ctx: OrchestrationContext) -> Result<Value> {
    let input: Value = ctx.input()?;
    let from = duro_sdk::EntityId::new("Account", input["from"].as_str().unwrap_or("a"));
    let to = duro_sdk::EntityId::new("Account", input["to"].as_str().unwrap_or("b"));
    let amount = input["amount"].as_i64().unwrap_or(1);
    let section = ctx.lock_entities(&[to.clone(), from.clone()]).await?;
    if let Some(hold) = input["hold_ms"].as_u64() {
        ctx.sleep(std::time::Duration::from_millis(hold)).await;
    }
    let balance: i64 = ctx.call_entity(&from, "get", &()).await?;
    let moved = if balance >= amount {
        ctx.call_entity::<_, i64>(&from, "deposit", &-amount)
            .await?;
        ctx.call_entity::<_, i64>(&to, "deposit", &amount).await?;
        true
    } else {
        false
    };
    drop(section);
    Ok(json!({ "moved": moved }))
}

/// Locks Account `key` and waits for the event `Release` while holding it.
async fn hold_lock(ctx: OrchestrationContext) -> Result<()> {
    let key: String = ctx.input()?;
    let _section = ctx
        .lock_entities(&[duro_sdk::EntityId::new("Account", &key)])
        .await?;
    let _: Value = ctx.wait_for_external_event("Release").await?;
    Ok(())
}

duro_sdk::export_orchestrations! {
    "EntityCaller" => entity_caller,
    "Transfer" => transfer,
    "HoldLock" => hold_lock,
    "Workflow" => workflow_with_timer_first,
    "WorkflowWithTimeout" => workflow_with_timeout_v2,
    "Fickle" => fickle,
    "Sequence" => sequence,
    "Panics" => panics,
    "Spin" => spin,
    "Probe" => probe,
    "Counter" => counter,
    "Refuses" => refuses,
    "Hog" => hog,
    "EternalCounter" => eternal_counter,
    "Reminders" => reminders,
    "KeptWait" => kept_wait,
    "SecondWait" => second_wait,
    "TimerAfterContinue" => timer_after_continue,
    "Guids" => guids,
    "StdSleep" => std_sleep,
    "Program" => program,
    "Crunch" => crunch,
    "Approval" => approval,
    "Chain" => chain,
    "FanOut" => fan_out,
    "CallOne" => call_one,
    "FetchThenWait" => fetch_then_wait,
    "Parent" => parent,
    "Verdict" => verdict,
    "Timers" => timers,
    "Trio" => trio,
    "RetryingParent" => retrying_parent,
    "Monitor" => monitor,
    "HttpCaller" => http_caller,
}
