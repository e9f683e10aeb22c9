//! Deterministic simulation of the runtime: random orchestration programs
//! (waits, timers, joins of timers due at once, races of a wait and a
//! timer, activities, continue-as-new, entity signals, calls and calls in a
//! critical section) under random interleavings of raised events, clients'
//! entity signals, clock moves, and crashes (the runtime
//! dropped right after an action, with its episodes possibly under way, and
//! started again on the same database). The clock is a `ManualClock`: timers
//! fire when the test moves it, never after a real sleep. After every step
//! the instance must show exactly what a reference model of the program says.
//!
//! CI runs `DURO_SIM_CASES` cases (default 150); a long run:
//! `DURO_SIM_CASES=5000 ./scripts/test --test all simulation -- --nocapture`

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duro::model::{Clock, ManualClock, RuntimeStatus};
use duro::runtime::{Runtime, RuntimeConfig, RuntimeError};
use duro_tests::{COMPILE_CACHE, TEST_ACTIVITIES, TEST_ENTITIES, TEST_GUESTS, guest_bytes};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};

/// An instruction of the `Program` test guest (same JSON shape).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
enum Op {
    Wait(String),
    Timer(u64),
    Race(String, u64),
    Timers(u32, u64),
    Activity(i64),
    Continue,
    Signal(i64),
    Call(i64),
    Locked(i64),
}

/// Something that happens to the instance from outside.
#[derive(Debug, Clone)]
enum Action {
    Raise(String),
    Advance(u64),
    /// A client signals `add n` to the program's Counter.
    Signal(i64),
}

/// The entity the programs use: a Counter keyed by the instance id.
const COUNTER: &str = "@counter@sim";

/// What the instance is blocked on, in the model.
#[derive(Debug, Clone, PartialEq)]
enum Blocked {
    Event(String),
    /// Due then; logs this when it fires.
    Timer(u64, Value),
    Race(String, u64),
}

/// The reference model: what the program must have logged, given what
/// happened to it. Events wait in arrival order until a wait of their name
/// takes them, across continue-as-new; a timer fires once the clock reaches
/// its due time; a race takes a buffered event first, then whichever comes.
#[derive(Debug)]
struct Model {
    ops: Vec<Op>,
    pc: usize,
    log: Vec<Value>,
    buffered: VecDeque<(String, Value)>,
    blocked: Option<Blocked>,
    now: u64,
    /// The Counter's count: every signal and call, each once, in the order
    /// each sender sent them.
    counter: i64,
}

impl Model {
    fn new(ops: Vec<Op>, now: u64) -> Model {
        let mut model = Model {
            ops,
            pc: 0,
            log: Vec::new(),
            buffered: VecDeque::new(),
            blocked: None,
            now,
            counter: 0,
        };
        model.run();
        model
    }

    fn done(&self) -> bool {
        self.pc >= self.ops.len() && self.blocked.is_none()
    }

    fn take_buffered(&mut self, name: &str) -> Option<Value> {
        let at = self.buffered.iter().position(|(n, _)| n == name)?;
        self.buffered.remove(at).map(|(_, payload)| payload)
    }

    /// Run until blocked or done.
    fn run(&mut self) {
        while self.blocked.is_none() && self.pc < self.ops.len() {
            let op = self.ops[self.pc].clone();
            match op {
                Op::Wait(name) => match self.take_buffered(&name) {
                    Some(payload) => self.log.push(payload),
                    None => {
                        self.blocked = Some(Blocked::Event(name));
                        return;
                    }
                },
                Op::Timer(0) => self.log.push(json!("t")),
                Op::Timer(ms) => {
                    self.blocked = Some(Blocked::Timer(self.now + ms, json!("t")));
                    return;
                }
                Op::Timers(count, 0) => self.log.push(json!(["t", count])),
                Op::Timers(count, ms) => {
                    self.blocked = Some(Blocked::Timer(self.now + ms, json!(["t", count])));
                    return;
                }
                Op::Race(name, ms) => match self.take_buffered(&name) {
                    Some(payload) => self.log.push(payload),
                    None if ms == 0 => self.log.push(json!("timeout")),
                    None => {
                        self.blocked = Some(Blocked::Race(name, self.now + ms));
                        return;
                    }
                },
                // Runs once the episode commits; the step settles after it.
                Op::Activity(n) => self.log.push(json!(n)),
                Op::Continue => {}
                Op::Signal(n) => self.counter += n,
                Op::Call(n) | Op::Locked(n) => {
                    self.counter += n;
                    self.log.push(json!(self.counter));
                }
            }
            self.pc += 1;
        }
    }

