//! The guest half of an activity call: JSON in, JSON or an error message
//! out, and which call and attempt is running.

use std::cell::RefCell;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Result;

/// Which call of an activity is running: `instance_id` and `task` together
/// name the call (use them as an idempotency key for side effects), and
/// `attempt` counts from 1.
///
/// ```
/// let info = duro_sdk::ActivityInfo { instance_id: "order-7".into(), task: 2, attempt: 1 };
/// assert_eq!(format!("{}/{}", info.instance_id, info.task), "order-7/2");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityInfo {
    /// The orchestration instance that called the activity.
    pub instance_id: String,
    /// The call's task number in that instance.
    pub task: u32,
    /// This attempt's number, from 1.
    pub attempt: u32,
}

thread_local! {
    static CURRENT: RefCell<Option<ActivityInfo>> = const { RefCell::new(None) };
}

/// The value of the variable `name` (the manifest's `[variables]`), inside
/// an activity whose manifest entry lists it in `variables`; `None` for a
/// variable it may not read or that has no value. Secrets are read the same
/// way; the host keeps them out of its logs and redacts them from what the
/// activity returns.
///
/// Orchestrations cannot read variables: a value that changes between
/// episodes would break replay. Read it in an activity and pass on what the
/// orchestration needs.
///
/// ```no_run
/// fn charge(amount: u64) -> duro_sdk::Result<String> {
///     let key = duro_sdk::variable("stripe_key")
///         .ok_or_else(|| duro_sdk::Error::msg("no stripe_key for this activity"))?;
///     Ok(format!("would charge {amount} with a key of {} characters", key.len()))
/// }
/// ```
pub fn variable(name: &str) -> Option<String> {
    crate::activity_bindings::wasi::config::store::get(name)
        .ok()
        .flatten()
}

/// The call being run, inside an activity function (none elsewhere).
///
/// ```no_run
/// fn charge(amount: u64) -> duro_sdk::Result<String> {
///     let info = duro_sdk::activity_info().expect("called as an activity");
///     let key = format!("{}-{}", info.instance_id, info.task);
///     Ok(format!("charged {amount} once under {key}"))
/// }
/// ```
pub fn activity_info() -> Option<ActivityInfo> {
    CURRENT.with(|current| current.borrow().clone())
}

/// Run an activity function on a JSON input: its JSON output, or the
/// message of its error (or of an input that does not fit).
pub fn run_activity<I, O>(
    info: ActivityInfo,
    input: &str,
    activity: impl FnOnce(I) -> Result<O>,
) -> std::result::Result<String, String>
where
    I: DeserializeOwned,
    O: Serialize,
{
    CURRENT.with(|current| *current.borrow_mut() = Some(info));
    let input: I = serde_json::from_str(input)
        .map_err(|e| format!("the activity input {input} does not fit: {e}"))?;
    let output = activity(input).map_err(|e| e.to_string())?;
    serde_json::to_string(&output)
        .map_err(|e| format!("the activity output cannot be serialized: {e}"))
}
