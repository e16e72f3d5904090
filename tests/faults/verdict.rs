//! Judging a scenario as DESIGN.md asks: every submission sorted into lost (acknowledged, no
//! outcome), duplicated (more than one outcome; exactly-once is on), recovered (unknown but
//! completed) and unexpected (surely not written, yet ran); the time from the last heal
//! until every acknowledged task was terminal; p99 submit→outcome latency during the fault;
//! process exits; and the API against the topic. One line is printed per scenario and one
//! JSON object appended to the results file (`AGENTLOG_FAULTS_RESULTS`).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::api_view::ApiCheck;
use super::client::{Answer, History};
use super::processes::UnexpectedExit;
use super::results::Outcomes;

/// Every acknowledged task must be terminal this soon after the last heal.
pub const TERMINAL_WITHIN: Duration = Duration::from_secs(30);
/// Examples quoted per kind of problem.
const EXAMPLES: usize = 5;

/// When the scenario broke things and when it last repaired them.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    pub started: Instant,
    pub fault: Option<Instant>,
    pub healed: Option<Instant>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    pub scenario: String,
    pub commit: String,
    pub submitted: usize,
    pub ok: usize,
    pub fail: usize,
    pub unknown: usize,
    pub skipped_ticks: u64,
    pub lost: usize,
    pub duplicated: usize,
    pub recovered: usize,
    pub unexpected: usize,
    /// First outcomes other than TaskCompleted, by event name.
    pub other_outcomes: HashMap<String, usize>,
    /// The longest any acknowledged task stayed open after the last heal, or after its own
    /// submission when that came later (the load runs on past the heal, and a task
    /// submitted at the end cannot be terminal before it was submitted); None if some
    /// acknowledged task never got an outcome.
    pub heal_to_terminal_ms: Option<u64>,
    pub p99_fault_ms: Option<u64>,
    pub max_fault_ms: Option<u64>,
    pub p99_all_ms: Option<u64>,
    pub exits: Vec<UnexpectedExit>,
    pub api: ApiCheck,
    pub consume_errors: u64,
    pub examples: Vec<String>,
    pub fail_reasons: HashMap<String, usize>,
    pub dir: PathBuf,
    pub seconds: f64,
}

