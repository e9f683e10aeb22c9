//! The pure schedule step on an injected clock: cron in time zones across
//! daylight-saving changes, every overlap and catch-up policy, start and
//! end, pause and resume, a thousand ticks without sleeping.

use super::*;

fn at(text: &str) -> Millis {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .timestamp_millis() as Millis
}

fn spec(cron: &str, timezone: &str) -> ScheduleSpec {
    serde_json::from_value(serde_json::json!({
        "name": "nightly",
        "cron": cron,
        "timezone": timezone,
        "orchestration": "Workflow",
    }))
    .unwrap()
}

fn ticks(cron: &str, timezone: &str, after: &str, n: usize) -> Vec<String> {
    let compiled = spec(cron, timezone).compile().unwrap();
    compiled
        .upcoming(at(after), n)
        .into_iter()
        .map(rfc3339)
        .collect()
}

#[test]
fn a_skipped_local_time_fires_once_at_the_next_valid_time() {
    // Berlin springs forward on 2026-03-29 at 02:00 (to 03:00 CEST).
    assert_eq!(
        ticks("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", 3),
        [
            "2026-03-29T01:00:00.000Z", // 03:00 CEST: the first valid time
            "2026-03-30T00:30:00.000Z",
            "2026-03-31T00:30:00.000Z",
        ]
    );
    // New York springs forward on 2026-03-08 at 02:00 (to 03:00 EDT).
    assert_eq!(
        ticks("30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", 2),
        ["2026-03-08T07:00:00.000Z", "2026-03-09T06:30:00.000Z"]
    );
    // Every quarter hour: 02:00 to 02:45 do not exist and fire once, at 03:00.
    assert_eq!(
        ticks("*/15 * * * *", "Europe/Berlin", "2026-03-29T00:40:00Z", 3),
        [
            "2026-03-29T00:45:00.000Z", // 01:45 CET
            "2026-03-29T01:00:00.000Z", // 03:00 CEST
            "2026-03-29T01:15:00.000Z",
        ]
    );
}

