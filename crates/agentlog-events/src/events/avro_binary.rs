//! A direct serde → Avro binary writer for agentlog's own event types, walking the schema
//! alongside the value.
//!
//! apache-avro's serde serializer builds a hash map of a record's field names for every
//! record it writes (to find fields serde skipped) and hashes each field name with SipHash:
//! encoding was ~18% of a worker's samples in `agentlog bench tasks`. Our events serialize
//! every field, in schema order (the schemas are derived from the same structs), so fields
//! can be matched by position and checked by name. Anything else this writer does not
//! handle (a skipped or reordered field, a union other than `[null, T]`, fixed, decimal,
//! uuid...) returns [`Unsupported`] and the caller falls back to apache-avro; the tests
//! check that both write identical bytes for every event type.

use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::{NamesRef, UnionSchema};
use serde::Serialize;
use serde::ser::{self, Impossible};

/// The value or schema needs apache-avro's general path.
#[derive(Debug)]
pub struct Unsupported(pub String);

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not handled by the direct Avro writer: {}", self.0)
    }
}

impl std::error::Error for Unsupported {}

impl ser::Error for Unsupported {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Unsupported(msg.to_string())
    }
}

type Result<T = ()> = std::result::Result<T, Unsupported>;

/// Appends `value` as an Avro datum of `schema` (named types resolved through `names`).
/// On error `out` may hold a partial datum: the caller truncates it.
pub fn write<T: Serialize + ?Sized>(schema: &Schema, names: &NamesRef<'_>, value: &T, out: &mut Vec<u8>) -> Result {
    value.serialize(Writer { schema, names, out })
}

fn zigzag(n: i64, out: &mut Vec<u8>) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn unsupported<T>(what: &str, schema: &Schema) -> Result<T> {
    Err(Unsupported(format!("{what} for schema {schema:?}")))
}

struct Writer<'a, 'n> {
    schema: &'a Schema,
    names: &'a NamesRef<'n>,
    out: &'a mut Vec<u8>,
}

impl<'a, 'n> Writer<'a, 'n> {
    /// The schema itself, with a named reference looked up.
    fn resolved(&self) -> Result<&'a Schema>
    where
        'n: 'a,
    {
        match self.schema {
            Schema::Ref { name } => match self.names.get(name) {
                Some(schema) => Ok(schema),
                None => Err(Unsupported(format!("unknown named type {name}"))),
            },
            other => Ok(other),
        }
    }

    fn long(self, n: i64) -> Result
    where
        'n: 'a,
    {
        match self.resolved()? {
            Schema::Long | Schema::TimestampMicros | Schema::TimestampMillis | Schema::TimeMicros | Schema::TimestampNanos => {
                zigzag(n, self.out);
                Ok(())
            }
            Schema::Int | Schema::Date | Schema::TimeMillis if i32::try_from(n).is_ok() => {
                zigzag(n, self.out);
                Ok(())
            }
            other => unsupported("an integer", other),
        }
    }

    /// The branch of a `[null, T]` or `[T, null]` union: (index of null, index of T, T).
    fn nullable(union: &UnionSchema) -> Option<(usize, usize, &Schema)> {
        match union.variants() {
            [Schema::Null, other] => Some((0, 1, other)),
            [other, Schema::Null] => Some((1, 0, other)),
            _ => None,
        }
    }
}

