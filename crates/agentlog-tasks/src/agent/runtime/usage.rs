//! What an attempt consumed (`TaskCompleted.usage`), as an agent reports it: the `usage`
//! object of a `result` frame, the `Agentlog-Usage` header of a plain `http` answer
//! (`docs/agent-protocol.md` §2), or a builtin agent's [`super::TaskOutput::usage`].
//!
//! Agents are outside code, so a report is checked field by field before it reaches the
//! log, and a bad one names its field: the runtimes turn it into a failure of kind
//! `protocol`. Bounds keep what the projection aggregates (per tenant, agent type and model)
//! and what `/metrics` exports small whatever an agent sends.

use std::collections::HashMap;

use serde_json::Value;

pub use crate::events::Usage;

/// The longest model name, in characters.
pub const MAX_MODEL_CHARS: usize = 128;

/// The most provider-specific counters one report may carry.
pub const MAX_COUNTERS: usize = 32;

/// The longest counter name, in bytes (names are `[a-z0-9_.-]`).
pub const MAX_COUNTER_NAME: usize = 64;

/// A report that breaks the rules, naming the field (`usage.input_tokens`, …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("usage{field}: {reason}")]
pub struct UsageError {
    /// The path below `usage` (`.model`, `.counters.cached_input_tokens`), empty for the
    /// object itself.
    pub field: String,
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> UsageError {
    UsageError { field: field.into(), reason: reason.into() }
}

/// A count: a JSON integer from 0 to `i64::MAX` (`1.0`, `-1`, `"3"` are refused).
fn count(value: &Value, field: &str) -> Result<i64, UsageError> {
    value.as_u64().and_then(|n| i64::try_from(n).ok()).ok_or_else(|| bad(field, format!("must be an integer from 0 to {}, not {value}", i64::MAX)))
}

fn optional_count(object: &serde_json::Map<String, Value>, name: &str) -> Result<Option<i64>, UsageError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => count(value, &format!(".{name}")).map(Some),
    }
}

fn optional_text<'v>(object: &'v serde_json::Map<String, Value>, name: &str) -> Result<Option<&'v str>, UsageError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(bad(format!(".{name}"), format!("must be a string, not {other}"))),
    }
}

/// Whether `name` may name a model: 1 to [`MAX_MODEL_CHARS`] characters, none a control.
fn valid_model(name: &str) -> bool {
    let chars = name.chars().count();
    (1..=MAX_MODEL_CHARS).contains(&chars) && !name.chars().any(char::is_control)
}

