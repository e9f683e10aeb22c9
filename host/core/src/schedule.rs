//! Schedules: a cron expression read in a time zone, what a due tick does
//! (overlap and catch-up policies), and the pure step that turns a
//! schedule's stored state and the time into the instances to start and the
//! state after. Both stores commit that step's result in one transaction.

use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::model::Millis;
pub use crate::model::ScheduledBy;

/// Most ticks one round looks at; more due ticks wait for the next round.
pub const MAX_TICKS_PER_ROUND: usize = 10_000;

/// Runs (and pauses, resumes and triggers) a schedule's state remembers.
pub const RECENT_RUNS: usize = 50;

/// How late a tick may fire under `catch_up = "none"`.
pub const ON_TIME_MS: Millis = 5_000;

/// Longest reason a schedule keeps (a pause's, a trigger's), in bytes;
/// a longer one is cut there.
pub const MAX_REASON: usize = 1_024;

/// Default `catch_up_window_ms`: one hour.
pub const DEFAULT_CATCH_UP_WINDOW_MS: Millis = 3_600_000;

/// Longest schedule name.
pub const MAX_NAME: usize = 100;

/// What a due tick does while the schedule's previous run is still going.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Nothing: the tick is skipped (recorded).
    #[default]
    Skip,
    /// Keep the tick (the newest one) and start it when the run ends.
    BufferOne,
    /// Start it anyway.
    AllowAll,
    /// Terminate the previous run, then start it.
    TerminatePrevious,
}

/// Which ticks that fell due while nothing fired them (the host was down,
/// or busy) still fire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// The newest one, if it is within the catch-up window.
    #[default]
    Latest,
    /// Every one within the catch-up window, oldest first.
    All,
    /// None: only a tick at most [`ON_TIME_MS`] late fires.
    None,
}

/// A schedule's definition, as the manifest (`[[schedule]]`, snake_case
/// keys) and the management API (camelCase) give it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Unique among the host's schedules: letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// Five fields (minute hour day-of-month month day-of-week), six with
    /// seconds first, or `@yearly`, `@monthly`, `@weekly`, `@daily`,
    /// `@hourly`.
    pub cron: String,
    /// The IANA time zone the expression is read in.
    #[serde(default = "utc")]
    pub timezone: String,
    /// The orchestration each tick starts.
    pub orchestration: String,
    /// Its input, as JSON.
    #[serde(default)]
    pub input: serde_json::Value,
    /// What a tick does while the previous run is going.
    #[serde(default)]
    pub overlap: Overlap,
    /// Which missed ticks still fire.
    #[serde(default, alias = "catch_up")]
    pub catch_up: CatchUp,
    /// How late a tick may be and still fire (`latest`, `all`).
    #[serde(default = "default_window", alias = "catch_up_window_ms")]
    pub catch_up_window_ms: Millis,
    /// Each tick fires up to this much after its time (the same delay for
    /// a tick on every host: derived from the name and the tick).
    #[serde(default, alias = "jitter_ms")]
    pub jitter_ms: Millis,
    /// No tick before this time (RFC 3339).
    #[serde(default, alias = "start_at", skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
    /// No tick after this time (RFC 3339).
    #[serde(default, alias = "end_at", skip_serializing_if = "Option::is_none")]
    pub end_at: Option<String>,
    /// Created paused.
    #[serde(default)]
    pub paused: bool,
}

fn utc() -> String {
    "UTC".into()
}

fn default_window() -> Millis {
    DEFAULT_CATCH_UP_WINDOW_MS
}

/// A checked definition: its expression parsed, its zone found.
#[derive(Debug, Clone)]
pub struct Compiled {
    cron: croner::Cron,
    zone: chrono_tz::Tz,
    start_at: Option<Millis>,
    end_at: Option<Millis>,
}

