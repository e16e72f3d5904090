//! Confluent wire format: magic byte `0`, the writer schema's registry id as 4 big-endian
//! bytes, then the Avro binary datum.
//!
//! Why this format: it is what Confluent's serializers in Java, Python and Go produce and
//! expect, so events agentlog writes are readable by any Kafka client and vice versa. Subjects
//! follow TopicRecordNameStrategy (`<topic>-<record full name>`) because one topic carries
//! several event types.
//!
//! Schema lookups go through schema_registry_converter's encoder and decoder, which cache by
//! subject and by id: after the first record of a type (encode) or of an id (decode) the hot
//! path makes no HTTP call. The framing is checked here before anything else, and the datum is
//! decoded here (with the cached writer schema), so each failure has a precise [`WireError`].
//!
//! A writer schema is held to the registry's limits ([`crate::registry::SchemaLimits`])
//! before apache-avro parses it: the registry may be an external one, and a hostile schema
//! crashes or hangs the parser and the decoder. One over the limits is a
//! [`WireError::SchemaOverLimits`], which readers dead-letter like any record they cannot read.

use std::any::TypeId;
use std::collections::HashMap;
use std::io::{Cursor, ErrorKind};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::ResolvedSchema;
use apache_avro::types::Value;
use apache_avro::{AvroSchema, Schema};
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{SrSettings, get_schema_by_id};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{RawError, SchemaType, SubjectNameStrategy, SuppliedSchema};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::registry::{RegistryConfig, SchemaLimits};

/// The first byte of every Confluent-framed payload.
pub const MAGIC_BYTE: u8 = 0;
/// Magic byte plus schema id.
pub const HEADER_LEN: usize = 5;
/// Bound on one registry call, so an unreachable registry fails a produce instead of hanging it.
pub const REGISTRY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a payload could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not Confluent wire format: first byte is {found:#04x}, expected the magic byte 0x00")]
    WrongMagicByte { found: u8 },

    #[error("payload of {len} bytes is truncated (a Confluent payload has a 5-byte header and a complete Avro datum)")]
    Truncated { len: usize },

    #[error("schema id {id} is not known to the schema registry")]
    UnknownSchemaId { id: u32 },

    #[error("Avro datum written with schema id {id} is corrupt: {reason}")]
    Corrupt { id: u32, reason: String },

    #[error("data written with schema id {id} cannot be read as the requested type: {reason}")]
    Unresolvable { id: u32, reason: String },

    #[error("schema registry unavailable or failing: {reason}")]
    Registry { reason: String },

    /// The registry refused to register the schema (incompatible with the subject's earlier
    /// versions, or invalid).
    #[error("schema registry rejected the schema for subject `{subject}`: {reason}")]
    Rejected { subject: String, reason: String },

    /// The writer schema of the record is over this process's schema limits (or recursive):
    /// it is not parsed, and the record cannot be read.
    #[error("the writer schema with id {id} is refused: {reason}")]
    SchemaOverLimits { id: u32, reason: String },

    /// The value does not fit its own schema, or the type has no named schema.
    #[error("cannot encode the value: {reason}")]
    Encode { reason: String },
}

impl WireError {
    /// The registry's fault, not the record's (unreachable, failing, refusing a write): the
    /// same record reads once the registry is back, so a reader waits and retries; it never
    /// skips, commits past or dead-letters the record for it.
    pub fn is_passing(&self) -> bool {
        matches!(self, WireError::Registry { .. } | WireError::Rejected { .. } | WireError::Encode { .. })
    }
}

