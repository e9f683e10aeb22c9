//! Activities only the tests use: `Add` sums, `Fail` always fails,
//! `Flaky` fails its first attempts, `Trap` panics, `Attempt` reports its
//! call and attempt, `Sleep` sleeps.

use duro_sdk::{Error, Result, activity_info};
use serde_json::{Value, json};

fn add(numbers: Vec<i64>) -> Result<i64> {
    Ok(numbers.iter().sum())
}

fn fail(reason: String) -> Result<()> {
    Err(Error::msg(format!("refused: {reason}")))
}

/// Fails attempts up to `failures`, then answers with the attempt number.
fn flaky(failures: u32) -> Result<u32> {
    let attempt = activity_info().map_or(0, |info| info.attempt);
    if attempt <= failures {
        return Err(Error::msg(format!("attempt {attempt} fails on purpose")));
    }
    Ok(attempt)
}

fn trap(_: Value) -> Result<()> {
    panic!("deliberate panic in an activity");
}

/// Sleeps `millis` (a real sleep: activities see the real clock).
fn sleep(millis: u64) -> Result<u64> {
    std::thread::sleep(std::time::Duration::from_millis(millis));
    Ok(millis)
}

fn attempt(_: Value) -> Result<Value> {
    let info = activity_info().ok_or_else(|| Error::msg("no activity info"))?;
    Ok(json!({ "instance": info.instance_id, "task": info.task, "attempt": info.attempt }))
}

duro_sdk::export_activities! {
    "Add" => add,
    "Fail" => fail,
    "Flaky" => flaky,
    "Trap" => trap,
    "Attempt" => attempt,
    "Sleep" => sleep,
}