#[test]
fn a_repeated_local_time_fires_once() {
    // Berlin falls back on 2026-10-25 at 03:00 CEST (to 02:00 CET).
    assert_eq!(
        ticks("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", 2),
        ["2026-10-25T00:30:00.000Z", "2026-10-26T01:30:00.000Z"]
    );
    // New York falls back on 2026-11-01 at 02:00 EDT (to 01:00 EST).
    assert_eq!(
        ticks("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 2),
        ["2026-11-01T05:30:00.000Z", "2026-11-02T06:30:00.000Z"]
    );
    // Hourly: local 02:00 happens twice and fires the first time only.
    assert_eq!(
        ticks("0 * * * *", "Europe/Berlin", "2026-10-24T23:30:00Z", 2),
        ["2026-10-25T00:00:00.000Z", "2026-10-25T02:00:00.000Z"]
    );
    // Starting inside the repeated hour (a restart then) repeats nothing.
    assert_eq!(
        ticks("30 2 * * *", "Europe/Berlin", "2026-10-25T01:10:00Z", 1),
        ["2026-10-26T01:30:00.000Z"]
    );
}

#[test]
fn seconds_shorthands_and_utc_default() {
    assert_eq!(
        ticks("*/20 * * * * *", "UTC", "2026-01-01T00:00:00Z", 3),
        [
            "2026-01-01T00:00:20.000Z",
            "2026-01-01T00:00:40.000Z",
            "2026-01-01T00:01:00.000Z"
        ]
    );
    assert_eq!(
        ticks("@daily", "UTC", "2026-01-01T10:00:00Z", 1),
        ["2026-01-02T00:00:00.000Z"]
    );
    let default: ScheduleSpec = serde_json::from_value(serde_json::json!({
        "name": "n", "cron": "@hourly", "orchestration": "W"
    }))
    .unwrap();
    assert_eq!(default.timezone, "UTC");
    assert_eq!(default.overlap, Overlap::Skip);
    assert_eq!(default.catch_up, CatchUp::Latest);
    assert_eq!(default.catch_up_window_ms, 3_600_000);
}

#[test]
fn bad_definitions_are_refused_naming_the_field() {
    let refused = |edit: &dyn Fn(&mut ScheduleSpec)| {
        let mut s = spec("* * * * *", "UTC");
        edit(&mut s);
        s.compile().unwrap_err()
    };
    assert!(
        refused(&|s| s.cron = "61 * * * *".into()).contains("cron \"61 * * * *\" is not valid")
    );
    assert!(refused(&|s| s.cron = "0 0 30 2 *".into()).contains("never matches"));
    assert!(
        refused(&|s| s.start_at = Some("9999-12-31T23:59:30Z".into()))
            .contains("leaves no tick of cron \"* * * * *\" before the year 10000")
    );
    assert!(refused(&|s| s.timezone = "Mars/Olympus".into()).contains("not an IANA time zone"));
    assert!(refused(&|s| s.name = "a b".into()).contains("schedule name \"a b\" is not valid"));
    assert!(refused(&|s| s.start_at = Some("tomorrow".into())).contains("start_at \"tomorrow\""));
    assert!(
        refused(&|s| {
            s.start_at = Some("2027-01-01T00:00:00Z".into());
            s.end_at = Some("2026-01-01T00:00:00Z".into());
        })
        .contains("end_at is before start_at")
    );
    let unknown = serde_json::from_value::<ScheduleSpec>(serde_json::json!({
        "name": "n", "cron": "@hourly", "orchestration": "W", "overlapp": "skip"
    }));
    assert!(unknown.unwrap_err().to_string().contains("overlapp"));
}

/// A row of a per-minute schedule whose next tick is `first`.
fn row(overlap: Overlap, catch_up: CatchUp, first: Millis) -> (ScheduleRow, Compiled) {
    let mut s = spec("* * * * *", "UTC");
    s.overlap = overlap;
    s.catch_up = catch_up;
    let compiled = s.compile().unwrap();
    let row = new_row(s, &compiled, Origin::Manifest, first - 1);
    assert_eq!(row.state.next_tick, Some(first));
    (row, compiled)
}

const MINUTE: Millis = 60_000;

#[test]
fn a_thousand_ticks_fire_once_each_without_sleeping() {
    let t0 = at("2026-01-01T00:00:00Z");
    let (mut row, compiled) = row(Overlap::Skip, CatchUp::Latest, t0);
    let mut started = Vec::new();
    for _ in 0..1_000 {
        let now = row.due_at.unwrap();
        let fired = round(&row, &compiled, Previous::Idle, now);
        started.extend(fired.starts.iter().map(|&t| instance_id("nightly", t)));
        // The same round again (another host, or a retry) fires nothing new.
        row = fired.row;
        assert!(idle_round(&row, &compiled, now).starts.is_empty());
    }
    assert_eq!(started.len(), 1_000);
    assert_eq!(started[0], "nightly:2026-01-01T00:00:00Z");
    assert_eq!(started[999], instance_id("nightly", t0 + 999 * MINUTE));
    assert_eq!(row.state.counts.started, 1_000);
    assert_eq!(row.state.runs.len(), RECENT_RUNS);
}

/// A round at `now` with the previous run idle.
fn idle_round(row: &ScheduleRow, compiled: &Compiled, now: Millis) -> Round {
    super::round(row, compiled, Previous::Idle, now)
}

#[test]
fn every_overlap_policy_while_the_previous_run_is_going() {
    let t0 = at("2026-01-01T00:00:00Z");
    for (overlap, decision, starts) in [
        (Overlap::Skip, Decision::Skipped, 0),
        (Overlap::BufferOne, Decision::Buffered, 0),
        (Overlap::AllowAll, Decision::Started, 1),
        (Overlap::TerminatePrevious, Decision::TerminatedPrevious, 1),
    ] {
        let (row, compiled) = row(overlap, CatchUp::Latest, t0);
        let first = idle_round(&row, &compiled, t0);
        assert_eq!(first.starts, [t0]);
        let second = super::round(&first.row, &compiled, Previous::Running, t0 + MINUTE);
        assert_eq!(second.starts.len(), starts, "{overlap:?}");
        assert_eq!(second.row.state.runs.last().unwrap().decision, decision);
        match overlap {
            Overlap::TerminatePrevious => {
                assert_eq!(
                    second.terminate.as_deref(),
                    Some("nightly:2026-01-01T00:00:00Z")
                );
                assert_eq!(
                    second.row.state.last_instance.as_deref(),
                    Some("nightly:2026-01-01T00:01:00Z")
                );
            }
            Overlap::BufferOne => {
                assert_eq!(second.row.state.buffered, Some(t0 + MINUTE));
                assert!(second.row.waiting());
                // A newer tick takes the buffer's place; the older is skipped.
                let third =
                    super::round(&second.row, &compiled, Previous::Running, t0 + 2 * MINUTE);
                assert_eq!(third.row.state.buffered, Some(t0 + 2 * MINUTE));
                assert_eq!(third.row.state.counts.skipped, 1);
                // The run ends (the store makes the row due): the buffered tick starts.
                let ended =
                    super::round(&third.row, &compiled, Previous::Idle, t0 + 2 * MINUTE + 5);
                assert_eq!(ended.starts, [t0 + 2 * MINUTE]);
                assert_eq!(ended.row.state.buffered, None);
            }
            _ => assert_eq!(second.terminate, None),
        }
    }
}

#[test]
fn catch_up_after_an_hour_long_outage() {
    let t0 = at("2026-01-01T00:00:00Z");
    // Down from t0 to 30 s past the 60th minute: 61 ticks fell due.
    let now = t0 + 60 * MINUTE + 30_000;
    let cases = [
        (CatchUp::Latest, Overlap::Skip, 1, 60),
        (CatchUp::All, Overlap::AllowAll, 60, 1), // t0 is 1 h 30 s late
        (CatchUp::All, Overlap::Skip, 1, 1),      // the rest skipped
        (CatchUp::None, Overlap::AllowAll, 0, 61),
    ];
    for (catch_up, overlap, started, missed) in cases {
        let (row, compiled) = row(overlap, catch_up, t0);
        let round = idle_round(&row, &compiled, now);
        assert_eq!(round.starts.len(), started, "{catch_up:?} {overlap:?}");
        assert_eq!(round.counted.missed, missed, "{catch_up:?} {overlap:?}");
        assert_eq!(round.row.state.next_tick, Some(t0 + 61 * MINUTE));
        assert_eq!(round.row.due_at, Some(t0 + 61 * MINUTE));
        if catch_up == CatchUp::Latest {
            assert_eq!(round.starts, [t0 + 60 * MINUTE]);
        }
    }
    // Shorter than the window under `none`: a tick on time still fires.
    let (row, compiled) = row(Overlap::Skip, CatchUp::None, t0);
    assert_eq!(idle_round(&row, &compiled, t0 + 2_000).starts, [t0]);
}

#[test]
fn a_long_outage_is_worked_through_in_rounds() {
    let t0 = at("2026-01-01T00:00:00Z");
    let mut s = spec("* * * * * *", "UTC"); // every second
    s.catch_up = CatchUp::Latest;
    let compiled = s.compile().unwrap();
    let mut row = new_row(s, &compiled, Origin::Api, t0 - 1);
    let now = t0 + 3 * 86_400_000; // three days: 259,201 ticks
    let mut rounds = 0;
    let mut started = Vec::new();
    while row.due_at.is_some_and(|due| due <= now) {
        let round = idle_round(&row, &compiled, now);
        started.extend(round.starts);
        row = round.row;
        rounds += 1;
    }
    assert_eq!(started, [now]);
    assert_eq!(row.state.counts.missed, 259_200);
    assert_eq!(rounds, 26);
}

#[test]
fn start_and_end_bound_the_ticks() {
    let mut s = spec("0 * * * *", "UTC");
    s.start_at = Some("2026-01-01T05:30:00Z".into());
    s.end_at = Some("2026-01-01T08:00:00Z".into());
    let compiled = s.compile().unwrap();
    assert_eq!(
        compiled
            .upcoming(at("2026-01-01T00:00:00Z"), 10)
            .into_iter()
            .map(rfc3339)
            .collect::<Vec<_>>(),
        [
            "2026-01-01T06:00:00.000Z",
            "2026-01-01T07:00:00.000Z",
            "2026-01-01T08:00:00.000Z"
        ]
    );
    let mut row = new_row(s, &compiled, Origin::Api, at("2026-01-01T00:00:00Z"));
    for _ in 0..3 {
        let now = row.due_at.unwrap();
        row = idle_round(&row, &compiled, now).row;
    }
    assert_eq!((row.state.next_tick, row.due_at), (None, None));
    assert_eq!(row.state.counts.started, 3);
}

#[test]
fn pause_and_resume_fire_no_burst_unless_asked() {
    let t0 = at("2026-01-01T00:00:00Z");
    let (row, compiled) = row(Overlap::Skip, CatchUp::All, t0);
    let paused = set_paused(
        &row,
        &compiled,
        true,
        Some("maintenance".into()),
        false,
        t0 - 1,
    );
    assert_eq!(paused.due_at, None);
    assert_eq!(paused.state.pause_reason.as_deref(), Some("maintenance"));
    assert!(
        idle_round(&paused, &compiled, t0 + 30 * MINUTE)
            .starts
            .is_empty()
    );
    // Resumed half an hour later: the next tick is the next minute.
    let now = t0 + 30 * MINUTE + 10_000;
    let resumed = set_paused(&paused, &compiled, false, None, false, now);
    assert_eq!(resumed.due_at, Some(t0 + 31 * MINUTE));
    assert_eq!(
        resumed.state.runs.last().unwrap().decision,
        Decision::Resumed
    );
    assert!(idle_round(&resumed, &compiled, now).starts.is_empty());
    // Asked to catch up: the policy (all, skipping overlaps) decides.
    let caught = set_paused(&paused, &compiled, false, None, true, now);
    let round = idle_round(&caught, &compiled, now);
    assert_eq!(round.starts, [t0]);
    assert_eq!(round.counted.skipped, 30);
}

#[test]
fn a_new_definition_keeps_the_state_and_ticks_from_the_next_one() {
    let t0 = at("2026-01-01T00:00:00Z");
    let (row, compiled) = row(Overlap::Skip, CatchUp::Latest, t0);
    let fired = idle_round(&row, &compiled, t0).row;
    let mut hourly = fired.spec.clone();
    hourly.cron = "0 * * * *".into();
    let compiled = hourly.compile().unwrap();
    let changed = redefine(&fired, hourly, &compiled, t0 + 5_000);
    assert_eq!(changed.state.next_tick, Some(t0 + 60 * MINUTE));
    assert_eq!(changed.state.runs, fired.state.runs);
    assert_eq!(changed.state.last_instance, fired.state.last_instance);
}

#[test]
fn jitter_is_the_same_everywhere_and_bounded() {
    for tick in 0..1_000 {
        let delay = jitter("nightly", tick * MINUTE, 30_000);
        assert!(delay <= 30_000);
        assert_eq!(delay, jitter("nightly", tick * MINUTE, 30_000));
    }
    assert_ne!(jitter("a", 0, 30_000), jitter("b", 0, 30_000));
}

#[test]
fn a_trigger_follows_the_overlap_policy() {
    let t0 = at("2026-01-01T00:00:00Z");
    let (row, _) = row(Overlap::Skip, CatchUp::Latest, t0);
    let idle = trigger(&row, Previous::Idle, Some("by hand".into()), t0 + 1_234);
    assert_eq!(idle.starts, [t0 + 1_234]);
    assert_eq!(
        idle.row.state.last_instance.as_deref(),
        Some("nightly:2026-01-01T00:00:01.234Z")
    );
    assert_eq!(
        idle.row.state.runs.last().unwrap().reason.as_deref(),
        Some("by hand")
    );
    let busy = trigger(
        &idle.row,
        Previous::Running,
        Some("é".repeat(5_000)),
        t0 + 2_000,
    );
    let kept = busy.row.state.runs.last().unwrap().reason.clone().unwrap();
    assert!(
        kept.len() <= MAX_REASON && kept.ends_with('…'),
        "{}",
        kept.len()
    );
    assert!(busy.starts.is_empty());
    assert_eq!(
        busy.row.state.runs.last().unwrap().decision,
        Decision::Skipped
    );
}