impl<'a, 'n: 'a> ser::Serializer for Writer<'a, 'n> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Items<'a, 'n>;
    type SerializeTuple = Impossible<(), Unsupported>;
    type SerializeTupleStruct = Impossible<(), Unsupported>;
    type SerializeTupleVariant = Impossible<(), Unsupported>;
    type SerializeMap = Entries<'a, 'n>;
    type SerializeStruct = Fields<'a, 'n>;
    type SerializeStructVariant = Impossible<(), Unsupported>;

    fn serialize_bool(self, v: bool) -> Result {
        match self.resolved()? {
            Schema::Boolean => {
                self.out.push(v as u8);
                Ok(())
            }
            other => unsupported("a boolean", other),
        }
    }

    fn serialize_i8(self, v: i8) -> Result {
        self.long(v.into())
    }

    fn serialize_i16(self, v: i16) -> Result {
        self.long(v.into())
    }

    fn serialize_i32(self, v: i32) -> Result {
        self.long(v.into())
    }

    fn serialize_i64(self, v: i64) -> Result {
        self.long(v)
    }

    fn serialize_u8(self, v: u8) -> Result {
        self.long(v.into())
    }

    fn serialize_u16(self, v: u16) -> Result {
        self.long(v.into())
    }

    fn serialize_u32(self, v: u32) -> Result {
        self.long(v.into())
    }

    fn serialize_u64(self, v: u64) -> Result {
        match i64::try_from(v) {
            Ok(v) => self.long(v),
            Err(_) => Err(Unsupported(format!("{v} does not fit a long"))),
        }
    }

    fn serialize_f32(self, v: f32) -> Result {
        match self.resolved()? {
            Schema::Float => {
                self.out.extend_from_slice(&v.to_le_bytes());
                Ok(())
            }
            other => unsupported("a float", other),
        }
    }

    fn serialize_f64(self, v: f64) -> Result {
        match self.resolved()? {
            Schema::Double => {
                self.out.extend_from_slice(&v.to_le_bytes());
                Ok(())
            }
            other => unsupported("a double", other),
        }
    }

    fn serialize_char(self, v: char) -> Result {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(self, v: &str) -> Result {
        match self.resolved()? {
            Schema::String => {
                zigzag(v.len() as i64, self.out);
                self.out.extend_from_slice(v.as_bytes());
                Ok(())
            }
            Schema::Enum(e) => match e.symbols.iter().position(|s| s == v) {
                Some(index) => {
                    zigzag(index as i64, self.out);
                    Ok(())
                }
                None => Err(Unsupported(format!("{v} is not a symbol of {}", e.name))),
            },
            other => unsupported("a string", other),
        }
    }

    fn serialize_bytes(self, v: &[u8]) -> Result {
        match self.resolved()? {
            Schema::Bytes => {
                zigzag(v.len() as i64, self.out);
                self.out.extend_from_slice(v);
                Ok(())
            }
            other => unsupported("bytes", other),
        }
    }

    fn serialize_none(self) -> Result {
        match self.resolved()? {
            Schema::Null => Ok(()),
            Schema::Union(union) => match Self::nullable(union) {
                Some((null, _, _)) => {
                    zigzag(null as i64, self.out);
                    Ok(())
                }
                None => unsupported("a none", self.schema),
            },
            other => unsupported("a none", other),
        }
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result {
        match self.resolved()? {
            Schema::Union(union) => match Self::nullable(union) {
                Some((_, index, inner)) => {
                    zigzag(index as i64, self.out);
                    value.serialize(Writer { schema: inner, names: self.names, out: self.out })
                }
                None => unsupported("a some", self.schema),
            },
            other => unsupported("a some", other),
        }
    }

    fn serialize_unit(self) -> Result {
        match self.resolved()? {
            Schema::Null => Ok(()),
            other => unsupported("a unit", other),
        }
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result {
        self.serialize_unit()
    }

    fn serialize_unit_variant(self, _name: &'static str, _index: u32, variant: &'static str) -> Result {
        match self.resolved()? {
            Schema::Enum(_) => self.serialize_str(variant),
            other => unsupported("an enum variant", other),
        }
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, value: &T) -> Result {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(self, _name: &'static str, _index: u32, variant: &'static str, _value: &T) -> Result {
        Err(Unsupported(format!("newtype variant {variant}")))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Items<'a, 'n>> {
        let Some(len) = len else { return Err(Unsupported("a sequence of unknown length".into())) };
        match self.resolved()? {
            Schema::Array(array) => {
                if len > 0 {
                    zigzag(len as i64, self.out);
                }
                Ok(Items { items: &array.items, names: self.names, out: self.out, bytes: None, left: len })
            }
            // A Vec<u8> without serde_bytes arrives as a sequence of u8.
            Schema::Bytes => Ok(Items { items: &Schema::Bytes, names: self.names, out: self.out, bytes: Some(Vec::with_capacity(len)), left: len }),
            other => unsupported("a sequence", other),
        }
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple> {
        Err(Unsupported("a tuple".into()))
    }

    fn serialize_tuple_struct(self, name: &'static str, _len: usize) -> Result<Self::SerializeTupleStruct> {
        Err(Unsupported(format!("tuple struct {name}")))
    }

    fn serialize_tuple_variant(self, _name: &'static str, _index: u32, variant: &'static str, _len: usize) -> Result<Self::SerializeTupleVariant> {
        Err(Unsupported(format!("tuple variant {variant}")))
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Entries<'a, 'n>> {
        let Some(len) = len else { return Err(Unsupported("a map of unknown length".into())) };
        match self.resolved()? {
            Schema::Map(map) => {
                if len > 0 {
                    zigzag(len as i64, self.out);
                }
                Ok(Entries { values: &map.types, names: self.names, out: self.out, left: len })
            }
            other => unsupported("a map", other),
        }
    }

    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<Fields<'a, 'n>> {
        match self.resolved()? {
            Schema::Record(record) => Ok(Fields { fields: &record.fields, names: self.names, out: self.out, next: 0 }),
            other => Err(Unsupported(format!("struct {name} for schema {other:?}"))),
        }
    }

    fn serialize_struct_variant(self, _name: &'static str, _index: u32, variant: &'static str, _len: usize) -> Result<Self::SerializeStructVariant> {
        Err(Unsupported(format!("struct variant {variant}")))
    }
}

/// A record's fields, matched to the schema's by position and checked by name.
struct Fields<'a, 'n> {
    fields: &'a [apache_avro::schema::RecordField],
    names: &'a NamesRef<'n>,
    out: &'a mut Vec<u8>,
    next: usize,
}

impl<'a, 'n: 'a> ser::SerializeStruct for Fields<'a, 'n> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result {
        let Some(field) = self.fields.get(self.next) else { return Err(Unsupported(format!("field {key} is not in the schema"))) };
        if field.name != key {
            return Err(Unsupported(format!("field {key} where the schema has {}", field.name)));
        }
        self.next += 1;
        value.serialize(Writer { schema: &field.schema, names: self.names, out: self.out })
    }

    fn skip_field(&mut self, key: &'static str) -> Result {
        Err(Unsupported(format!("skipped field {key}")))
    }

    fn end(self) -> Result {
        match self.fields.get(self.next) {
            None => Ok(()),
            Some(missing) => Err(Unsupported(format!("field {} was not written", missing.name))),
        }
    }
}

/// An array's items (one block), or the bytes of a `Vec<u8>` serialized as a sequence.
struct Items<'a, 'n> {
    items: &'a Schema,
    names: &'a NamesRef<'n>,
    out: &'a mut Vec<u8>,
    bytes: Option<Vec<u8>>,
    left: usize,
}

impl<'a, 'n: 'a> ser::SerializeSeq for Items<'a, 'n> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.left = self.left.checked_sub(1).ok_or_else(|| Unsupported("more items than announced".into()))?;
        match &mut self.bytes {
            Some(bytes) => {
                bytes.push(value.serialize(ByteOnly)?);
                Ok(())
            }
            None => value.serialize(Writer { schema: self.items, names: self.names, out: self.out }),
        }
    }

    fn end(self) -> Result {
        if self.left != 0 {
            return Err(Unsupported("fewer items than announced".into()));
        }
        match self.bytes {
            Some(bytes) => {
                zigzag(bytes.len() as i64, self.out);
                self.out.extend_from_slice(&bytes);
            }
            None => self.out.push(0),
        }
        Ok(())
    }
}

/// A map's entries (one block): string keys, values of the map's schema.
struct Entries<'a, 'n> {
    values: &'a Schema,
    names: &'a NamesRef<'n>,
    out: &'a mut Vec<u8>,
    left: usize,
}

impl<'a, 'n: 'a> ser::SerializeMap for Entries<'a, 'n> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result {
        self.left = self.left.checked_sub(1).ok_or_else(|| Unsupported("more entries than announced".into()))?;
        key.serialize(Writer { schema: &Schema::String, names: self.names, out: self.out })
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        value.serialize(Writer { schema: self.values, names: self.names, out: self.out })
    }

    fn end(self) -> Result {
        if self.left != 0 {
            return Err(Unsupported("fewer entries than announced".into()));
        }
        self.out.push(0);
        Ok(())
    }
}

