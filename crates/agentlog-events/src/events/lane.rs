//! Priority lanes: the one vocabulary for them, parsed once where a name comes in (the
//! config, an HTTP request, a command line) and a typed [`Lane`] everywhere after.
//!
//! Lanes are separate topics read in priority order, because a log has no priorities of its
//! own. On the wire (Avro) a lane is an enum symbol (`NORMAL`); in topic names, the config and
//! the API it is the lower-case name (`normal`).

use std::fmt;
use std::str::FromStr;

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

/// Priority lane. Readers map a lane they do not know to `Normal` (the enum default), so
/// adding a lane later does not break old consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Lane {
    Critical,
    High,
    #[default]
    Normal,
    Low,
}

impl Lane {
    /// Every lane, highest priority first: the order workers read them in.
    pub const ALL: [Lane; 4] = [Lane::Critical, Lane::High, Lane::Normal, Lane::Low];
    pub const COUNT: usize = Lane::ALL.len();

    /// Lower-case name used in topic names (`tasks.<type>.<lane>`), the config and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Critical => "critical",
            Lane::High => "high",
            Lane::Normal => "normal",
            Lane::Low => "low",
        }
    }

    /// Position in priority order: 0 is the highest (critical). Indexes per-lane arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lane name that is not one of [`Lane::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown lane `{0}` (known: critical, high, normal, low)")]
pub struct UnknownLane(pub String);

impl FromStr for Lane {
    type Err = UnknownLane;

    fn from_str(name: &str) -> Result<Lane, UnknownLane> {
        Lane::ALL.into_iter().find(|lane| lane.as_str() == name).ok_or_else(|| UnknownLane(name.to_string()))
    }
}

/// Lane topic of an agent type, without the configurable prefix: `tasks.<type>.<lane>`.
pub fn lane_topic(agent_type: &str, lane: Lane) -> String {
    format!("tasks.{agent_type}.{lane}")
}

/// Serde for lists of lanes by their lower-case names (`lanes = ["high", "normal"]`), as the
/// config and the API write them; the derived serde is the Avro symbol.
pub mod names {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Lane;

    pub fn serialize<S: Serializer>(lanes: &[Lane], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(lanes.iter().map(|lane| lane.as_str()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Lane>, D::Error> {
        let names = Vec::<String>::deserialize(deserializer)?;
        names.iter().map(|name| name.parse().map_err(D::Error::custom)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_ones_list_the_lanes() {
        for lane in Lane::ALL {
            assert_eq!(lane.as_str().parse::<Lane>(), Ok(lane));
            assert_eq!(Lane::ALL[lane.index()], lane, "index is the priority position");
        }
        let error = "urgent".parse::<Lane>().expect_err("not a lane");
        assert_eq!(error.to_string(), "unknown lane `urgent` (known: critical, high, normal, low)");
        assert_eq!("NORMAL".parse::<Lane>(), Err(UnknownLane("NORMAL".into())), "names are lower case; symbols are the wire's");
    }
}
