//! Schedules at run time: a round for each due schedule (run by the timer
//! loop, on the runtime's clock), the manifest's schedules kept in step
//! with deploys, and clients' changes (create, change, delete, pause,
//! resume, trigger). What a round decides is `duro_core::schedule`'s; each
//! change is one store transaction against the version it read.

use std::sync::Arc;

use super::{Inner, Runtime, RuntimeError, RuntimeResult};
use crate::model::{Instance, Millis};
use crate::schedule::{
    self, Decision, Origin, Previous, Round, ScheduleRow, ScheduleSpec, ScheduledBy,
};
use crate::store::{ScheduleCommit, StoreError, StoreResult};

/// Due schedules one pass of the timer loop takes.
const ROUNDS_PER_PASS: usize = 64;

/// Times a client's change is tried against a schedule that keeps changing
/// under it (its ticks firing, another host's clients).
const CHANGE_ATTEMPTS: usize = 8;

/// Run a round for every schedule due now; true if any started instances.
pub(super) async fn fire_due(inner: &Arc<Inner>) -> StoreResult<bool> {
    // Not before the app is registered: after a restart, a tick would
    // find its orchestration unknown and be skipped.
    if !*inner.activities_open.borrow() {
        return Ok(false);
    }
    let now = inner.config.clock.now();
    let due = inner.store.due_schedules(now, ROUNDS_PER_PASS).await?;
    let mut started = false;
    for row in due {
        let name = row.spec.name.clone();
        match run_round(inner, row, now).await {
            Ok(starts) => started |= starts > 0,
            // Another host ran it, a client changed it, or its last run
            // ended meanwhile: the next pass reads it again.
            Err(StoreError::ScheduleChanged(_)) => {}
            Err(e) => tracing::warn!(schedule = %name, "a round failed: {e}"),
        }
    }
    Ok(started)
}

/// One round for a due schedule: the instances it starts.
async fn run_round(inner: &Arc<Inner>, row: ScheduleRow, now: Millis) -> StoreResult<usize> {
    let round = match row.spec.compile() {
        Ok(compiled) => {
            let previous = previous_run(inner, &row).await?;
            schedule::round(&row, &compiled, previous, now)
        }
        // A stored definition this host cannot read (a zone its database
        // does not know): paused, saying why, rather than retried forever.
        Err(why) => Round {
            row: paused_for(&row, why, now),
            starts: Vec::new(),
            terminate: None,
            counted: Default::default(),
        },
    };
    commit_round(inner, &row, round, now).await
}

fn paused_for(row: &ScheduleRow, why: String, now: Millis) -> ScheduleRow {
    let mut paused = row.clone();
    paused.state.paused = true;
    paused.state.pause_reason = Some(why.clone());
    paused.state.runs.push(schedule::Run {
        tick: now,
        at: now,
        decision: Decision::Paused,
        instance: None,
        reason: Some(why),
    });
    paused.due_at = None;
    paused
}

/// Whether the schedule's last run is still going.
async fn previous_run(inner: &Arc<Inner>, row: &ScheduleRow) -> StoreResult<Previous> {
    let Some(id) = &row.state.last_instance else {
        return Ok(Previous::Idle);
    };
    Ok(match inner.store.instance(id).await? {
        Some(instance) if !instance.status.is_terminal() => Previous::Running,
        _ => Previous::Idle,
    })
}

