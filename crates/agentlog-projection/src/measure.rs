//! The latency histograms the projection keeps per agent type (over all tenants, and per
//! tenant), and the tags of their keys in the `stats` column family.

use super::keys::{stat_key, tenant_stat_key};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Submit → outcome.
    Latency,
    /// The run's own duration, as the agent reported it.
    Duration,
}

impl Measure {
    /// The key tags: over all tenants (lower case), one tenant's (upper case). Stored keys:
    /// changing them needs a new projection layout.
    fn tags(self) -> (u8, u8) {
        match self {
            Measure::Latency => (b'l', b'L'),
            Measure::Duration => (b'd', b'D'),
        }
    }

    /// Where this measure of `agent_type` over all tenants is kept.
    pub fn key(self, agent_type: &str) -> Vec<u8> {
        stat_key(self.tags().0, agent_type)
    }

    /// Where `tenant`'s measure of `agent_type` is kept.
    pub fn tenant_key(self, tenant: &str, agent_type: &str) -> Vec<u8> {
        tenant_stat_key(self.tags().1, tenant, agent_type)
    }

    /// The keys this measure of `agent_type` is kept under: all tenants, then `tenant`'s.
    pub fn keys(self, tenant: &str, agent_type: &str) -> [Vec<u8>; 2] {
        [self.key(agent_type), self.tenant_key(tenant, agent_type)]
    }
}
