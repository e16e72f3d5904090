//! The Grafana dashboard `deploy/grafana/agentlog.json` against the real `/metrics`: every
//! metric its PromQL queries (panels and template variables) is a sample name the API exposes
//! after real tasks ran, every label a selector matches on is a label of that metric, and a
//! `_bucket`, `_sum` or `_count` name belongs to a histogram; and the JSON is a dashboard of the
//! schema version it declares.
//!
//! Grafana publishes no machine-readable JSON schema for the classic dashboard model (the
//! `@grafana/schema` npm package ships TypeScript types and no JSON Schema), so the
//! checks of that model are written out here, from the required fields and types of
//! `Dashboard`, `Panel`, `RowPanel`, `GridPos`, `DataSourceRef`, `VariableModel` and
//! `AnnotationQuery` in `@grafana/schema` 13.2.3 (`dist/types/raw/dashboard/x/types.gen.d.ts`),
//! plus what Grafana's importer relies on: unique panel ids, panels inside the 24-column grid
//! and not overlapping, unique refIds per panel, and every datasource a declared variable.

use crate::fixture;
use crate::harness;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use agentlog::agent::runtime::build;
use agentlog::agent::runtime::builtin::TOKENS_MODEL;
use agentlog::api::{ApiConfig, ApiState, bind, serve};
use agentlog::projection::{Projection, ProjectionStore, sources};

use fixture::Fixture;
use harness::Harness;

const DASHBOARD: &str = "deploy/grafana/agentlog.json";
const MAX_BODY: usize = 64 * 1024;
const WITHIN: Duration = Duration::from_secs(20);

/// The schema versions whose dashboard model the checks below describe: from 36 every
/// datasource is a `{type, uid}` reference; 42 is the newest `@grafana/schema` 13.2.3 knows.
const SCHEMA_VERSIONS: std::ops::RangeInclusive<u64> = 36..=42;

/// `VariableType` of the dashboard model.
const VARIABLE_TYPES: [&str; 11] = ["query", "adhoc", "groupby", "constant", "datasource", "interval", "textbox", "custom", "system", "snapshot", "switch"];

/// Variables Grafana defines itself (usable in queries without a declaration).
const GRAFANA_VARIABLES: [&str; 6] = ["__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms"];

/// The grid is 24 columns wide.
const GRID_COLUMNS: u64 = 24;

