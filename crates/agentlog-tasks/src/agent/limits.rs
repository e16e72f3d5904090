//! Making what tenants submit and agents return fit the log's record limit
//! (`log.max_record_bytes`, [`EventLog::max_record_bytes`]).
//!
//! Agents may return up to [`MAX_OUTPUT_BYTES`](super::runtime::MAX_OUTPUT_BYTES) (16 MiB) and
//! a tenant may submit up to the limit, but every record the worker writes about a task —
//! its outcome, its retry timer, its dead letter that embeds the whole command — must fit one
//! log record. A write refused for its size is not a passing failure: written again it is
//! refused again, so a worker that treated it as one re-ran the task forever. Instead:
//!
//! - a submit leaves [`OUTCOME_HEADROOM`] under the limit, so the envelopes that later carry
//!   the command (timers, dead letters) fit too; bigger commands are refused at submit (413);
//! - messages that travel in outcome events (a failure's message, the last error, a cancel
//!   reason) are cut to [`MAX_MESSAGE_BYTES`];
//! - an outcome that still does not fit is replaced by a failure that does (the attempt
//!   module decides which); a dead letter too large keeps the command's metadata and cuts its
//!   input, saying so in [`DLQ_TRUNCATED`](super::dlq::DLQ_TRUNCATED).
//!
//! [`EventLog::max_record_bytes`]: crate::log::EventLog::max_record_bytes

use crate::log::Record;

/// The most bytes of an error message, last error or reason an outcome event carries; longer
/// ones are cut (on a character boundary, "…" appended). Agents' failure messages are for
/// humans: the first 2 KiB say what went wrong.
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// What a submitted command leaves free under `log.max_record_bytes`: the later records that
/// embed or re-encode the command (a dead letter with its headers and last error, a retry's
/// timer with a fresh envelope) add at most this much to it.
pub const OUTCOME_HEADROOM: usize = 8 * 1024;

/// The largest command a submit accepts under a record limit of `max_record_bytes`.
pub fn max_command_bytes(max_record_bytes: usize) -> usize {
    max_record_bytes.saturating_sub(OUTCOME_HEADROOM)
}

/// Whether `record` can be appended under `max_record_bytes` (the size both backends check).
pub fn fits(record: &Record, max_record_bytes: usize) -> bool {
    record.size() <= max_record_bytes
}

/// `message` cut to [`MAX_MESSAGE_BYTES`].
pub fn bound_message(message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    super::runtime::head_text(message.as_bytes(), MAX_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_and_short_ones_kept() {
        assert_eq!(bound_message("short".into()), "short");
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = bound_message(long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES + "…".len(), "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert_eq!(max_command_bytes(1_000_000), 1_000_000 - OUTCOME_HEADROOM);
        assert_eq!(max_command_bytes(10), 0);
    }
}
