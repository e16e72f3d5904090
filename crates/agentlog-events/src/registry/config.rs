//! `[registry]` in config: where the built-in registry listens, which registry the codecs use
//! and with what key, and the limits a schema must stay within (see [`super::limits`]).

use serde::{Deserialize, Serialize};

/// `[registry]` in config. Its `Debug` masks `api_key` and any credentials in `url`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Address the built-in registry listens on. Non-loopback addresses need `api.keys`.
    pub listen: String,
    /// Registry the codecs use: the built-in one or an external Confluent Schema Registry.
    pub url: String,
    /// Key agentlog's own codecs send to the registry as `Authorization: Bearer <key>`
    /// (empty: none). Needed once `api.keys` are configured; registering a new schema needs
    /// the key of an admin tenant.
    pub api_key: String,
    /// Longest schema text accepted, in bytes.
    pub max_schema_bytes: usize,
    /// Deepest nesting of the schema's JSON (objects and arrays inside each other; a record
    /// inside a record's field adds 3).
    pub max_schema_depth: usize,
    /// Most named types (records, enums, fixed) one schema may define.
    pub max_named_types: usize,
    /// Most symbols of one enum (the compatibility check is quadratic in them).
    pub max_enum_symbols: usize,
    /// Largest `fixed` size, in bytes (a decoder allocates it for every value).
    pub max_fixed_size: u64,
    /// How long one compatibility check may take before registration is refused.
    pub compatibility_timeout_ms: u64,
}

/// Upper bound of `registry.max_schema_depth`: JSON nested deeper than serde_json's recursion
/// limit (128, which apache-avro's parser uses too) does not parse at all.
pub const MAX_SCHEMA_DEPTH: usize = 120;

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8081".into(),
            url: "http://127.0.0.1:8081".into(),
            api_key: String::new(),
            max_schema_bytes: 256 * 1024,
            max_schema_depth: 64,
            max_named_types: 1000,
            max_enum_symbols: 10_000,
            max_fixed_size: 1024 * 1024,
            compatibility_timeout_ms: 5_000,
        }
    }
}

impl RegistryConfig {
    /// Problems with `[registry]`, each naming the full key.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            out.push(format!("registry.url: `{}` must start with http:// or https://", crate::redact::url_text(&self.url)));
        }
        for (key, value) in [
            ("registry.max_schema_bytes", self.max_schema_bytes as u64),
            ("registry.max_schema_depth", self.max_schema_depth as u64),
            ("registry.max_named_types", self.max_named_types as u64),
            ("registry.max_enum_symbols", self.max_enum_symbols as u64),
            ("registry.max_fixed_size", self.max_fixed_size),
            ("registry.compatibility_timeout_ms", self.compatibility_timeout_ms),
        ] {
            if value == 0 {
                out.push(format!("{key} must be at least 1"));
            }
        }
        if self.max_schema_depth > MAX_SCHEMA_DEPTH {
            out.push(format!("registry.max_schema_depth must be at most {MAX_SCHEMA_DEPTH}: deeper JSON does not parse"));
        }
        out
    }
}

impl RegistryConfig {
    /// Why a process serving the built-in registry with these API settings could not write
    /// its own schemas, or `None`. With `api.keys` the registry answers keyed requests only,
    /// and this process's codecs register each event schema on first use: without
    /// `registry.api_key`, or with a key that is not an admin tenant's, every write it makes
    /// (a submit, an outcome) would fail at the registry instead of at startup.
    pub fn own_key_problem(&self, api: &crate::http::access::Access) -> Option<String> {
        if api.keys.is_empty() {
            return None;
        }
        if self.api_key.is_empty() {
            return Some(
                "registry.api_key is empty, but api.keys are configured: the schema registry this process serves answers keyed requests only, \
                 and this process registers its event schemas there; set registry.api_key (AGENTLOG__REGISTRY__API_KEY) to the key of a tenant in api.admin_tenants"
                    .to_string(),
            );
        }
        let digest = crate::http::access::sha256_hex(&self.api_key);
        let Some(owner) = api.keys.iter().find(|k| k.sha256.eq_ignore_ascii_case(&digest)) else {
            return Some("registry.api_key is not one of api.keys: the schema registry this process serves would refuse it".to_string());
        };
        if !api.admin_tenants.contains(&owner.tenant) {
            return Some(format!(
                "registry.api_key belongs to tenant `{}`, which is not in api.admin_tenants: registering this process's event schemas needs an admin tenant's key",
                owner.tenant
            ));
        }
        None
    }
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = if self.api_key.is_empty() { "" } else { crate::redact::MASK };
        f.debug_struct("RegistryConfig")
            .field("listen", &self.listen)
            .field("url", &crate::redact::url_text(&self.url))
            .field("api_key", &key)
            .field("max_schema_bytes", &self.max_schema_bytes)
            .field("max_schema_depth", &self.max_schema_depth)
            .field("max_named_types", &self.max_named_types)
            .field("max_enum_symbols", &self.max_enum_symbols)
            .field("max_fixed_size", &self.max_fixed_size)
            .field("compatibility_timeout_ms", &self.compatibility_timeout_ms)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_masks_the_key_and_url_credentials() {
        let config = RegistryConfig { api_key: "sr-secret".into(), url: "https://u:p4ss@sr:8081".into(), ..RegistryConfig::default() };
        let shown = format!("{config:?}");
        assert!(!shown.contains("sr-secret") && !shown.contains("p4ss"), "{shown}");
        assert!(shown.contains("api_key: \"***\""), "{shown}");
    }

    #[test]
    fn a_process_serving_a_keyed_registry_needs_an_admin_key_of_its_own() {
        use crate::http::access::{Access, ApiKeyConfig};
        let key = |tenant: &str, secret: &str| ApiKeyConfig { tenant: tenant.into(), sha256: crate::http::access::sha256_hex(secret) };
        let api = Access { keys: vec![key("ops", "ops-key"), key("acme", "acme-key")], admin_tenants: vec!["ops".into()], ..Access::default() };
        let with = |api_key: &str| RegistryConfig { api_key: api_key.into(), ..RegistryConfig::default() };
        assert_eq!(with("").own_key_problem(&Access::default()), None, "no keys: nothing to send");
        assert!(with("").own_key_problem(&api).is_some_and(|p| p.contains("registry.api_key is empty")));
        assert!(with("guess").own_key_problem(&api).is_some_and(|p| p.contains("not one of api.keys")));
        assert!(with("acme-key").own_key_problem(&api).is_some_and(|p| p.contains("tenant `acme`")));
        assert_eq!(with("ops-key").own_key_problem(&api), None);
    }

    #[test]
    fn zero_limits_and_too_deep_a_depth_name_the_key() {
        let config = RegistryConfig { max_enum_symbols: 0, max_schema_depth: 500, ..RegistryConfig::default() };
        let problems = config.problems().join("; ");
        assert!(problems.contains("registry.max_enum_symbols") && problems.contains("registry.max_schema_depth"), "{problems}");
        assert!(RegistryConfig::default().problems().is_empty());
    }
}