/// Whether `code` looks like an ISO 4217 code: three upper-case ASCII letters.
fn valid_currency(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// Whether `name` may name a counter: 1 to [`MAX_COUNTER_NAME`] of a-z, 0-9, `_`, `.`, `-`.
fn valid_counter(name: &str) -> bool {
    (1..=MAX_COUNTER_NAME).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// Checks a report that is already a [`Usage`] (a builtin agent's, or one parsed here).
pub fn check(usage: &Usage) -> Result<(), UsageError> {
    for (field, n) in [(".input_tokens", usage.input_tokens), (".output_tokens", usage.output_tokens)] {
        if n < 0 {
            return Err(bad(field, format!("must be an integer from 0 to {}, not {n}", i64::MAX)));
        }
    }
    if let Some(model) = &usage.model
        && !valid_model(model)
    {
        return Err(bad(".model", format!("must be 1 to {MAX_MODEL_CHARS} characters without control characters")));
    }
    match (usage.cost_micros, &usage.currency) {
        (Some(cost), _) if cost < 0 => return Err(bad(".cost_micros", format!("must be an integer from 0 to {}, not {cost}", i64::MAX))),
        (Some(_), Some(currency)) if !valid_currency(currency) => {
            return Err(bad(
                ".currency",
                format!("must be an ISO 4217 code of three upper-case letters (USD, EUR), not `{}`", super::head_text(currency.as_bytes(), 16)),
            ));
        }
        (Some(_), Some(_)) | (None, None) => {}
        (Some(_), None) => return Err(bad(".currency", "is required with cost_micros (an ISO 4217 code such as USD)")),
        (None, Some(_)) => return Err(bad(".cost_micros", "is required with currency")),
    }
    if usage.counters.len() > MAX_COUNTERS {
        return Err(bad(".counters", format!("holds {} counters, more than {MAX_COUNTERS}", usage.counters.len())));
    }
    for (name, n) in &usage.counters {
        if !valid_counter(name) {
            return Err(bad(
                ".counters",
                format!("a counter's name is 1 to {MAX_COUNTER_NAME} of a-z, 0-9, `_`, `.`, `-`, not `{}`", super::head_text(name.as_bytes(), 80)),
            ));
        }
        if *n < 0 {
            return Err(bad(format!(".counters.{name}"), format!("must be an integer from 0 to {}, not {n}", i64::MAX)));
        }
    }
    Ok(())
}

/// Parses and checks the `usage` object an agent sent; `null` is no report. Unknown fields
/// are ignored (a newer agent may send more), as in every frame.
pub fn parse(value: &Value) -> Result<Option<Usage>, UsageError> {
    let object = match value {
        Value::Null => return Ok(None),
        Value::Object(object) => object,
        other => return Err(bad("", format!("must be an object, not {}", kind_of(other)))),
    };
    let counters = match object.get("counters") {
        None | Some(Value::Null) => HashMap::new(),
        Some(Value::Object(counters)) => {
            if counters.len() > MAX_COUNTERS {
                return Err(bad(".counters", format!("holds {} counters, more than {MAX_COUNTERS}", counters.len())));
            }
            let mut out = HashMap::with_capacity(counters.len());
            for (name, value) in counters {
                // Checked by `check` below; a name too long to quote is cut there.
                let n = if valid_counter(name) { count(value, &format!(".counters.{name}"))? } else { 0 };
                out.insert(name.clone(), n);
            }
            out
        }
        Some(other) => return Err(bad(".counters", format!("must be an object of counts, not {}", kind_of(other)))),
    };
    let usage = Usage {
        input_tokens: optional_count(object, "input_tokens")?.unwrap_or(0),
        output_tokens: optional_count(object, "output_tokens")?.unwrap_or(0),
        model: optional_text(object, "model")?.map(str::to_string),
        cost_micros: optional_count(object, "cost_micros")?,
        currency: optional_text(object, "currency")?.map(str::to_string),
        counters,
    };
    check(&usage)?;
    Ok(Some(usage))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_full_report_parses_and_a_null_is_none() {
        let usage = parse(&json!({
            "input_tokens": 1200, "output_tokens": 345, "model": "gpt-4o-mini",
            "cost_micros": 387, "currency": "USD", "counters": {"cached_input_tokens": 1024}, "future_field": true
        }))
        .expect("valid")
        .expect("a report");
        assert_eq!((usage.input_tokens, usage.output_tokens, usage.cost_micros), (1200, 345, Some(387)));
        assert_eq!((usage.model.as_deref(), usage.currency.as_deref()), (Some("gpt-4o-mini"), Some("USD")));
        assert_eq!(usage.counters.get("cached_input_tokens"), Some(&1024));
        assert_eq!(parse(&Value::Null), Ok(None));
        // Tokens default to 0: an agent paying per image reports only a cost.
        let cost_only = parse(&json!({"cost_micros": 40000, "currency": "EUR"})).expect("valid").expect("a report");
        assert_eq!((cost_only.input_tokens, cost_only.output_tokens, cost_only.model), (0, 0, None));
    }

    #[test]
    fn each_bad_field_is_named() {
        let many: serde_json::Map<String, Value> = (0..=MAX_COUNTERS).map(|i| (format!("c{i}"), json!(1))).collect();
        for (usage, field, says) in [
            (json!([1]), "", "must be an object, not an array"),
            (json!({"input_tokens": -1}), ".input_tokens", "integer from 0"),
            (json!({"output_tokens": 1.5}), ".output_tokens", "integer from 0"),
            (json!({"output_tokens": "12"}), ".output_tokens", "integer from 0"),
            (json!({"input_tokens": 9_223_372_036_854_775_808u64}), ".input_tokens", "integer from 0"),
            (json!({"model": ""}), ".model", "1 to 128 characters"),
            (json!({"model": "m".repeat(129)}), ".model", "1 to 128 characters"),
            (json!({"model": "a\nb"}), ".model", "control"),
            (json!({"model": 4}), ".model", "must be a string"),
            (json!({"cost_micros": -5, "currency": "USD"}), ".cost_micros", "integer from 0"),
            (json!({"cost_micros": 5}), ".currency", "required with cost_micros"),
            (json!({"currency": "USD"}), ".cost_micros", "required with currency"),
            (json!({"cost_micros": 5, "currency": "usd"}), ".currency", "ISO 4217"),
            (json!({"cost_micros": 5, "currency": "DOLLAR"}), ".currency", "ISO 4217"),
            (json!({"counters": [1]}), ".counters", "must be an object"),
            (Value::Object(serde_json::Map::from_iter([("counters".to_string(), Value::Object(many))])), ".counters", "more than 32"),
            (json!({"counters": {"x123456789x123456789x123456789x123456789x123456789x123456789x1234": 1}}), ".counters", "a counter's name"),
            (json!({"counters": {"Cached": 1}}), ".counters", "a counter's name"),
            (json!({"counters": {"cached": -1}}), ".counters.cached", "integer from 0"),
            (json!({"counters": {"cached": 0.5}}), ".counters.cached", "integer from 0"),
        ] {
            let error = parse(&usage).expect_err(&usage.to_string());
            assert_eq!(error.field, field, "{usage}: {error}");
            assert!(error.to_string().contains(says), "{usage}: {error}");
            assert!(error.to_string().starts_with(&format!("usage{field}:")), "{error}");
        }
        // At the limits.
        let at: serde_json::Map<String, Value> = (0..MAX_COUNTERS).map(|i| (format!("c{i}"), json!(i64::MAX))).collect();
        let report = json!({"model": "é".repeat(MAX_MODEL_CHARS), "counters": at, "input_tokens": i64::MAX});
        assert!(parse(&report).is_ok());
    }

    #[test]
    fn a_builtin_report_is_held_to_the_same_rules() {
        let good =
            Usage { input_tokens: 1, output_tokens: 2, model: Some("m".into()), cost_micros: Some(3), currency: Some("USD".into()), counters: HashMap::new() };
        assert_eq!(check(&good), Ok(()));
        assert_eq!(check(&Usage { output_tokens: -2, ..good.clone() }).map_err(|e| e.field), Err(".output_tokens".to_string()));
        assert_eq!(check(&Usage { currency: None, ..good }).map_err(|e| e.field), Err(".currency".to_string()));
    }
}