/// Commit what a round decided, its instances created in the same
/// transaction; returns how many started.
async fn commit_round(
    inner: &Arc<Inner>,
    before: &ScheduleRow,
    mut round: Round,
    now: Millis,
) -> StoreResult<usize> {
    let spec = &before.spec;
    let digest = inner
        .registry
        .read()
        .expect("registry poisoned")
        .get(&spec.orchestration)
        .cloned();
    let input = serde_json::to_string(&spec.input).unwrap_or_else(|_| "null".into());
    let mut starts = Vec::with_capacity(round.starts.len());
    for tick in round.starts.clone() {
        let id = schedule::instance_id(&spec.name, tick);
        let refused = match &digest {
            None => Some(format!(
                "no orchestration named `{}` is deployed",
                spec.orchestration
            )),
            Some(_) => match inner.store.instance(&id).await? {
                Some(taken) if !taken.status.is_terminal() => Some(format!(
                    "instance `{id}` exists already and has not finished"
                )),
                _ => None,
            },
        };
        if let Some(reason) = refused {
            tracing::warn!(schedule = %spec.name, "tick not started: {reason}");
            round.refuse(tick, reason, before);
            continue;
        }
        let mut instance = Instance::pending(
            id,
            spec.orchestration.clone(),
            input.clone(),
            digest.clone().unwrap_or_default(),
            now,
            None,
        );
        instance.scheduled_by = Some(ScheduledBy {
            schedule: spec.name.clone(),
            tick,
        });
        starts.push(instance);
    }
    if round.is_empty(before) {
        return Ok(0);
    }
    let started = starts.len();
    inner
        .store
        .commit_schedule(ScheduleCommit {
            name: spec.name.clone(),
            expected: Some(before.version),
            row: Some(round.row),
            starts,
            terminate: round.terminate,
            now,
        })
        .await?;
    let counted = round.counted;
    let ticks = &inner.metrics.schedule_ticks;
    for (decision, n) in [
        ("started", counted.started),
        ("skipped", counted.skipped),
        ("missed", counted.missed),
    ] {
        if n > 0 {
            ticks
                .get_or_create(&vec![
                    ("schedule", spec.name.clone()),
                    ("decision", decision.to_string()),
                ])
                .inc_by(n);
        }
    }
    if started > 0 {
        inner.wake_work();
    }
    Ok(started)
}

/// What a trigger did.
#[derive(Debug, Clone)]
pub struct Triggered {
    /// The schedule after it.
    pub schedule: ScheduleRow,
    /// What became of the tick.
    pub decision: Decision,
    /// The instance it started, if it did.
    pub instance: Option<String>,
}

impl Runtime {
    /// Every schedule.
    pub async fn schedules(&self) -> RuntimeResult<Vec<ScheduleRow>> {
        Ok(self.inner.store.schedules().await?)
    }

    /// One schedule.
    pub async fn schedule(&self, name: &str) -> RuntimeResult<ScheduleRow> {
        self.inner
            .store
            .schedule(name)
            .await?
            .ok_or_else(|| RuntimeError::NoSchedule(name.to_string()))
    }

    /// Check a definition against this host: its fields, its orchestration
    /// (registered), its input (within the payload limit).
    pub fn check_schedule(&self, spec: &ScheduleSpec) -> RuntimeResult<schedule::Compiled> {
        let compiled = spec.compile().map_err(RuntimeError::InvalidSchedule)?;
        if !self
            .inner
            .registry
            .read()
            .expect("registry poisoned")
            .contains_key(&spec.orchestration)
        {
            return Err(RuntimeError::InvalidSchedule(format!(
                "schedule `{}`: no orchestration named `{}` is registered",
                spec.name, spec.orchestration
            )));
        }
        let input = serde_json::to_string(&spec.input).unwrap_or_default();
        self.inner
            .config
            .limits
            .check_payload(&format!("the input of schedule `{}`", spec.name), &input)
            .map_err(RuntimeError::TooLarge)?;
        Ok(compiled)
    }

    /// Create a schedule from the management API.
    pub async fn create_schedule(&self, spec: ScheduleSpec) -> RuntimeResult<ScheduleRow> {
        let compiled = self.check_schedule(&spec)?;
        let now = self.inner.config.clock.now();
        let name = spec.name.clone();
        let row = schedule::new_row(spec, &compiled, Origin::Api, now);
        self.commit_change(&name, None, Some(row), now).await?;
        self.schedule(&name).await
    }