/// Splits a payload into the writer schema id and the Avro datum, checking the framing.
pub fn split_frame(bytes: &[u8]) -> Result<(u32, &[u8]), WireError> {
    match bytes {
        [] => Err(WireError::Truncated { len: 0 }),
        [first, ..] if *first != MAGIC_BYTE => Err(WireError::WrongMagicByte { found: *first }),
        [_, a, b, c, d, datum @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        _ => Err(WireError::Truncated { len: bytes.len() }),
    }
}

/// What a type contributes to encoding: its subject suffix, the schema the encoder registers,
/// and that schema with its named types resolved, ready for the serializer.
///
/// The schema is leaked on purpose: one per Rust event type, made once per process, so the
/// resolved names (which borrow it) can live in the cache instead of being rebuilt per record.
struct TypeSchema {
    full_name: String,
    supplied: SuppliedSchema,
    reader: &'static Schema,
    names: ResolvedSchema<'static>,
}

/// A reader for data whose writer schema is exactly a type's own, built once per schema id:
/// building one resolves every named type of the schema, which used to cost more than the
/// decoding itself. The writer schema is leaked like [`TypeSchema`]'s (one per id this
/// process ever reads; ids are few and never change meaning).
type FastReader = Arc<GenericDatumReader<'static>>;

/// Encodes and decodes Confluent-framed Avro against one schema registry (the built-in one or
/// an external Confluent registry). Cheap to share behind an `Arc`; all caches are internal.
pub struct WireCodec {
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    /// For fetching a writer schema's text, to check it before the decoder parses it.
    settings: SrSettings,
    limits: SchemaLimits,
    /// Per writer schema id: whether its text is within the limits (checked once per id).
    checked: RwLock<HashMap<u32, Result<(), WireError>>>,
    /// Per Rust type: computed once, since deriving and serializing a schema is not free.
    types: RwLock<HashMap<TypeId, Arc<TypeSchema>>>,
    /// Per Rust type and topic: the registry id its schema has under that topic's subject.
    ids: RwLock<HashMap<TypeId, HashMap<String, u32>>>,
    /// Per (writer schema id, reader type): a reader when the two schemas are the same (the
    /// fast path), `None` when the data needs resolving.
    readers: RwLock<HashMap<(u32, TypeId), Option<FastReader>>>,
    /// Per writer schema id: the schema's full name (what `decode_any` dispatches on).
    writer_names: RwLock<HashMap<u32, Arc<str>>>,
}

/// The registry client settings of `config`: its `url`, a bounded request timeout, and
/// `api_key` (when set) as `Authorization: Bearer`.
pub fn registry_settings(config: &RegistryConfig) -> Result<SrSettings, WireError> {
    let mut builder = SrSettings::new_builder(config.url.trim_end_matches('/').to_owned());
    builder.set_timeout(REGISTRY_TIMEOUT);
    if !config.api_key.is_empty() {
        builder.set_token_authorization(&config.api_key);
    }
    builder.build().map_err(|e| WireError::Registry { reason: describe(&e) })
}

impl WireCodec {
    /// A codec for the registry at `registry_url` (e.g. `http://127.0.0.1:8081`), with a
    /// bounded request timeout, no key and the default schema limits.
    pub fn new(registry_url: &str) -> Result<Self, WireError> {
        Self::from_config(&RegistryConfig { url: registry_url.to_owned(), ..RegistryConfig::default() })
    }

    /// The codec of `[registry]`: its `url`, its `api_key` and its schema limits. What every
    /// agentlog process encodes and decodes with.
    pub fn from_config(config: &RegistryConfig) -> Result<Self, WireError> {
        Ok(Self::with_settings(registry_settings(config)?).with_limits(SchemaLimits::of(config)))
    }

    /// A codec with caller-built settings (authentication, several URLs, proxy choices) and
    /// the default schema limits.
    pub fn with_settings(settings: SrSettings) -> Self {
        Self {
            encoder: AvroEncoder::new(settings.clone()),
            decoder: AvroDecoder::new(settings.clone()),
            settings,
            limits: SchemaLimits::default(),
            checked: RwLock::new(HashMap::new()),
            types: RwLock::new(HashMap::new()),
            ids: RwLock::new(HashMap::new()),
            readers: RwLock::new(HashMap::new()),
            writer_names: RwLock::new(HashMap::new()),
        }
    }

    /// The same codec holding writer schemas to `limits`.
    pub fn with_limits(mut self, limits: SchemaLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The writer schema of `id`, parsed by the decoder (and cached there) only once its text
    /// is known to be within the limits.
    async fn writer_schema(&self, id: u32) -> Result<Arc<schema_registry_converter::avro_common::AvroSchema>, WireError> {
        let verdict = self.checked.read().unwrap_or_else(|e| e.into_inner()).get(&id).cloned();
        let verdict = match verdict {
            Some(verdict) => verdict,
            None => {
                let raw = get_schema_by_id(id, &self.settings).await.map_err(|e| self.lookup_error(id, e))?;
                let verdict = self.limits.check(&raw.schema).map_err(|refused| WireError::SchemaOverLimits { id, reason: refused.to_string() });
                if let Err(error) = &verdict {
                    tracing::warn!(id, %error, "refusing a writer schema over the limits");
                }
                self.checked.write().unwrap_or_else(|e| e.into_inner()).insert(id, verdict.clone());
                verdict
            }
        };
        verdict?;
        self.decoder.get_schema(id).await.map_err(|e| self.lookup_error(id, e))
    }

    /// The subject a `T` is registered under on `topic` (TopicRecordNameStrategy).
    pub fn subject_for<T: AvroSchema + 'static>(&self, topic: &str) -> Result<String, WireError> {
        Ok(format!("{topic}-{}", self.type_schema::<T>()?.full_name))
    }

    /// Encodes `value` with `T`'s schema, registering it under `<topic>-<full name>` on first
    /// use (the registry answers with the existing id when it is already registered).
    ///
    /// After the first record of a type on a topic this is a map lookup and a serde pass
    /// straight into Avro binary: no intermediate Avro `Value`, no subject string built.
    pub async fn encode<T: Serialize + AvroSchema + 'static>(&self, topic: &str, value: &T) -> Result<Vec<u8>, WireError> {
        let ty = self.type_schema::<T>()?;
        let cached = self.ids.read().unwrap_or_else(|e| e.into_inner()).get(&TypeId::of::<T>()).and_then(|by_topic| by_topic.get(topic)).copied();
        let id = match cached {
            Some(id) => id,
            None => self.register::<T>(topic, &ty).await?,
        };
        let mut out = Vec::with_capacity(256);
        out.push(MAGIC_BYTE);
        out.extend_from_slice(&id.to_be_bytes());
        let frame = out.len();
        if super::avro_binary::write(ty.reader, ty.names.get_names(), value, &mut out).is_err() {
            // A shape the direct writer leaves to apache-avro (none of ours today): its error,
            // if any, is the one to report.
            out.truncate(frame);
            apache_avro::write_avro_datum_ref(ty.reader, ty.names.get_names(), value, &mut out).map_err(|e| WireError::Encode { reason: e.to_string() })?;
        }
        Ok(out)
    }

    /// Looks up (registering if needed) the id of `T`'s schema under `topic`'s subject.
    async fn register<T: 'static>(&self, topic: &str, ty: &TypeSchema) -> Result<u32, WireError> {
        let subject = format!("{topic}-{}", ty.full_name);
        let strategy = SubjectNameStrategy::TopicRecordNameStrategyWithSchema(topic.to_owned(), ty.supplied.clone());
        let registered = self.encoder.get_schema_and_id(&subject, strategy).await.map_err(|e| match registry_code(&e) {
            Some(code) if code == 409 || code / 100 == 422 => WireError::Rejected { subject: subject.clone(), reason: describe(&e) },
            _ if is_http_failure(&e) => WireError::Registry { reason: describe(&e) },
            _ => WireError::Encode { reason: describe(&e) },
        })?;
        self.ids.write().unwrap_or_else(|e| e.into_inner()).entry(TypeId::of::<T>()).or_default().insert(topic.to_owned(), registered.id);
        Ok(registered.id)
    }

    /// Decodes a payload into `T`, resolving the writer's schema (from the id in the payload)
    /// to `T`'s schema by Avro's rules, so data written with an older or newer compatible
    /// schema reads fine. Returns the writer schema id too.
    pub async fn decode<T: DeserializeOwned + AvroSchema + 'static>(&self, bytes: &[u8]) -> Result<(u32, T), WireError> {
        let (id, datum) = split_frame(bytes)?;
        let ty = self.type_schema::<T>()?;
        if let Some(reader) = self.fast_reader::<T>(id, &ty).await? {
            // Fast path, the common case: the writer schema is `T`'s own, so the datum is
            // deserialized straight into `T` with no intermediate Value and no resolution.
            let mut cursor = Cursor::new(datum);
            let typed = reader
                .read_deser::<T>(&mut cursor)
                .map_err(|e| if hits_eof(&e) { WireError::Truncated { len: bytes.len() } } else { WireError::Corrupt { id, reason: e.to_string() } })?;
            let trailing = datum.len() as u64 - cursor.position().min(datum.len() as u64);
            if trailing > 0 {
                return Err(WireError::Corrupt { id, reason: format!("{trailing} bytes left after the datum") });
            }
            return Ok((id, typed));
        }
        let (id, value, _) = self.decode_with_writer(bytes).await?;
        let resolved = value.resolve(ty.reader).map_err(|e| WireError::Unresolvable { id, reason: e.to_string() })?;
        let typed = apache_avro::from_value::<T>(&resolved).map_err(|e| WireError::Unresolvable { id, reason: e.to_string() })?;
        Ok((id, typed))
    }

    /// A reader for `id` when the schema registered as `id` is exactly `T`'s (canonical form),
    /// cached per (id, type); `None` when data written with `id` must be resolved.
    async fn fast_reader<T: 'static>(&self, id: u32, ty: &TypeSchema) -> Result<Option<FastReader>, WireError> {
        let key = (id, TypeId::of::<T>());
        let cached = self.readers.read().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        if let Some(found) = cached {
            return Ok(found);
        }
        let writer = self.writer_schema(id).await?;
        let reader = if writer.parsed.canonical_form() == ty.reader.canonical_form() {
            let leaked: &'static Schema = Box::leak(Box::new(writer.parsed.clone()));
            let built =
                GenericDatumReader::builder(leaked).build().map_err(|e| WireError::Unresolvable { id, reason: format!("writer schema unusable: {e}") })?;
            Some(Arc::new(built))
        } else {
            None
        };
        Ok(self.readers.write().unwrap_or_else(|e| e.into_inner()).entry(key).or_insert(reader).clone())
    }

    /// Full name of the schema that wrote `bytes` (`io.agentlog.v1.TaskCompleted`), from the
    /// id in its frame. Cached per id (a projection asks for every record it reads), so this
    /// costs a registry call once per id.
    pub async fn writer_name(&self, bytes: &[u8]) -> Result<Arc<str>, WireError> {
        let (id, _) = split_frame(bytes)?;
        if let Some(name) = self.writer_names.read().unwrap_or_else(|e| e.into_inner()).get(&id) {
            return Ok(Arc::clone(name));
        }
        let writer = self.writer_schema(id).await?;
        let name: Arc<str> = writer
            .parsed
            .name()
            .map(|n| n.fullname(None).into())
            .ok_or(WireError::Unresolvable { id, reason: "the writer schema is not a named type".into() })?;
        self.writer_names.write().unwrap_or_else(|e| e.into_inner()).insert(id, Arc::clone(&name));
        Ok(name)
    }

    /// Decodes a payload into a generic Avro value in the writer's schema.
    pub async fn decode_value(&self, bytes: &[u8]) -> Result<(u32, Value), WireError> {
        let (id, value, _) = self.decode_with_writer(bytes).await?;
        Ok((id, value))
    }

    async fn decode_with_writer(&self, bytes: &[u8]) -> Result<(u32, Value, Arc<schema_registry_converter::avro_common::AvroSchema>), WireError> {
        let (id, datum) = split_frame(bytes)?;
        let schema = self.writer_schema(id).await?;
        let unusable = |e: apache_avro::Error| WireError::Unresolvable { id, reason: format!("writer schema unusable: {e}") };
        let names = ResolvedSchema::try_from(&schema.parsed).map_err(unusable)?;
        let reader = GenericDatumReader::builder(&schema.parsed).resolved_writer_schemata(names.clone()).build().map_err(unusable)?;
        let mut cursor = Cursor::new(datum);
        let value = reader
            .read_value(&mut cursor)
            .map_err(|e| if hits_eof(&e) { WireError::Truncated { len: bytes.len() } } else { WireError::Corrupt { id, reason: e.to_string() } })?;
        // apache-avro decodes a string cut short as a null instead of failing; such a value
        // no longer matches the writer schema, which is how the truncation shows.
        if !value.validate_with_names(&schema.parsed, names.get_names()) {
            return Err(WireError::Truncated { len: bytes.len() });
        }
        let trailing = datum.len() as u64 - cursor.position().min(datum.len() as u64);
        if trailing > 0 {
            return Err(WireError::Corrupt { id, reason: format!("{trailing} bytes left after the datum") });
        }
        Ok((id, value, schema))
    }

    fn lookup_error(&self, id: u32, e: SRCError) -> WireError {
        match registry_code(&e) {
            Some(code) if code / 100 == 404 || code == 404 => {
                // The decoder caches this failure; drop it so that once the id exists (another
                // registry instance catching up) the next decode finds it.
                self.decoder.remove_errors_from_cache();
                WireError::UnknownSchemaId { id }
            }
            _ => WireError::Registry { reason: describe(&e) },
        }
    }

    fn type_schema<T: AvroSchema + 'static>(&self) -> Result<Arc<TypeSchema>, WireError> {
        let key = TypeId::of::<T>();
        if let Some(found) = self.types.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(Arc::clone(found));
        }
        let schema = T::get_schema();
        let full_name = schema
            .name()
            .map(|n| n.fullname(None))
            .ok_or_else(|| WireError::Encode { reason: "TopicRecordNameStrategy needs a named schema (record, enum or fixed)".to_owned() })?;
        let json = serde_json::to_string(&schema).map_err(|e| WireError::Encode { reason: e.to_string() })?;
        let supplied = SuppliedSchema::new(Some(full_name.clone()), SchemaType::Avro, json);
        let reader: &'static Schema = Box::leak(Box::new(schema));
        let names = ResolvedSchema::try_from(reader).map_err(|e| WireError::Encode { reason: format!("schema of {full_name}: {e}") })?;
        let ty = Arc::new(TypeSchema { full_name, supplied, reader, names });
        self.types.write().unwrap_or_else(|e| e.into_inner()).insert(key, Arc::clone(&ty));
        Ok(ty)
    }
}