impl ScheduleSpec {
    /// Check everything but whether the orchestration exists (the caller
    /// knows its registry); the error names the field.
    pub fn compile(&self) -> Result<Compiled, String> {
        let name = &self.name;
        if name.is_empty()
            || name.len() > MAX_NAME
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "schedule name {name:?} is not valid: 1 to {MAX_NAME} letters, digits, `-`, `_` or `.`"
            ));
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(&self.cron)
            .map_err(|e| format!("schedule `{name}`: cron {:?} is not valid: {e}", self.cron))?;
        let zone = chrono_tz::Tz::from_str(&self.timezone).map_err(|_| {
            format!(
                "schedule `{name}`: timezone {:?} is not an IANA time zone (for example \"Europe/Berlin\")",
                self.timezone
            )
        })?;
        let instant = |field: &str, value: &Option<String>| -> Result<Option<Millis>, String> {
            value
                .as_deref()
                .map(|text| {
                    DateTime::parse_from_rfc3339(text)
                        .ok()
                        .and_then(|t| Millis::try_from(t.timestamp_millis()).ok())
                        .ok_or_else(|| {
                            format!(
                                "schedule `{name}`: {field} {text:?} is not an RFC 3339 time (for example \"2026-01-01T00:00:00Z\")"
                            )
                        })
                })
                .transpose()
        };
        let start_at = instant("start_at", &self.start_at)?;
        let end_at = instant("end_at", &self.end_at)?;
        if let (Some(start), Some(end)) = (start_at, end_at)
            && end < start
        {
            return Err(format!("schedule `{name}`: end_at is before start_at"));
        }
        if self.jitter_ms > 86_400_000 {
            return Err(format!(
                "schedule `{name}`: jitter_ms {} is more than a day",
                self.jitter_ms
            ));
        }
        let compiled = Compiled {
            cron,
            zone,
            start_at,
            end_at,
        };
        // An expression that never matches (30 February) is refused here
        // rather than never firing; so is a start after the last time the
        // expression can be reckoned to (year 9999).
        let unbounded = Compiled {
            start_at: None,
            ..compiled.clone()
        };
        if unbounded.first_tick_ignoring_end(0).is_none() {
            return Err(format!(
                "schedule `{name}`: cron {:?} never matches a date",
                self.cron
            ));
        }
        if let (Some(start), None) = (start_at, compiled.first_tick_ignoring_end(0)) {
            return Err(format!(
                "schedule `{name}`: start_at {} leaves no tick of cron {:?} before the year 10000",
                rfc3339(start),
                self.cron
            ));
        }
        Ok(compiled)
    }
}

impl Compiled {
    /// The first tick strictly after `after`, within `start_at`..`end_at`.
    ///
    /// The expression is matched against local wall-clock times: a local
    /// time that does not exist (clocks spring forward) fires once, at the
    /// first valid time after the gap; one that happens twice (clocks fall
    /// back) fires once, the first time.
    pub fn next_tick(&self, after: Millis) -> Option<Millis> {
        let tick = self.first_tick_ignoring_end(after)?;
        match self.end_at {
            Some(end) if tick > end => None,
            _ => Some(tick),
        }
    }

    fn first_tick_ignoring_end(&self, after: Millis) -> Option<Millis> {
        let after = match self.start_at {
            Some(start) if start > after => start - 1,
            _ => after,
        };
        let instant = Utc
            .timestamp_millis_opt(i64::try_from(after).ok()?)
            .single()?;
        // Local wall-clock time, matched as if it were UTC (no transitions).
        // Whole seconds: the search keeps a start's fraction of a second.
        let mut local = instant
            .with_timezone(&self.zone)
            .naive_local()
            .with_nanosecond(0)?;
        for _ in 0..1_000 {
            let candidate = self
                .cron
                .find_next_occurrence(&Utc.from_utc_datetime(&local), false)
                .ok()?
                .naive_utc();
            let tick = self.instant_of(candidate)?;
            if tick > after {
                return Some(tick);
            }
            // The local time came before `after`'s instant (the repeated hour
            // after a fall-back): look further on.
            local = candidate;
        }
        None
    }

    /// The instant a local wall-clock time names: its first occurrence, or
    /// for a time in a spring-forward gap the first valid time after it.
    fn instant_of(&self, local: NaiveDateTime) -> Option<Millis> {
        use chrono::LocalResult;
        let mut probe = local;
        // Gaps are at most a few hours; probe minute by minute from the
        // start of the minute.
        for step in 0..=(48 * 60) {
            match self.zone.from_local_datetime(&probe) {
                LocalResult::Single(t) => return Millis::try_from(t.timestamp_millis()).ok(),
                LocalResult::Ambiguous(first, _) => {
                    return Millis::try_from(first.timestamp_millis()).ok();
                }
                LocalResult::None => {
                    let minute = local
                        .with_second(0)
                        .and_then(|t| t.with_nanosecond(0))
                        .unwrap_or(local);
                    probe = minute + chrono::Duration::minutes(step + 1);
                }
            }
        }
        None
    }