    fn unblock(&mut self, logged: Value) {
        self.log.push(logged);
        self.blocked = None;
        self.pc += 1;
        self.run();
    }

    fn raise(&mut self, name: &str, payload: Value) {
        match &self.blocked {
            Some(Blocked::Event(n) | Blocked::Race(n, _)) if n == name => self.unblock(payload),
            _ => self.buffered.push_back((name.to_string(), payload)),
        }
    }

    fn advance(&mut self, by: u64) {
        self.now += by;
        match self.blocked.clone() {
            Some(Blocked::Timer(due, logged)) if due <= self.now => self.unblock(logged),
            Some(Blocked::Race(_, due)) if due <= self.now => self.unblock(json!("timeout")),
            _ => {}
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    let name = prop_oneof![Just("A".to_string()), Just("B".to_string())];
    let ms = prop_oneof![Just(0u64), Just(20), Just(50)];
    prop_oneof![
        3 => name.clone().prop_map(Op::Wait),
        2 => ms.clone().prop_map(Op::Timer),
        3 => (name, ms.clone()).prop_map(|(n, t)| Op::Race(n, t)),
        2 => (2u32..5, ms).prop_map(|(k, t)| Op::Timers(k, t)),
        2 => (0i64..100).prop_map(Op::Activity),
        2 => Just(Op::Continue),
        2 => (1i64..10).prop_map(Op::Signal),
        2 => (1i64..10).prop_map(Op::Call),
        1 => (1i64..10).prop_map(Op::Locked),
    ]
}

/// An action, and whether the runtime crashes right after it.
fn action() -> impl Strategy<Value = (Action, bool)> {
    let action = prop_oneof![
        3 => prop_oneof![Just("A".to_string()), Just("B".to_string())].prop_map(Action::Raise),
        2 => (0u64..70).prop_map(Action::Advance),
        1 => (100i64..200).prop_map(Action::Signal),
    ];
    (action, proptest::bool::weighted(0.15))
}

async fn start(dir: &std::path::Path, clock: &Arc<ManualClock>) -> Runtime {
    let config = RuntimeConfig {
        compile_cache: Some(COMPILE_CACHE.into()),
        poll_interval: Duration::from_millis(20),
        clock: clock.clone(),
        ..Default::default()
    };
    let store = duro::database::open(&dir.join("duro.db")).await.unwrap();
    let runtime = Runtime::start(config, store).await.expect("runtime starts");
    runtime
        .register(guest_bytes(TEST_GUESTS), &["Program"])
        .await
        .expect("guest registers");
    runtime
        .register_activities(guest_bytes(TEST_ACTIVITIES), &["Add"])
        .await
        .expect("activities register");
    runtime
        .register_entities(guest_bytes(TEST_ENTITIES), &["Counter"])
        .await
        .expect("entities register");
    runtime.open_activities();
    runtime
}

/// Wait until neither the instance nor its Counter has work left (an
/// orchestration waiting for an entity's answer is idle while the entity
/// works).
async fn settle(runtime: &Runtime, id: &str) -> Result<(), TestCaseError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    // Two rounds in a row with nothing waiting anywhere: an answer that
    // moves work from one to the other between two reads is seen.
    let mut idle_rounds = 0;
    while idle_rounds < 2 {
        let idle = runtime.is_idle(id).await.expect("readable")
            && runtime.is_idle(COUNTER).await.expect("readable");
        idle_rounds = if idle { idle_rounds + 1 } else { 0 };
        if Instant::now() > deadline {
            return Err(TestCaseError::fail("the instance never settled"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

async fn check(
    runtime: &Runtime,
    id: &str,
    model: &Model,
    step: &str,
) -> Result<(), TestCaseError> {
    let instance = runtime.status(id).await.expect("readable").expect("exists");
    let expected = Value::Array(model.log.clone());
    if model.done() {
        prop_assert_eq!(
            instance.status,
            RuntimeStatus::Completed,
            "after {}: {:?} / {:?}",
            step,
            instance,
            model
        );
        let output: Value = serde_json::from_str(instance.output.as_deref().unwrap()).unwrap();
        prop_assert_eq!(output, expected, "after {}: {:?}", step, model);
    } else {
        prop_assert_eq!(
            instance.status,
            RuntimeStatus::Running,
            "after {}: {:?} / {:?}",
            step,
            instance,
            model
        );
        let status: Value =
            serde_json::from_str(instance.custom_status.as_deref().unwrap_or("null")).unwrap();
        prop_assert_eq!(status, expected, "after {}: {:?}", step, model);
    }
    let counter = duro::runtime::Runtime::entity_id("Counter", "sim").unwrap();
    let state = runtime.entity(&counter).await.expect("readable");
    let count: i64 = state
        .and_then(|e| e.state)
        .map_or(0, |s| s.parse().expect("a count"));
    prop_assert_eq!(
        count,
        model.counter,
        "the Counter after {}: {:?}",
        step,
        model
    );
    Ok(())
}

/// Every stored event is stamped by the simulated clock (which reaches the
/// store), never by the machine's: between the case's start and now.
async fn check_clock(
    runtime: &Runtime,
    id: &str,
    clock: &ManualClock,
    started: u64,
) -> Result<(), TestCaseError> {
    let history = runtime.history(id).await.expect("readable");
    let now = clock.now();
    for entry in &history {
        prop_assert!(
            (started..=now).contains(&entry.timestamp),
            "event {} stamped {}, outside the simulated {}..={}",
            entry.seq,
            entry.timestamp,
            started,
            now
        );
    }
    Ok(())
}

async fn run_case(ops: Vec<Op>, actions: Vec<(Action, bool)>) -> Result<usize, TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let mut runtime = start(dir.path(), &clock).await;
    // A quick first episode of `Program` seen first: the host then carries
    // the simulated instance's start into its first episode (whose commit
    // creates it), the way most starts go.
    runtime
        .start_new(
            "Program",
            Some("teacher".into()),
            &json!({ "ops": [], "log": [] }),
        )
        .await
        .expect("starts");
    settle(&runtime, "teacher").await?;
    let id = "sim";
    runtime
        .start_new(
            "Program",
            Some(id.into()),
            &json!({ "ops": ops, "log": [] }),
        )
        .await
        .expect("starts");
    let started = clock.now();
    let mut model = Model::new(ops, started);
    settle(&runtime, id).await?;
    check(&runtime, id, &model, "the start").await?;
    let mut crashes = 0;
    for (n, (action, crash)) in actions.into_iter().enumerate() {
        match &action {
            Action::Raise(name) => {
                if model.done() {
                    continue;
                }
                let payload = json!(n);
                match runtime.raise_event(id, name, &payload).await {
                    Ok(()) => model.raise(name, payload),
                    Err(e @ RuntimeError::Finished { .. }) => {
                        return Err(TestCaseError::fail(format!("{e} while the model runs")));
                    }
                    Err(e) => panic!("raise: {e}"),
                }
            }
            Action::Advance(by) => {
                clock.advance(*by);
                runtime.clock_moved();
                model.advance(*by);
            }
            Action::Signal(by) => {
                let counter = duro::runtime::Runtime::entity_id("Counter", "sim").unwrap();
                runtime
                    .signal_entity(&counter, "add", &json!(by), None)
                    .await
                    .expect("signal");
                model.counter += by;
            }
        }
        if crash {
            // Dropped at once: episodes and commits may be under way.
            drop(runtime);
            crashes += 1;
            runtime = start(dir.path(), &clock).await;
        }
        settle(&runtime, id).await?;
        check(&runtime, id, &model, &format!("action {n} {action:?}")).await?;
    }
    check_clock(&runtime, id, &clock, started).await?;
    runtime.shutdown().await;
    Ok(crashes)
}

#[test]
fn random_programs_under_random_events_clocks_and_crashes_match_the_model() {
    let cases = std::env::var("DURO_SIM_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let crashes = std::sync::atomic::AtomicUsize::new(0);
    let strategy = (
        proptest::collection::vec(op(), 1..8),
        proptest::collection::vec(action(), 0..16),
    );
    let result = runner.run(&strategy, |(ops, actions)| {
        let crashed = tokio.block_on(run_case(ops, actions))?;
        crashes.fetch_add(crashed, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    });
    println!(
        "simulation: {cases} cases, {} crashes survived",
        crashes.load(std::sync::atomic::Ordering::Relaxed)
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