/// `warmed`: ids of the warm-up's tasks, run before the recorded load: theirs are expected
/// outcomes and only checked for duplicates.
#[allow(clippy::too_many_arguments)] // each is one input of the verdict, named at the one call site
pub fn judge(
    scenario: &str,
    history: &History,
    warmed: &HashSet<String>,
    outcomes: &Outcomes,
    timeline: Timeline,
    exits: &[UnexpectedExit],
    api: ApiCheck,
    dir: &Path,
) -> Verdict {
    let mut v = Verdict {
        scenario: scenario.to_string(),
        commit: commit(),
        submitted: history.submissions.len(),
        ok: 0,
        fail: 0,
        unknown: 0,
        skipped_ticks: history.skipped,
        lost: 0,
        duplicated: 0,
        recovered: 0,
        unexpected: 0,
        other_outcomes: HashMap::new(),
        heal_to_terminal_ms: Some(0),
        p99_fault_ms: None,
        max_fault_ms: None,
        p99_all_ms: None,
        exits: exits
            .iter()
            .map(|e| UnexpectedExit { at_s: signed_secs(e.at, timeline.started), after_fault_s: timeline.fault.map(|f| signed_secs(e.at, f)), ..e.clone() })
            .collect(),
        api,
        consume_errors: outcomes.consume_errors,
        examples: Vec::new(),
        fail_reasons: HashMap::new(),
        dir: dir.to_path_buf(),
        seconds: timeline.started.elapsed().as_secs_f64(),
    };
    let mut all = histogram();
    let mut during = histogram();
    let healed = timeline.healed.unwrap_or(timeline.started);
    let mut examples: HashMap<&str, Vec<String>> = HashMap::new();
    let mut example = |kind: &'static str, text: String| {
        let list = examples.entry(kind).or_default();
        if list.len() < EXAMPLES {
            list.push(format!("{kind}: {text}"));
        }
    };
    for s in &history.submissions {
        let seen = outcomes.by_task.get(&s.task_id);
        match &s.answer {
            Answer::Ok => {
                v.ok += 1;
                match seen.and_then(|o| o.first()) {
                    None => {
                        v.lost += 1;
                        v.heal_to_terminal_ms = None;
                        example("lost", s.task_id.clone());
                    }
                    Some((_, first)) => {
                        let ms = first.arrived.saturating_duration_since(s.invoked).as_millis() as u64;
                        let _ = all.record(ms.max(1));
                        let in_fault = timeline.fault.is_some_and(|f| s.invoked >= f) && s.invoked <= healed;
                        if in_fault {
                            let _ = during.record(ms.max(1));
                        }
                        let after_heal = first.arrived.saturating_duration_since(healed.max(s.invoked)).as_millis() as u64;
                        v.heal_to_terminal_ms = v.heal_to_terminal_ms.map(|m| m.max(after_heal));
                    }
                }
            }
            Answer::Fail(why) => {
                v.fail += 1;
                *v.fail_reasons.entry(reason_kind(why)).or_default() += 1;
                if seen.is_some() {
                    v.unexpected += 1;
                    example("unexpected", format!("{} ({why})", s.task_id));
                }
            }
            Answer::Unknown(why) => {
                v.unknown += 1;
                *v.fail_reasons.entry(format!("unknown: {}", reason_kind(why))).or_default() += 1;
                if seen.is_some() {
                    v.recovered += 1;
                }
            }
        }
    }
    let submitted: HashSet<&str> = history.submissions.iter().map(|s| s.task_id.as_str()).collect();
    for (id, seen) in &outcomes.by_task {
        if !submitted.contains(id.as_str()) && !warmed.contains(id) {
            v.unexpected += 1;
            example("unexpected", format!("{id} (never submitted by this scenario)"));
        }
        if let Some((name, _)) = seen.first()
            && name != "TaskCompleted"
        {
            *v.other_outcomes.entry(name.clone()).or_default() += 1;
        }
        if seen.len() > 1 {
            v.duplicated += 1;
            let at: Vec<String> = seen.iter().map(|(name, s)| format!("{name}@p{}:{}", s.partition, s.offset)).collect();
            example("duplicated", format!("{id} {}", at.join(" ")));
        }
    }
    v.p99_all_ms = (!all.is_empty()).then(|| all.value_at_quantile(0.99));
    v.p99_fault_ms = (!during.is_empty()).then(|| during.value_at_quantile(0.99));
    v.max_fault_ms = (!during.is_empty()).then(|| during.max());
    let mut kinds: Vec<_> = examples.into_iter().collect();
    kinds.sort();
    v.examples = kinds.into_iter().flat_map(|(_, list)| list).collect();
    if let Some(error) = &outcomes.last_error {
        v.examples.push(format!("task.results reader: {} consume errors, last: {error}", outcomes.consume_errors));
    }
    v
}

