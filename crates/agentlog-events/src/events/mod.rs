//! Avro events: schemas/*.avsc, their Rust types, and the Confluent wire format.
//!
//! The `.avsc` files in `schemas/` are the contract other languages read; the types here are
//! hand-written to match them and the tests prove the schema derived from each type equals
//! its file (Parsing Canonical Form, plus defaults and logical types), so neither side can
//! drift silently. [`check`] guards evolution: every change must stay FULL compatible with
//! the last released set in `schemas/released/`.
//!
//! - [`meta`]: the `Meta` envelope every event carries, and [`TimestampMicros`].
//! - [`task`], [`agent`], [`job`]: the event types, one module per domain; [`lane`]: the
//!   priority lanes, by name and index.
//! - [`catalog`]: every event type with its `.avsc` text and catalog topic.
//! - [`check`]: `schemas check`, the compatibility gate.

pub mod agent;
pub mod any;
pub mod avro_binary;
pub mod catalog;
pub mod check;
pub mod job;
pub mod lane;
pub mod meta;
pub mod outcome;
pub mod reader;
pub mod task;
pub mod wire;

#[cfg(test)]
mod tests;

use std::borrow::Cow;

use apache_avro::AvroSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use agent::*;
pub use any::{AnyEvent, decode_any, decode_any_waiting};
pub use catalog::{EventType, META_AVSC, all_schemas, event_types, topic_of};
pub use check::{CheckError, check_evolution};
pub use job::*;
pub use meta::{Meta, TimestampMicros};
pub use outcome::OutcomeKind;
pub use task::*;

/// One agentlog event type: a record in `io.agentlog.v1` with a `Meta` envelope.
pub trait Event: Serialize + DeserializeOwned + AvroSchema + Send + Sync + 'static {
    /// Full Avro name (`io.agentlog.v1.TaskSubmitted`): the record part of the subject under
    /// TopicRecordNameStrategy, which the wire codec and the registry key schemas by.
    const NAME: &'static str;
    /// Catalog topic the type is written to, without the configurable prefix. For
    /// `TaskSubmitted` it is the template `tasks.<type>.<lane>`; use [`Event::topic`].
    const TOPIC: &'static str;

    /// The envelope.
    fn meta(&self) -> &Meta;

    /// Record key: it picks the partition, so events with one key stay in order.
    fn key(&self) -> &str;

    /// Concrete topic of this event, without the configurable prefix.
    fn topic(&self) -> Cow<'static, str> {
        Cow::Borrowed(Self::TOPIC)
    }
}

/// Implements [`Event`] for a type in `io.agentlog.v1` with a fixed topic, keyed by `$key`.
macro_rules! impl_event {
    ($ty:ident, $topic:literal, $key:ident) => {
        impl $crate::events::Event for $ty {
            const NAME: &'static str = concat!("io.agentlog.v1.", stringify!($ty));
            const TOPIC: &'static str = $topic;

            fn meta(&self) -> &$crate::events::Meta {
                &self.meta
            }

            fn key(&self) -> &str {
                &self.$key
            }
        }
    };
}
pub(crate) use impl_event;