    /// Change a schedule created through the API: its state kept, ticks
    /// from the next one under the new definition.
    pub async fn update_schedule(&self, spec: ScheduleSpec) -> RuntimeResult<ScheduleRow> {
        let compiled = self.check_schedule(&spec)?;
        let name = spec.name.clone();
        self.change(&name, |row, now| {
            refuse_manifest(row)?;
            Ok(schedule::redefine(row, spec.clone(), &compiled, now))
        })
        .await
    }

    /// Delete a schedule created through the API (its runs stay).
    pub async fn delete_schedule(&self, name: &str) -> RuntimeResult<()> {
        let _one_at_a_time = self.inner.schedule_changes.lock().await;
        for attempt in 0..CHANGE_ATTEMPTS {
            pause_before(attempt).await;
            let row = self.schedule(name).await?;
            refuse_manifest(&row)?;
            let now = self.inner.config.clock.now();
            match self.commit_change(name, Some(row.version), None, now).await {
                Err(RuntimeError::ScheduleBusy(_)) => continue,
                done => return done,
            }
        }
        Err(RuntimeError::ScheduleBusy(name.to_string()))
    }

    /// Pause a schedule, or resume it (`catch_up`: let the catch-up policy
    /// fire the ticks that fell due while it was paused).
    pub async fn pause_schedule(
        &self,
        name: &str,
        paused: bool,
        reason: Option<String>,
        catch_up: bool,
    ) -> RuntimeResult<ScheduleRow> {
        self.change(name, |row, now| {
            let compiled = row.spec.compile().map_err(RuntimeError::InvalidSchedule)?;
            Ok(schedule::set_paused(
                row,
                &compiled,
                paused,
                reason.clone(),
                catch_up,
                now,
            ))
        })
        .await
    }

    /// Start a tick now, under the schedule's overlap policy.
    pub async fn trigger_schedule(
        &self,
        name: &str,
        reason: Option<String>,
    ) -> RuntimeResult<Triggered> {
        let _one_at_a_time = self.inner.schedule_changes.lock().await;
        for attempt in 0..CHANGE_ATTEMPTS {
            pause_before(attempt).await;
            let row = self.schedule(name).await?;
            // Two triggers in one millisecond would name one instance: the
            // later one takes the next free millisecond.
            let mut now = self.inner.config.clock.now();
            for _ in 0..1_000 {
                let id = schedule::instance_id(name, now);
                if self.inner.store.instance(&id).await?.is_none() {
                    break;
                }
                now += 1;
            }
            let previous = previous_run(&self.inner, &row).await?;
            let round = schedule::trigger(&row, previous, reason.clone(), now);
            match commit_round(&self.inner, &row, round, now).await {
                Err(StoreError::ScheduleChanged(_)) => continue,
                Err(e) => return Err(e.into()),
                Ok(started) => {
                    let schedule = self.schedule(name).await?;
                    let last = schedule.state.runs.last();
                    return Ok(Triggered {
                        // The trigger's own run, as committed (the host may
                        // have refused its start).
                        decision: last.map_or(Decision::Skipped, |run| run.decision),
                        instance: (started > 0)
                            .then(|| last.and_then(|run| run.instance.clone()))
                            .flatten(),
                        schedule,
                    });
                }
            }
        }
        Err(RuntimeError::ScheduleBusy(name.to_string()))
    }

    /// Refuse a manifest whose schedules a deploy could not apply: one
    /// with the name of a schedule made through the API (checked before
    /// anything is deployed).
    pub async fn check_manifest_schedules(&self, specs: &[ScheduleSpec]) -> RuntimeResult<()> {
        refuse_api_names(&self.schedules().await?, specs)
    }