impl Verdict {
    /// The assertions of the suite, each failed one as a sentence.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.lost > 0 {
            out.push(format!("{} acknowledged tasks have no outcome on task.results (lost)", self.lost));
        }
        if self.duplicated > 0 {
            out.push(format!("{} tasks have more than one committed outcome with exactly-once on (duplicated)", self.duplicated));
        }
        if self.unexpected > 0 {
            out.push(format!("{} tasks ran that were never acknowledged (unexpected)", self.unexpected));
        }
        if let Some(ms) = self.heal_to_terminal_ms
            && ms > TERMINAL_WITHIN.as_millis() as u64
        {
            out.push(format!("the last acknowledged task became terminal {ms} ms after the last heal (limit {TERMINAL_WITHIN:?})"));
        }
        for e in &self.exits {
            let when = e.after_fault_s.map_or(format!("{:.1}s into the load", e.at_s), |s| format!("{s:+.1}s from the first fault"));
            out.push(format!("{} (pid {}) exited {when} with {}; last lines of {}:\n    {}", e.name, e.pid, e.status, e.log.display(), e.tail.join("\n    ")));
        }
        if self.api.ready_after_ms.is_none() {
            out.push("the API never answered /readyz 200 after the heal".into());
        }
        if self.api.disagree > 0 {
            out.push(format!(
                "the API disagrees with task.results on {} of {} tasks, e.g. {}",
                self.api.disagree,
                self.api.checked,
                self.api.examples.join("; ")
            ));
        }
        if self.ok == 0 {
            out.push("no submission was acknowledged: the scenario proves nothing".into());
        }
        out
    }

    pub fn line(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let exits: Vec<String> = self
            .exits
            .iter()
            .map(|e| match e.after_fault_s {
                Some(after) => format!("{} {:+.1}s from the fault ({})", e.name, after, e.status),
                None => format!("{} at {:.1}s ({})", e.name, e.at_s, e.status),
            })
            .collect();
        format!(
            "FAULT {}: submitted={} ok={} fail={} unknown={} skipped={} | lost={} duplicated={} recovered={} unexpected={} other={:?} | heal_to_terminal_ms={} p99_fault_ms={} max_fault_ms={} p99_all_ms={} | exited=[{}] | api_ready_ms={} api_disagree={}/{} | {:.0}s {}",
            self.scenario,
            self.submitted,
            self.ok,
            self.fail,
            self.unknown,
            self.skipped_ticks,
            self.lost,
            self.duplicated,
            self.recovered,
            self.unexpected,
            self.other_outcomes,
            opt(self.heal_to_terminal_ms),
            opt(self.p99_fault_ms),
            opt(self.max_fault_ms),
            opt(self.p99_all_ms),
            exits.join(", "),
            opt(self.api.ready_after_ms),
            self.api.disagree,
            self.api.checked,
            self.seconds,
            self.dir.display(),
        )
    }

    /// Appends this verdict as one JSON line to `path` (FAULTS.md's table is made from it).
    pub fn append_to(&self, path: &Path) -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let line = serde_json::to_string(self).map_err(std::io::Error::other)?;
        writeln!(file, "{line}")
    }
}

/// Every submission of the scenario as one CSV row (task id, submitted and first outcome in
/// ms since the load began, the answer, the outcomes read): the raw history behind the
/// verdict, for looking at a failure afterwards.
pub fn write_history(path: &Path, history: &History, outcomes: &Outcomes, timeline: Timeline) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "task_id,submitted_ms,answer,info,first_outcome_ms,outcomes")?;
    let ms = |at: Instant| signed_secs(at, timeline.started) * 1000.0;
    for s in &history.submissions {
        let (answer, info) = match &s.answer {
            Answer::Ok => ("ok", String::new()),
            Answer::Fail(why) => ("fail", why.clone()),
            Answer::Unknown(why) => ("unknown", why.clone()),
        };
        let seen = outcomes.by_task.get(&s.task_id);
        let first = seen.and_then(|o| o.first()).map_or(String::new(), |(_, f)| format!("{:.0}", ms(f.arrived)));
        let names = seen.map_or(String::new(), |o| o.iter().map(|(name, f)| format!("{name}@p{}:{}", f.partition, f.offset)).collect::<Vec<_>>().join(" "));
        let info = info.replace(['"', '\n', ','], " ");
        writeln!(out, "{},{:.0},{answer},\"{info}\",{first},{names}", s.task_id, ms(s.invoked))?;
    }
    out.flush()
}

/// `at - since` in seconds, negative when `at` came first.
fn signed_secs(at: Instant, since: Instant) -> f64 {
    if at >= since { at.duration_since(since).as_secs_f64() } else { -since.duration_since(at).as_secs_f64() }
}

fn histogram() -> Histogram<u64> {
    // 1 ms to 1 hour at 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000, 3).expect("constant histogram bounds are valid")
}

/// `connect: Connection refused (os error 111)` → `connect`; `503 Service Unavailable: {...}` → `503`.
fn reason_kind(why: &str) -> String {
    why.split([':', ' ']).next().unwrap_or(why).to_string()
}

/// The commit under test, for the record.
fn commit() -> String {
    std::process::Command::new("git")
        .arg("-C")
        .arg(super::cluster::repo_dir())
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}