    /// The next `n` ticks after `after`.
    pub fn upcoming(&self, after: Millis, n: usize) -> Vec<Millis> {
        let mut ticks = Vec::with_capacity(n);
        let mut at = after;
        while ticks.len() < n {
            match self.next_tick(at) {
                Some(tick) => {
                    ticks.push(tick);
                    at = tick;
                }
                None => break,
            }
        }
        ticks
    }
}

use chrono::Timelike as _;

/// Where a schedule was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The app's manifest: changed by deploys.
    Manifest,
    /// The management API (or the CLI, or a durable client).
    Api,
}

impl Origin {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Manifest => "manifest",
            Origin::Api => "api",
        }
    }

    /// From its stored form.
    pub fn parse(text: &str) -> Option<Origin> {
        match text {
            "manifest" => Some(Origin::Manifest),
            "api" => Some(Origin::Api),
            _ => None,
        }
    }
}

/// What became of a tick (or what a client did).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Its instance was started.
    Started,
    /// Skipped: the previous run was going (`overlap = "skip"`), or a
    /// newer tick took its place in the buffer.
    Skipped,
    /// Kept until the previous run ends (`overlap = "buffer_one"`).
    Buffered,
    /// The previous run was terminated and its instance started.
    TerminatedPrevious,
    /// Not fired: too late for the catch-up policy.
    Missed,
    /// A client paused the schedule.
    Paused,
    /// A client resumed it.
    Resumed,
}

/// One entry of a schedule's recent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    /// The tick (or, for a client's action, when it happened).
    pub tick: Millis,
    /// When it was decided.
    pub at: Millis,
    /// What became of it.
    pub decision: Decision,
    /// The instance it started, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Why (a client's reason, a trigger's, the policy's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Ticks counted since the schedule was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Instances started.
    pub started: u64,
    /// Ticks skipped by the overlap policy.
    pub skipped: u64,
    /// Ticks missed (the catch-up policy).
    pub missed: u64,
}

/// A schedule's state: what the store keeps besides its definition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleState {
    /// Paused: no tick fires.
    pub paused: bool,
    /// Why it was paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
    /// The next tick not yet looked at; none once `end_at` has passed.
    pub next_tick: Option<Millis>,
    /// A tick waiting for the previous run to end (`buffer_one`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffered: Option<Millis>,
    /// The instance the schedule started last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_instance: Option<String>,
    /// Newest last, at most [`RECENT_RUNS`].
    #[serde(default)]
    pub runs: Vec<Run>,
    /// Totals.
    #[serde(default)]
    pub counts: Counts,
}

/// A schedule as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRow {
    /// Its definition.
    pub spec: ScheduleSpec,
    /// Where it was defined.
    pub origin: Origin,
    /// Its state.
    pub state: ScheduleState,
    /// When the store should next run a round for it (none: paused,
    /// ended, or waiting for a run to end).
    pub due_at: Option<Millis>,
    /// Bumped by every change: a commit names the version it read.
    pub version: u64,
}

impl ScheduleRow {
    /// Whether a buffered tick waits for its last run to end (the store
    /// makes the row due when that run ends).
    pub fn waiting(&self) -> bool {
        self.state.buffered.is_some() && !self.state.paused
    }
}

/// The id of the instance a tick starts: `<schedule>:<tick>`, the tick in
/// RFC 3339 UTC (milliseconds only when it has them).
pub fn instance_id(schedule: &str, tick: Millis) -> String {
    let time = Utc
        .timestamp_millis_opt(tick as i64)
        .single()
        .unwrap_or_default();
    let format = if tick.is_multiple_of(1000) {
        chrono::SecondsFormat::Secs
    } else {
        chrono::SecondsFormat::Millis
    };
    format!("{schedule}:{}", time.to_rfc3339_opts(format, true))
}

/// The delay of a tick under `jitter_ms`: the same on every host.
pub fn jitter(name: &str, tick: Millis, jitter_ms: Millis) -> Millis {
    if jitter_ms == 0 {
        return 0;
    }
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{name}@{tick}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(bytes) % (jitter_ms + 1)
}

/// The previous run as a round sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Previous {
    /// None, or it has finished (or is gone).
    Idle,
    /// Still going.
    Running,
}

