//! Keys shared by the store and the measures: a task's (tenant 0 id) and the `stats` column
//! family's (a tag byte, then a name, or tenant 0 agent type).

/// The key of a task (or a job) in its column family: tenant 0 id. Tenant names hold no
/// zero byte (config refuses one), so the pair is unambiguous.
pub fn task_key(tenant: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(tenant.len() + 1 + id.len());
    key.extend_from_slice(tenant.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

/// The `stats` key of one tenant's measure of one agent type (`tag` is `C`, `L` or `D`).
pub fn tenant_stat_key(tag: u8, tenant: &str, agent_type: &str) -> Vec<u8> {
    let mut key = vec![tag];
    key.extend_from_slice(&task_key(tenant, agent_type));
    key
}

/// The `stats` key of a measure or counter named `name` over all tenants.
pub fn stat_key(tag: u8, name: &str) -> Vec<u8> {
    let mut key = vec![tag];
    key.extend_from_slice(name.as_bytes());
    key
}

/// The `stats` key of usage per agent type and model: `u` over all tenants (`tenant` `None`),
/// `U` tenant 0 for one tenant's; then the agent type's length (u32, big-endian), the agent
/// type, and the model (empty for none). The length keeps any two (type, model) pairs apart.
pub fn usage_key(tenant: Option<&str>, agent_type: &str, model: Option<&str>) -> Vec<u8> {
    let mut key = usage_prefix(tenant);
    key.extend_from_slice(&(agent_type.len() as u32).to_be_bytes());
    key.extend_from_slice(agent_type.as_bytes());
    key.extend_from_slice(model.unwrap_or("").as_bytes());
    key
}

/// The prefix of every [`usage_key`] of `tenant` (all tenants': `None`).
pub fn usage_prefix(tenant: Option<&str>) -> Vec<u8> {
    match tenant {
        Some(tenant) => {
            let mut key = vec![b'U'];
            key.extend_from_slice(tenant.as_bytes());
            key.push(0);
            key
        }
        None => vec![b'u'],
    }
}