fn dashboard() -> Value {
    let path = format!("{}/{DASHBOARD}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

// ---- PromQL: the metrics and labels a query uses ----

/// A metric selector of a query: the metric's name and the labels its matcher names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Selector {
    metric: String,
    labels: BTreeSet<String>,
}

/// Words of PromQL that are not metric names when they stand alone.
const KEYWORDS: [&str; 27] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords followed by a list of label names in parentheses.
const LABEL_LISTS: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The index just past the string literal opening at `i`.
fn skip_string(s: &[char], mut i: usize) -> usize {
    let quote = s[i];
    i += 1;
    while i < s.len() && s[i] != quote {
        if s[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// The index just past the bracket closing the one opening at `i` (strings skipped).
fn skip_group(s: &[char], mut i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    while i < s.len() {
        match s[i] {
            '"' | '\'' | '`' => {
                i = skip_string(s, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

fn skip_space(s: &[char], mut i: usize) -> usize {
    while i < s.len() && s[i].is_whitespace() {
        i += 1;
    }
    i
}

/// The label names a matcher (`{a="x", b=~"y"}`, braces excluded) compares.
fn matcher_labels(matcher: &[char]) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    let mut i = 0;
    while i < matcher.len() {
        match matcher[i] {
            '"' | '\'' | '`' => i = skip_string(matcher, i),
            c if is_ident_start(c) => {
                let start = i;
                while i < matcher.len() && is_ident(matcher[i]) {
                    i += 1;
                }
                labels.insert(matcher[start..i].iter().collect());
            }
            _ => i += 1,
        }
    }
    labels
}

/// The metric selectors of a PromQL expression with Grafana's variables in it: functions,
/// aggregations, keywords, numbers, durations, range selectors, label lists and variables
/// (`$x`, `${x}`, `[[x]]`) are not metrics.
fn selectors(expr: &str) -> Vec<Selector> {
    let s: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&s, i);
        } else if c == '#' {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '[' {
            i = skip_group(&s, i, '[', ']');
        } else if c == '{' {
            // A matcher without a name: selects by labels alone (not used by the dashboard).
            i = skip_group(&s, i, '{', '}');
        } else if c == '$' {
            i += 1;
            if i < s.len() && s[i] == '{' {
                i = skip_group(&s, i, '{', '}');
            } else {
                while i < s.len() && is_ident(s[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // Numbers (0.99, 1e3, 0x1f) and durations (5m).
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < s.len() && is_ident(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let next = skip_space(&s, i);
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                if s.get(next) == Some(&'(') {
                    i = skip_group(&s, next, '(', ')');
                }
            } else if s.get(next) == Some(&'(') || KEYWORDS.contains(&lower.as_str()) {
                // A function call or an aggregation: its arguments are scanned on.
            } else {
                let mut labels = BTreeSet::new();
                if s.get(next) == Some(&'{') {
                    let end = skip_group(&s, next, '{', '}');
                    labels = matcher_labels(&s[next + 1..end.saturating_sub(1)]);
                    i = end;
                }
                out.push(Selector { metric: word, labels });
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The variables (`$x`, `${x}`, `${x:fmt}`) a text uses.
fn variables_in(text: &str) -> BTreeSet<String> {
    let s: Vec<char> = text.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < s.len() {
        if s[i] == '$' {
            i += 1;
            let braced = s.get(i) == Some(&'{');
            if braced {
                i += 1;
            }
            let start = i;
            while i < s.len() && is_ident(s[i]) && s[i] != ':' {
                i += 1;
            }
            if i > start {
                out.insert(s[start..i].iter().collect());
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn promql_selectors_are_told_from_functions_keywords_and_variables() {
    let got = selectors(
        r#"histogram_quantile(0.99, sum by (le, route) (rate(a_seconds_bucket{route!~"/x|{y}", status=~"5.."}[$__rate_interval] offset 5m)))
           / on (route) group_left (x) sum without (y) (b_total) > bool 0.5 unless c{agent_type=~"${agent_type:regex}"} or max(d) by (z)
           + count_values("v", e) # f is commented out
           + rate(g[1h:5m]) * 1e3"#,
    );
    let names: Vec<&str> = got.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(names, vec!["a_seconds_bucket", "b_total", "c", "d", "e", "g"]);
    assert_eq!(got[0].labels, BTreeSet::from(["route".to_string(), "status".to_string()]));
    assert_eq!(got[2].labels, BTreeSet::from(["agent_type".to_string()]));
    assert_eq!(
        variables_in(r#"x{a=~"$agent_type"}[$__rate_interval] ${ds} ${v:csv}"#),
        BTreeSet::from(["__rate_interval", "agent_type", "ds", "v"].map(String::from))
    );
}

// ---- /metrics: the samples and their labels ----

/// What a text exposition holds: each sample name with the labels its samples carry, and
/// each family's type.
#[derive(Debug, Default)]
struct Exposition {
    samples: BTreeMap<String, BTreeSet<String>>,
    types: BTreeMap<String, String>,
}

fn exposition(text: &str) -> Exposition {
    let mut out = Exposition::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                out.types.insert(name.to_string(), kind.to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let end = line.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(line.len());
        let labels = out.samples.entry(line[..end].to_string()).or_default();
        if line[end..].starts_with('{') {
            let close = line.rfind('}').expect("a closing brace");
            let chars: Vec<char> = line[end + 1..close].chars().collect();
            labels.extend(matcher_labels(&chars));
        }
    }
    out
}

/// The metrics a query takes the rate or increase of: the name right inside `rate(`,
/// `irate(` or `increase(`.
fn counted_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for function in ["rate(", "increase("] {
        for (at, _) in expr.match_indices(function) {
            let name: String = expr[at + function.len()..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

#[test]
fn the_metrics_under_rate_and_increase_are_found() {
    assert_eq!(counted_in("sum by (a) (rate(x_total{a=\"b\"}[5m])) / increase(y[1h]) + irate(z_count[1m])"), ["x_total", "z_count", "y"]);
    assert!(counted_in("sum(agentlog_agents)").is_empty());
}

/// Problems of one selector against the exposition, each naming the metric.
fn selector_problems(where_: &str, selector: &Selector, exposed: &Exposition) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(labels) = exposed.samples.get(&selector.metric) else {
        problems.push(format!("{where_}: `{}` is not a sample name on /metrics", selector.metric));
        return problems;
    };
    for label in &selector.labels {
        if !labels.contains(label) {
            problems.push(format!("{where_}: `{}` has no label `{label}` (its labels: {labels:?})", selector.metric));
        }
    }
    // `_bucket` exists only on histograms; `_sum` and `_count` on histograms and summaries.
    for (suffix, kinds) in [("_bucket", &["histogram"][..]), ("_sum", &["histogram", "summary"][..]), ("_count", &["histogram", "summary"][..])] {
        if let Some(family) = selector.metric.strip_suffix(suffix)
            && let Some(kind) = exposed.types.get(family)
            && !kinds.contains(&kind.as_str())
        {
            problems.push(format!("{where_}: `{}` is a {kind}'s sample, not a {}", selector.metric, kinds.join(" or ")));
        }
    }
    problems
}

/// Every query of the dashboard, with where it is: each panel target's `expr` (rows' panels
/// included) and each query variable's query.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in all_panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((format!("panel {} `{}` target {}", panel["id"], panel["title"].as_str().unwrap_or(""), target["refId"]), expr.to_string()));
            }
        }
    }
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"].as_str().or_else(|| variable["query"]["query"].as_str()).unwrap_or("");
        // label_values(metric, label): the metric is the selector before the last comma.
        let expr = match query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')) {
            Some(args) => args.rsplit_once(',').map_or(args, |(metric, _)| metric),
            None => query,
        };
        out.push((format!("variable `{}`", variable["name"].as_str().unwrap_or("")), expr.to_string()));
    }
    out
}

fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

// ---- the dashboard model ----

fn is_uint(v: &Value) -> bool {
    v.as_u64().is_some()
}

/// A datasource reference `{type, uid}` whose uid is a declared datasource variable (or
/// Grafana's own, for the built-in annotations); a problem otherwise.
fn datasource_problem(where_: &str, ds: &Value, datasource_variables: &HashSet<String>) -> Option<String> {
    let Some(obj) = ds.as_object() else {
        return Some(format!("{where_}: datasource must be an object {{type, uid}}, not {ds}"));
    };
    if obj.keys().any(|k| k != "type" && k != "uid") || obj.values().any(|v| !v.is_string()) {
        return Some(format!("{where_}: datasource must hold only the strings `type` and `uid`: {ds}"));
    }
    let uid = ds["uid"].as_str().unwrap_or("");
    if ds["type"] == "grafana" && uid == "-- Grafana --" {
        return None;
    }
    let name = uid.strip_prefix("${").and_then(|u| u.strip_suffix('}')).or_else(|| uid.strip_prefix('$')).unwrap_or("");
    if !datasource_variables.contains(name) {
        return Some(format!("{where_}: datasource uid `{uid}` is not a declared datasource variable ({datasource_variables:?})"));
    }
    if ds["type"] != "prometheus" {
        return Some(format!("{where_}: datasource type must be `prometheus`: {ds}"));
    }
    None
}

/// Everything that makes `dashboard` not a dashboard of the schema version it declares, or
/// not importable as it stands; empty when it is.
fn dashboard_problems(d: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |p: String| problems.push(p);
    let Some(top) = d.as_object() else {
        return vec!["the dashboard must be a JSON object".into()];
    };
    match d["schemaVersion"].as_u64() {
        Some(v) if SCHEMA_VERSIONS.contains(&v) => {}
        other => problem(format!("schemaVersion must be a number in {SCHEMA_VERSIONS:?} (the model these checks describe), not {other:?}")),
    }
    for key in ["title", "uid"] {
        if d[key].as_str().is_none_or(str::is_empty) {
            problem(format!("`{key}` must be a non-empty string"));
        }
    }
    if let Some(uid) = d["uid"].as_str()
        && (uid.len() > 40 || !uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        problem(format!("uid `{uid}` must be at most 40 characters of [a-zA-Z0-9-_]"));
    }
    if !d["tags"].as_array().is_some_and(|t| t.iter().all(Value::is_string)) {
        problem("`tags` must be an array of strings".into());
    }
    if !(d["time"]["from"].is_string() && d["time"]["to"].is_string()) {
        problem("`time` must be {from, to} with strings".into());
    }
    if !d["id"].is_null() && !d["id"].is_u64() {
        problem("`id` must be null (imported) or a number".into());
    }
    for (key, ok) in [
        ("editable", d["editable"].is_boolean()),
        ("graphTooltip", d["graphTooltip"].as_u64().is_some_and(|v| v <= 2)),
        ("refresh", d["refresh"].is_string()),
        ("timezone", d["timezone"].is_string()),
        ("description", d["description"].is_string()),
        ("version", is_uint(&d["version"])),
        ("links", d["links"].is_array()),
    ] {
        if top.contains_key(key) && !ok {
            problem(format!("`{key}` has the wrong type: {}", d[key]));
        }
    }

    // Template variables: named once each, of a known type; datasource variables collected.
    let mut names = HashSet::new();
    let mut datasource_variables = HashSet::new();
    let Some(variables) = d["templating"]["list"].as_array() else {
        problem("`templating.list` must be an array".into());
        return problems;
    };
    for v in variables {
        let name = v["name"].as_str().unwrap_or("");
        if name.is_empty() || !names.insert(name.to_string()) {
            problem(format!("template variable names must be non-empty and unique: `{name}`"));
        }
        let kind = v["type"].as_str().unwrap_or("");
        if !VARIABLE_TYPES.contains(&kind) {
            problem(format!("variable `{name}`: type `{kind}` is not one of {VARIABLE_TYPES:?}"));
        }
        if kind == "datasource" {
            if v["query"].as_str().is_none_or(str::is_empty) {
                problem(format!("variable `{name}`: a datasource variable's query names the plugin (prometheus)"));
            }
            datasource_variables.insert(name.to_string());
        }
        if !v["query"].is_null() && !v["query"].is_string() && !v["query"].is_object() {
            problem(format!("variable `{name}`: query must be a string or an object"));
        }
        for (key, max) in [("hide", 3), ("refresh", 2), ("sort", 8)] {
            if !v[key].is_null() && v[key].as_u64().is_none_or(|x| x > max) {
                problem(format!("variable `{name}`: `{key}` must be a number from 0 to {max}"));
            }
        }
        for key in ["multi", "includeAll", "skipUrlSync"] {
            if !v[key].is_null() && !v[key].is_boolean() {
                problem(format!("variable `{name}`: `{key}` must be a boolean"));
            }
        }
    }
    for v in variables.iter().filter(|v| v["type"] == "query") {
        let name = v["name"].as_str().unwrap_or("");
        if let Some(p) = datasource_problem(&format!("variable `{name}`"), &v["datasource"], &datasource_variables) {
            problem(p);
        }
    }

    // Annotations: AnnotationQuery requires datasource, enable, iconColor and name.
    for a in d["annotations"]["list"].as_array().into_iter().flatten() {
        let name = a["name"].as_str().unwrap_or("");
        if name.is_empty() || !a["enable"].is_boolean() || !a["iconColor"].is_string() {
            problem(format!("annotation `{name}`: name, enable (boolean) and iconColor are required"));
        }
        if let Some(p) = datasource_problem(&format!("annotation `{name}`"), &a["datasource"], &datasource_variables) {
            problem(p);
        }
    }

    // Panels: a type, a unique id, a place inside the grid that no other panel takes.
    let Some(panels) = d["panels"].as_array() else {
        problem("`panels` must be an array".into());
        return problems;
    };
    if panels.is_empty() {
        problem("`panels` is empty".into());
    }
    let mut ids = HashSet::new();
    let mut cells: Vec<(u64, u64, u64, u64, String)> = Vec::new();
    for panel in all_panels(d) {
        let id = &panel["id"];
        let here = format!("panel {id} `{}`", panel["title"].as_str().unwrap_or(""));
        let kind = panel["type"].as_str().unwrap_or("");
        if kind.is_empty() {
            problem(format!("{here}: `type` is required"));
        }
        if !id.is_u64() || !ids.insert(id.to_string()) {
            problem(format!("{here}: `id` must be a number unique in the dashboard"));
        }
        if !panel["title"].is_string() {
            problem(format!("{here}: `title` must be a string"));
        }
        let g = &panel["gridPos"];
        if ["h", "w", "x", "y"].iter().any(|k| !is_uint(&g[*k])) {
            problem(format!("{here}: gridPos needs h, w, x, y as non-negative integers: {g}"));
        } else {
            let (h, w, x, y) = (g["h"].as_u64().unwrap_or(0), g["w"].as_u64().unwrap_or(0), g["x"].as_u64().unwrap_or(0), g["y"].as_u64().unwrap_or(0));
            if h == 0 || w == 0 || x + w > GRID_COLUMNS {
                problem(format!("{here}: gridPos must be at least 1×1 and end within {GRID_COLUMNS} columns: {g}"));
            }
            for (ox, oy, ow, oh, other) in &cells {
                if x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h {
                    problem(format!("{here}: overlaps {other}"));
                }
            }
            cells.push((x, y, w, h, here.clone()));
        }
        if kind == "row" {
            if !panel["collapsed"].is_boolean() || !panel["panels"].is_array() {
                problem(format!("{here}: a row needs `collapsed` (boolean) and `panels` (array)"));
            }
            continue;
        }
        if !panel["options"].is_null() && !panel["options"].is_object() {
            problem(format!("{here}: `options` must be an object"));
        }
        let fc = &panel["fieldConfig"];
        let field_config_ok = fc.is_null() || (fc["defaults"].is_object() && fc["overrides"].is_array());
        if !field_config_ok {
            problem(format!("{here}: fieldConfig needs `defaults` (object) and `overrides` (array)"));
        }
        if let Some(p) = datasource_problem(&here, &panel["datasource"], &datasource_variables) {
            problem(p);
        }
        let Some(targets) = panel["targets"].as_array().filter(|t| !t.is_empty()) else {
            problem(format!("{here}: `targets` must be a non-empty array"));
            continue;
        };
        let mut ref_ids = HashSet::new();
        for t in targets {
            let ref_id = t["refId"].as_str().unwrap_or("");
            if ref_id.is_empty() || !ref_ids.insert(ref_id.to_string()) {
                problem(format!("{here}: refId `{ref_id}` must be non-empty and unique in the panel"));
            }
            if t["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                problem(format!("{here} target {ref_id}: `expr` must be a non-empty PromQL string"));
            }
            if let Some(p) = datasource_problem(&format!("{here} target {ref_id}"), &t["datasource"], &datasource_variables) {
                problem(p);
            }
        }
    }

    // Every variable a query uses is declared (or one of Grafana's own).
    for (here, expr) in queries(d) {
        for v in variables_in(&expr) {
            if !names.contains(&v) && !GRAFANA_VARIABLES.contains(&v.as_str()) {
                problem(format!("{here}: uses `${v}`, which is not a declared template variable"));
            }
        }
    }
    problems
}

#[test]
fn the_dashboard_is_valid_for_the_schema_version_it_declares() {
    let d = dashboard();
    let problems = dashboard_problems(&d);
    assert!(problems.is_empty(), "{DASHBOARD}:\n{}", problems.join("\n"));
    assert!(!queries(&d).is_empty(), "the dashboard queries nothing");
}

/// Breaks a copy of the dashboard in one way.
type Breaks = fn(&mut Value);

/// The checks catch what they claim to: each broken copy is refused, naming its fault.
#[test]
fn a_broken_dashboard_is_refused_naming_the_fault() {
    let good = dashboard();
    let cases: [(&str, Breaks); 9] = [
        ("schemaVersion must be", |d| d["schemaVersion"] = json!("38")),
        ("`uid` must be", |d| d["uid"] = Value::Null),
        ("`type` is required", |d| d["panels"][1]["type"] = Value::Null),
        ("unique in the dashboard", |d| d["panels"][1]["id"] = d["panels"][0]["id"].clone()),
        ("within 24 columns", |d| d["panels"][0]["gridPos"]["x"] = json!(20)),
        ("overlaps", |d| d["panels"][1]["gridPos"] = d["panels"][0]["gridPos"].clone()),
        ("unique in the panel", |d| d["panels"][0]["targets"] = json!([{"refId": "A", "expr": "x"}, {"refId": "A", "expr": "y"}])),
        ("not a declared datasource variable", |d| d["panels"][0]["datasource"] = json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"})),
        ("not a declared template variable", |d| d["panels"][0]["targets"][0]["expr"] = json!("up{job=\"$job\"}")),
    ];
    for (says, breaks) in cases {
        let mut d = good.clone();
        breaks(&mut d);
        let problems = dashboard_problems(&d);
        assert!(problems.iter().any(|p| p.contains(says)), "expected a problem saying `{says}`, got {problems:#?}");
    }
}

/// Runs tasks of every outcome the dashboard charts (completed, retried, failed,
/// dead-lettered) through real workers and the supervisor, then checks every query of the
/// dashboard against the API's `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_on_metrics() {
    let mut h = Harness::embedded();
    let mut f = Fixture::new(&h).await;
    let (echo, echo_agent) = f.agent_type_named("echo", "runtime = { kind = \"builtin\", name = \"echo\" }\nlanes = [\"high\", \"normal\"]\n").await;
    let (flaky, flaky_agent) = f
        .agent_type_named(
            "flaky",
            "runtime = { kind = \"builtin\", name = \"echo\" }\n[retry]\nmax_attempts = 2\ninitial_backoff_ms = 50\nmax_backoff_ms = 100\njitter = 0.0\n",
        )
        .await;
    // A fake LLM reporting tokens and cost, so the usage counters have series.
    let (tokens, tokens_agent) = f.agent_type_named("tokens", "runtime = { kind = \"builtin\", name = \"tokens\" }\n").await;
    f.start_supervisor(3);
    f.start_worker(&echo, &echo_agent, build(&echo_agent.runtime, Duration::from_secs(5)).expect("echo"), "echo-1");
    f.start_worker(&tokens, &tokens_agent, build(&tokens_agent.runtime, Duration::from_secs(5)).expect("tokens"), "tokens-1");
    let (_journal, scripted) = fixture::scripted();
    f.start_worker(&flaky, &flaky_agent, scripted, "flaky-1");
    let agents = BTreeMap::from([(echo.clone(), echo_agent), (flaky.clone(), flaky_agent), (tokens.clone(), tokens_agent)]);
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().expect("projection dir");
    let projection = Projection::new(ProjectionStore::open(dir.path()).expect("projection store"), sources(&f.topics, &agents)).expect("projection");
    let projector = tokio::spawn(agentlog::projection::run(f.log.clone(), f.codec.clone(), projection.clone(), stop.clone()));
    let state = Arc::new(ApiState::new(f.log.clone(), f.client.clone(), agents, projection, ApiConfig::default()).expect("api state"));
    let config = ApiConfig { listen: "127.0.0.1:0".into(), ..ApiConfig::default() };
    let listener = bind(&config).await.expect("bind loopback");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(serve(listener, state, MAX_BODY, stop.clone()));
    let http = reqwest::Client::builder().timeout(WITHIN).build().expect("http client");

    // Completed, retried then completed, failed at once (not retryable), dead-lettered.
    let tasks = [
        (echo.as_str(), json!({"n": 1}), "completed"),
        (echo.as_str(), json!({"n": 2}), "completed"),
        (flaky.as_str(), json!({"fail_until": 2}), "completed"),
        (flaky.as_str(), json!({"fail_until": 9, "fail_kind": "rejected"}), "failed"),
        (flaky.as_str(), json!({"fail_until": 9}), "dead_lettered"),
        (tokens.as_str(), json!({"text": "one two three", "delay_ms": 0}), "completed"),
    ];
    for (agent_type, input, expected) in tasks {
        let answer = http.post(format!("{base}/v1/tasks")).json(&json!({"agent_type": agent_type, "input": input})).send().await.expect("submit");
        assert_eq!(answer.status(), 202, "{input}");
        let body: Value = answer.json().await.expect("json");
        let id = body["task_id"].as_str().expect("task id");
        let outcome: Value = http.get(format!("{base}/v1/tasks/{id}/outcome?wait_ms=15000")).send().await.expect("outcome").json().await.expect("json");
        assert_eq!(outcome["status"], expected, "{input}: {outcome}");
    }
    // A 404, so the error panel has a series too.
    assert_eq!(http.get(format!("{base}/v1/tasks/no-such-task")).send().await.expect("get").status(), 404);

    // The projection counts the outcomes a moment after they are written.
    let deadline = Instant::now() + WITHIN;
    let text = loop {
        let answer = http.get(format!("{base}/metrics")).send().await.expect("metrics");
        assert_eq!(answer.status(), 200);
        let text = answer.text().await.expect("text");
        let counted = [
            format!("agentlog_tasks_total{{agent_type=\"{flaky}\",outcome=\"dead_lettered\"}} 1"),
            format!("agentlog_tasks_total{{agent_type=\"{flaky}\",outcome=\"failed\"}} 1"),
            format!("agentlog_task_retries_total{{agent_type=\"{flaky}\"}} 2"),
            format!("agentlog_tasks_total{{agent_type=\"{echo}\",outcome=\"completed\"}} 2"),
            // The fake LLM's 3 words in and out, at 1 and 4 micro-USD a token.
            format!("agentlog_usage_input_tokens_total{{agent_type=\"{tokens}\",model=\"{TOKENS_MODEL}\"}} 3"),
            format!("agentlog_usage_output_tokens_total{{agent_type=\"{tokens}\",model=\"{TOKENS_MODEL}\"}} 3"),
            format!("agentlog_usage_cost_micros_total{{agent_type=\"{tokens}\",model=\"{TOKENS_MODEL}\",currency=\"USD\"}} 15"),
            format!("agentlog_usage_tasks_total{{agent_type=\"{tokens}\",model=\"{TOKENS_MODEL}\"}} 1"),
        ];
        if counted.iter().all(|line| text.contains(line.as_str())) && text.contains("agentlog_agents{") {
            break text;
        }
        assert!(Instant::now() < deadline, "the projection did not count the outcomes and agents within {WITHIN:?}:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(text.contains(&format!("agentlog_lane_waiting_tasks{{agent_type=\"{echo}\",lane=\"high\"}} 0")), "waiting tasks per agent type and lane:\n{text}");

    let exposed = exposition(&text);
    let d = dashboard();
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    for (here, expr) in queries(&d) {
        let found = selectors(&expr);
        if found.is_empty() {
            problems.push(format!("{here}: no metric in `{expr}`"));
        }
        for selector in found {
            problems.extend(selector_problems(&here, &selector, &exposed));
            used.insert(selector.metric);
        }
    }
    // Prometheus' rate() and increase() read a counter (or a histogram's parts): over a gauge
    // they chart a drop as a reset, i.e. a jump.
    for (here, expr) in queries(&d) {
        for metric in counted_in(&expr) {
            let family = ["_total", "_bucket", "_sum", "_count"].iter().find_map(|suffix| metric.strip_suffix(suffix)).unwrap_or(&metric);
            let kind = exposed.types.get(family).map(String::as_str);
            if !matches!(kind, Some("counter" | "histogram")) {
                problems.push(format!("{here}: rate()/increase() over `{metric}`, which /metrics types as {kind:?}, not a counter"));
            }
        }
    }
    assert!(problems.is_empty(), "{DASHBOARD} against /metrics:\n{}\n\n/metrics:\n{text}", problems.join("\n"));
    // The families the dashboard promises to chart (issue 17): rates, latency, lag, agents,
    // DLQ growth and retries, waiting tasks per lane, HTTP.
    for family in [
        "agentlog_tasks_total",
        "agentlog_task_latency_seconds_bucket",
        "agentlog_task_retries_total",
        "agentlog_agents",
        "agentlog_projection_lag_records",
        "agentlog_lane_waiting_tasks",
        "agentlog_lane_backlog_age_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "agentlog_http_requests_total",
        "agentlog_http_request_duration_seconds_bucket",
        "agentlog_usage_cost_micros_total",
        "agentlog_usage_input_tokens_total",
        "agentlog_usage_output_tokens_total",
        "agentlog_usage_tasks_total",
    ] {
        assert!(used.contains(family), "the dashboard does not chart {family} (it uses {used:?})");
    }

    stop.cancel();
    server.await.expect("server task").expect("server");
    projector.await.expect("projector task").expect("projector");
    f.stop().await;
    h.release().await;
}