/// What a round decided: the state after, and what to start and stop.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    /// The row after the round.
    pub row: ScheduleRow,
    /// Ticks whose instances start, oldest first.
    pub starts: Vec<Millis>,
    /// The previous run, to terminate first (`terminate_previous`).
    pub terminate: Option<String>,
    /// What the round counted (for metrics).
    pub counted: Counts,
}

impl Round {
    /// A round that has changed nothing yet.
    fn unchanged(row: &ScheduleRow) -> Round {
        Round {
            row: row.clone(),
            starts: Vec::new(),
            terminate: None,
            counted: Counts::default(),
        }
    }

    /// Whether the round changed nothing worth a write.
    pub fn is_empty(&self, before: &ScheduleRow) -> bool {
        self.row == *before && self.starts.is_empty() && self.terminate.is_none()
    }

    /// The host cannot start `tick`'s instance (its orchestration is not
    /// deployed, its id is taken by a live instance): the tick is recorded
    /// as skipped, for `reason`, and the schedule's last run stays the one
    /// before (`before`).
    pub fn refuse(&mut self, tick: Millis, reason: String, before: &ScheduleRow) {
        let Some(at) = self.starts.iter().position(|&t| t == tick) else {
            return;
        };
        self.starts.remove(at);
        self.unstart(tick, reason);
        self.row.state.last_instance = match self.starts.last() {
            Some(&last) => Some(instance_id(&self.row.spec.name, last)),
            None => before.state.last_instance.clone(),
        };
        if self.starts.is_empty() {
            self.terminate = None;
        }
    }

    /// A tick that fires at `now`: started if the previous run is not
    /// going (`running`, which a start sets), else what the overlap policy
    /// says. A round's ticks and a client's trigger both go through here.
    fn fire(&mut self, tick: Millis, now: Millis, running: &mut bool) {
        if !*running {
            self.starts.push(tick);
            *running = true;
            self.record(tick, now, Decision::Started);
            return;
        }
        match self.row.spec.overlap {
            Overlap::Skip => self.record(tick, now, Decision::Skipped),
            Overlap::BufferOne => {
                if let Some(older) = self.row.state.buffered.replace(tick) {
                    self.record(older, now, Decision::Skipped);
                }
                self.record(tick, now, Decision::Buffered);
            }
            Overlap::AllowAll => {
                self.starts.push(tick);
                self.record(tick, now, Decision::Started);
            }
            Overlap::TerminatePrevious => {
                // A tick this round started is superseded before it ran;
                // a run of an earlier round is terminated.
                let decision = match self.starts.pop() {
                    Some(superseded) => {
                        self.unstart(
                            superseded,
                            "a newer tick of the same round replaced it".into(),
                        );
                        Decision::Started
                    }
                    None => {
                        self.terminate = self.row.state.last_instance.clone();
                        Decision::TerminatedPrevious
                    }
                };
                self.starts.push(tick);
                self.record(tick, now, decision);
            }
        }
    }

    /// Record what became of `tick`, decided at `now`, and count it.
    fn record(&mut self, tick: Millis, now: Millis, decision: Decision) {
        let spec = &self.row.spec;
        let state = &mut self.row.state;
        let counted = &mut self.counted;
        let instance = matches!(decision, Decision::Started | Decision::TerminatedPrevious)
            .then(|| instance_id(&spec.name, tick));
        match decision {
            Decision::Started | Decision::TerminatedPrevious => counted.started += 1,
            Decision::Skipped => counted.skipped += 1,
            Decision::Missed => counted.missed += 1,
            _ => {}
        }
        state.counts.started += u64::from(instance.is_some());
        state.counts.skipped += u64::from(decision == Decision::Skipped);
        state.counts.missed += u64::from(decision == Decision::Missed);
        let reason = match decision {
            Decision::Skipped => Some("the previous run is still going".to_string()),
            Decision::Missed => {
                Some(format!("late past the catch-up policy ({:?})", spec.catch_up).to_lowercase())
            }
            _ => None,
        };
        remember(
            state,
            Run {
                tick,
                at: now,
                decision,
                instance,
                reason,
            },
        );
    }