    /// Make the stored manifest schedules the app's: new ones created,
    /// changed ones redefined (their state kept), ones no longer in the
    /// manifest deleted. Schedules created through the API are left alone;
    /// a manifest schedule whose name one of them has is refused.
    pub async fn sync_manifest_schedules(&self, specs: &[ScheduleSpec]) -> RuntimeResult<()> {
        let mut compiled = Vec::with_capacity(specs.len());
        for spec in specs {
            compiled.push(self.check_schedule(spec)?);
        }
        let stored = self.schedules().await?;
        // Before changing anything: all of the manifest applies, or none.
        refuse_api_names(&stored, specs)?;
        for (spec, compiled) in specs.iter().zip(&compiled) {
            match stored.iter().find(|row| row.spec.name == spec.name) {
                Some(row) if row.spec == *spec => {}
                Some(_) => {
                    self.change(&spec.name, |row, now| {
                        Ok(schedule::redefine(row, spec.clone(), compiled, now))
                    })
                    .await?;
                }
                None => {
                    let now = self.inner.config.clock.now();
                    let row = schedule::new_row(spec.clone(), compiled, Origin::Manifest, now);
                    match self.commit_change(&spec.name, None, Some(row), now).await {
                        // Another host of the same app created it first.
                        Err(RuntimeError::ScheduleExists(_)) => {}
                        done => done?,
                    }
                }
            }
        }
        for row in stored {
            if row.origin == Origin::Manifest && !specs.iter().any(|s| s.name == row.spec.name) {
                let now = self.inner.config.clock.now();
                match self
                    .commit_change(&row.spec.name, Some(row.version), None, now)
                    .await
                {
                    // Changed or deleted meanwhile (another host's deploy).
                    Err(RuntimeError::ScheduleBusy(_) | RuntimeError::NoSchedule(_)) => {}
                    done => done?,
                }
            }
        }
        self.inner.timers.notify_one();
        Ok(())
    }

    /// Read, change with `edit`, commit against the version read; again
    /// if the schedule changed meanwhile.
    async fn change(
        &self,
        name: &str,
        edit: impl Fn(&ScheduleRow, Millis) -> RuntimeResult<ScheduleRow>,
    ) -> RuntimeResult<ScheduleRow> {
        let _one_at_a_time = self.inner.schedule_changes.lock().await;
        for attempt in 0..CHANGE_ATTEMPTS {
            pause_before(attempt).await;
            let row = self.schedule(name).await?;
            let now = self.inner.config.clock.now();
            let next = edit(&row, now)?;
            if next == row {
                return Ok(row);
            }
            match self
                .commit_change(name, Some(row.version), Some(next), now)
                .await
            {
                Err(RuntimeError::ScheduleBusy(_)) => continue,
                Err(e) => return Err(e),
                Ok(()) => return self.schedule(name).await,
            }
        }
        Err(RuntimeError::ScheduleBusy(name.to_string()))
    }

    async fn commit_change(
        &self,
        name: &str,
        expected: Option<u64>,
        row: Option<ScheduleRow>,
        now: Millis,
    ) -> RuntimeResult<()> {
        self.inner
            .store
            .commit_schedule(ScheduleCommit {
                name: name.to_string(),
                expected,
                row,
                starts: Vec::new(),
                terminate: None,
                now,
            })
            .await?;
        // Its due time may be sooner than the timer loop's wait.
        self.inner.timers.notify_one();
        Ok(())
    }
}

/// A short, growing pause before trying a change again (its schedule's
/// round, or another host, committed first).
async fn pause_before(attempt: usize) {
    if attempt > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5 << attempt.min(6))).await;
    }
}

/// Refuse manifest schedules named like ones made through the API.
fn refuse_api_names(stored: &[ScheduleRow], specs: &[ScheduleSpec]) -> RuntimeResult<()> {
    for spec in specs {
        if stored
            .iter()
            .any(|row| row.spec.name == spec.name && row.origin == Origin::Api)
        {
            return Err(RuntimeError::InvalidSchedule(format!(
                "schedule `{}` exists already, made through the API: delete it there, \
                 or name the manifest's another way",
                spec.name
            )));
        }
    }
    Ok(())
}

fn refuse_manifest(row: &ScheduleRow) -> RuntimeResult<()> {
    match row.origin {
        Origin::Manifest => Err(RuntimeError::ScheduleFromManifest(row.spec.name.clone())),
        Origin::Api => Ok(()),
    }
}