/// The registry's `error_code` when the failure was an error answer from the registry.
fn registry_code(e: &SRCError) -> Option<u32> {
    let source = std::error::Error::source(e)?;
    source.downcast_ref::<RawError>().map(|raw| raw.error_code)
}

/// Whether the failure was talking to the registry (as opposed to encoding the value).
fn is_http_failure(e: &SRCError) -> bool {
    e.retriable || e.error.contains("HTTP") || e.error.contains("schema registry") || e.error.contains("RawRegisteredSchema")
}

/// Whether an Avro read failed because the input ended early.
fn hits_eof(e: &apache_avro::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && io.kind() == ErrorKind::UnexpectedEof
        {
            return true;
        }
        source = current.source();
    }
    false
}

/// The registry client's error as text, URLs masked: `registry.url` may carry credentials
/// (`https://user:pass@registry`), and reqwest's errors underneath embed the URL whole.
fn describe(e: &SRCError) -> String {
    let text = match &e.cause {
        Some(cause) => format!("{}: {cause}", e.error),
        None => e.error.clone(),
    };
    crate::redact::urls_in(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_is_checked_before_anything_else() {
        assert_eq!(split_frame(&[]), Err(WireError::Truncated { len: 0 }));
        assert_eq!(split_frame(&[0, 0, 0]), Err(WireError::Truncated { len: 3 }));
        assert_eq!(split_frame(&[7, 0, 0, 0, 1, 2]), Err(WireError::WrongMagicByte { found: 7 }));
        assert_eq!(split_frame(&[0, 0, 0, 1, 2, 9]), Ok((258, &[9u8][..])));
        assert_eq!(split_frame(&[0, 0, 0, 0, 5]), Ok((5, &[][..])));
    }
}