    /// A tick recorded as started that does not start after all (a newer
    /// tick of the same round superseded it, or the host cannot start it):
    /// recorded as skipped, for `reason`, and counted so.
    fn unstart(&mut self, tick: Millis, reason: String) {
        let state = &mut self.row.state;
        if let Some(run) = state
            .runs
            .iter_mut()
            .rev()
            .find(|run| run.tick == tick && run.instance.is_some())
        {
            run.decision = Decision::Skipped;
            run.instance = None;
            run.reason = Some(reason);
        }
        state.counts.started -= 1;
        state.counts.skipped += 1;
        self.counted.started -= 1;
        self.counted.skipped += 1;
    }
}

/// A new schedule's row at `now`.
pub fn new_row(
    spec: ScheduleSpec,
    compiled: &Compiled,
    origin: Origin,
    now: Millis,
) -> ScheduleRow {
    let state = ScheduleState {
        paused: spec.paused,
        next_tick: compiled.next_tick(now),
        ..Default::default()
    };
    let mut row = ScheduleRow {
        spec,
        origin,
        state,
        due_at: None,
        version: 0,
    };
    row.due_at = due_at(&row, false);
    row
}

/// A changed definition: the state kept, ticks from the next one under the
/// new definition.
pub fn redefine(
    row: &ScheduleRow,
    spec: ScheduleSpec,
    compiled: &Compiled,
    now: Millis,
) -> ScheduleRow {
    let mut next = row.clone();
    let timing_changed = (
        &row.spec.cron,
        &row.spec.timezone,
        &row.spec.start_at,
        &row.spec.end_at,
    ) != (&spec.cron, &spec.timezone, &spec.start_at, &spec.end_at);
    if timing_changed {
        next.state.next_tick = compiled.next_tick(now);
    }
    // A definition's `paused` applies when it changes.
    if spec.paused != row.spec.paused {
        next.state.paused = spec.paused;
        if !spec.paused {
            next.state.next_tick = compiled.next_tick(now);
        }
    }
    next.spec = spec;
    next.due_at = due_at(&next, false);
    next
}

/// Pause (`paused`) or resume a schedule. A resume fires no tick that fell
/// due while paused, unless `catch_up` asks for them (then the catch-up
/// policy decides, as after an outage).
pub fn set_paused(
    row: &ScheduleRow,
    compiled: &Compiled,
    paused: bool,
    reason: Option<String>,
    catch_up: bool,
    now: Millis,
) -> ScheduleRow {
    let reason = bounded(reason);
    let mut next = row.clone();
    if row.state.paused == paused {
        return next;
    }
    next.state.paused = paused;
    next.state.pause_reason = if paused { reason.clone() } else { None };
    if !paused && !catch_up {
        next.state.next_tick = compiled.next_tick(now);
    }
    let decision = if paused {
        Decision::Paused
    } else {
        Decision::Resumed
    };
    remember(
        &mut next.state,
        Run {
            tick: now,
            at: now,
            decision,
            instance: None,
            reason,
        },
    );
    next.due_at = due_at(&next, false);
    next
}

/// When a row is next due: its next tick (plus jitter), unless paused or
/// ended; `now_again` when the round left due ticks for the next one.
fn due_at(row: &ScheduleRow, more_due: bool) -> Option<Millis> {
    if row.state.paused {
        return None;
    }
    if more_due {
        return Some(0);
    }
    row.state
        .next_tick
        .map(|tick| tick.saturating_add(jitter(&row.spec.name, tick, row.spec.jitter_ms)))
}