/// Accepts only a u8 (an element of a `Vec<u8>` written as Avro bytes).
struct ByteOnly;

macro_rules! not_a_byte {
    ($($method:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $method(self, $(_: $arg),*) -> Result<u8> { Err(Unsupported("a byte sequence holding something else".into())) })*
    };
}

impl ser::Serializer for ByteOnly {
    type Ok = u8;
    type Error = Unsupported;
    type SerializeSeq = Impossible<u8, Unsupported>;
    type SerializeTuple = Impossible<u8, Unsupported>;
    type SerializeTupleStruct = Impossible<u8, Unsupported>;
    type SerializeTupleVariant = Impossible<u8, Unsupported>;
    type SerializeMap = Impossible<u8, Unsupported>;
    type SerializeStruct = Impossible<u8, Unsupported>;
    type SerializeStructVariant = Impossible<u8, Unsupported>;

    fn serialize_u8(self, v: u8) -> Result<u8> {
        Ok(v)
    }

    not_a_byte!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<u8> {
        Err(Unsupported("a byte sequence holding an option".into()))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, _: &T) -> Result<u8> {
        Err(Unsupported("a byte sequence holding a struct".into()))
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(self, _: &'static str, _: u32, _: &'static str, _: &T) -> Result<u8> {
        Err(Unsupported("a byte sequence holding a variant".into()))
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq> {
        Err(Unsupported("a byte sequence holding a sequence".into()))
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple> {
        Err(Unsupported("a byte sequence holding a tuple".into()))
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct> {
        Err(Unsupported("a byte sequence holding a tuple struct".into()))
    }

    fn serialize_tuple_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Result<Self::SerializeTupleVariant> {
        Err(Unsupported("a byte sequence holding a tuple variant".into()))
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap> {
        Err(Unsupported("a byte sequence holding a map".into()))
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct> {
        Err(Unsupported("a byte sequence holding a struct".into()))
    }

    fn serialize_struct_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Result<Self::SerializeStructVariant> {
        Err(Unsupported("a byte sequence holding a struct variant".into()))
    }
}
