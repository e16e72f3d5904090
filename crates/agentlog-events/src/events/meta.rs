//! The `Meta` envelope every event carries, and the timestamp type events use.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use apache_avro::AvroSchemaComponent;
use apache_avro::schema::{Name, NamespaceRef, RecordField, Schema};
use serde::{Deserialize, Serialize};

/// Identity, time, tenancy, causality and trace context of one event (`io.agentlog.v1.Meta`).
///
/// It is a nested record rather than top-level fields so that every event type shares one
/// definition and consumers can read it without knowing the event type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, apache_avro::AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct Meta {
    /// Unique id of the event (UUID, v7 recommended); consumers deduplicate on it.
    pub event_id: String,
    /// When the event happened.
    pub occurred_at: TimestampMicros,
    /// Tenant the event belongs to.
    pub tenant: String,
    /// Shared by every event of one flow; a root event sets it to its own `event_id`.
    pub correlation_id: String,
    /// `event_id` of the event that directly caused this one.
    pub causation_id: Option<String>,
    /// W3C `traceparent` of the producing span.
    pub trace_parent: Option<String>,
    /// W3C `tracestate` accompanying `trace_parent`.
    pub trace_state: Option<String>,
    /// Process that wrote the event.
    pub producer_id: String,
}

impl Meta {
    /// The envelope of a root event: it starts its own flow (correlation id = event id),
    /// happened now, and has no cause and no trace context yet.
    pub fn new(event_id: impl Into<String>, tenant: impl Into<String>, producer_id: impl Into<String>) -> Self {
        let event_id = event_id.into();
        Self {
            correlation_id: event_id.clone(),
            event_id,
            occurred_at: TimestampMicros::now(),
            tenant: tenant.into(),
            causation_id: None,
            trace_parent: None,
            trace_state: None,
            producer_id: producer_id.into(),
        }
    }
}

/// Microseconds since the Unix epoch (UTC), encoded as Avro `long` with logical type
/// `timestamp-micros`.
///
/// A newtype rather than a bare `i64` so the derived schema carries the logical type, which
/// other clients (Python, Java) use to hand out real datetimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TimestampMicros(pub i64);

impl TimestampMicros {
    /// The current wall-clock time. A clock before 1970 reads as the epoch rather than
    /// failing: event time is informational and must never stop a producer.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }
}

impl From<SystemTime> for TimestampMicros {
    fn from(t: SystemTime) -> Self {
        let micros = t.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)).unwrap_or(0);
        Self(micros)
    }
}

impl AvroSchemaComponent for TimestampMicros {
    fn get_schema_in_ctxt(_: &mut HashSet<Name>, _: NamespaceRef) -> Schema {
        Schema::TimestampMicros
    }

    fn get_record_fields_in_ctxt(_: &mut HashSet<Name>, _: NamespaceRef) -> Option<Vec<RecordField>> {
        None
    }
}