/// A client's reason, cut to [`MAX_REASON`] bytes (at a character).
fn bounded(reason: Option<String>) -> Option<String> {
    reason.map(|mut text| {
        if text.len() > MAX_REASON {
            let mut end = MAX_REASON - '…'.len_utf8();
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        text
    })
}

fn remember(state: &mut ScheduleState, run: Run) {
    state.runs.push(run);
    if state.runs.len() > RECENT_RUNS {
        let extra = state.runs.len() - RECENT_RUNS;
        state.runs.drain(..extra);
    }
}

/// One round for a due schedule at `now`, its last run `previous`: which
/// ticks fire, which are skipped, buffered or missed, and the state after.
pub fn round(row: &ScheduleRow, compiled: &Compiled, previous: Previous, now: Millis) -> Round {
    let mut out = Round::unchanged(row);
    if row.state.paused {
        out.row.due_at = None;
        return out;
    }
    let spec = &row.spec;
    let mut running = previous == Previous::Running;
    // A buffered tick whose previous run has ended.
    if let Some(tick) = out.row.state.buffered
        && !running
    {
        out.row.state.buffered = None;
        out.fire(tick, now, &mut running);
    }
    // The due ticks.
    let mut due = Vec::new();
    let mut tick = out.row.state.next_tick;
    while let Some(t) = tick {
        let fires_at = t.saturating_add(jitter(&spec.name, t, spec.jitter_ms));
        if fires_at > now || due.len() == MAX_TICKS_PER_ROUND {
            break;
        }
        due.push(t);
        tick = compiled.next_tick(t);
    }
    out.row.state.next_tick = tick;
    let more_due =
        tick.is_some_and(|t| t.saturating_add(jitter(&spec.name, t, spec.jitter_ms)) <= now);
    let late =
        |t: Millis| now.saturating_sub(t.saturating_add(jitter(&spec.name, t, spec.jitter_ms)));
    let fires: Vec<bool> = match spec.catch_up {
        CatchUp::All => due
            .iter()
            .map(|&t| late(t) <= spec.catch_up_window_ms)
            .collect(),
        CatchUp::Latest | CatchUp::None => {
            let limit = if spec.catch_up == CatchUp::Latest {
                spec.catch_up_window_ms
            } else {
                ON_TIME_MS
            };
            // The newest due tick, unless newer ones wait for the next round.
            due.iter()
                .enumerate()
                .map(|(i, &t)| !more_due && i + 1 == due.len() && late(t) <= limit)
                .collect()
        }
    };
    for (&t, fire) in due.iter().zip(fires) {
        if fire {
            out.fire(t, now, &mut running);
        } else {
            out.record(t, now, Decision::Missed);
        }
    }
    if let Some(&last) = out.starts.last() {
        out.row.state.last_instance = Some(instance_id(&spec.name, last));
    }
    out.row.due_at = due_at(&out.row, more_due);
    out
}

/// Start a tick at once (a client's trigger), under the overlap policy
/// like any tick; its instance id has the trigger's time.
pub fn trigger(
    row: &ScheduleRow,
    previous: Previous,
    reason: Option<String>,
    now: Millis,
) -> Round {
    let reason = bounded(reason);
    let mut out = Round::unchanged(row);
    out.fire(now, now, &mut (previous == Previous::Running));
    if let Some(&last) = out.starts.last() {
        out.row.state.last_instance = Some(instance_id(&row.spec.name, last));
    }
    if let Some(run) = out.row.state.runs.last_mut() {
        run.reason = Some(reason.unwrap_or_else(|| "triggered".into()));
    }
    out
}

/// Fire times a schedule's JSON lists.
pub const NEXT_FIRE_TIMES: usize = 5;

/// A schedule as the management API and the durable client show it: its
/// definition, state, next fire times and recent runs (newest first).
pub fn to_json(row: &ScheduleRow) -> serde_json::Value {
    let state = &row.state;
    let next: Vec<String> = match row.spec.compile() {
        Ok(compiled) if !state.paused => {
            let mut ticks = Vec::with_capacity(NEXT_FIRE_TIMES);
            if let Some(first) = state.next_tick {
                ticks.push(first);
                ticks.extend(compiled.upcoming(first, NEXT_FIRE_TIMES - 1));
            }
            ticks.into_iter().map(rfc3339).collect()
        }
        _ => Vec::new(),
    };
    let runs: Vec<serde_json::Value> = state
        .runs
        .iter()
        .rev()
        .map(|run| {
            serde_json::json!({
                "tick": rfc3339(run.tick),
                "at": rfc3339(run.at),
                "decision": run.decision,
                "instanceId": run.instance,
                "reason": run.reason,
            })
        })
        .collect();
    serde_json::json!({
        "name": row.spec.name,
        "origin": row.origin,
        "definition": row.spec,
        "paused": state.paused,
        "pauseReason": state.pause_reason,
        "nextFireTimes": next,
        "nextTick": state.next_tick.map(rfc3339),
        "bufferedTick": state.buffered.map(rfc3339),
        "lastInstanceId": state.last_instance,
        "counts": state.counts,
        "recentRuns": runs,
    })
}

/// RFC 3339 UTC text of a time, for people.
pub fn rfc3339(at: Millis) -> String {
    Utc.timestamp_millis_opt(at as i64)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
