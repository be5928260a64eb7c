//! GGUF metadata values and the ordered key/value map that holds them.

use std::fmt;

/// GGUF metadata value type ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Bytes of one element of a number (or bool) type; `None` for strings and arrays.
    pub fn scalar_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }
}

/// One metadata value. Arrays keep their element type so that empty arrays round-trip.
///
/// Arrays of numbers and bools are [`Value::Numbers`], as their GGUF encoding, so that a
/// large one costs its size in the file (a `Value` per element costs 32 bytes);
/// [`Value::Array`] holds strings and nested arrays.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(ValueType, Vec<Value>),
    /// An array of a number (or bool) type: the elements' little-endian bytes back to back,
    /// as GGUF stores them (a bool is one byte, 0 or 1).
    Numbers(ValueType, Vec<u8>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) | Value::Numbers(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// The value as an unsigned integer, for any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The items of an array of strings or arrays; `None` for an array of numbers (see
    /// [`Value::items`]).
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, items) => Some(items),
            _ => None,
        }
    }

    /// The items of any array, numbers decoded into values.
    pub fn items(&self) -> Option<std::borrow::Cow<'_, [Value]>> {
        use std::borrow::Cow;
        match self {
            Value::Array(_, items) => Some(Cow::Borrowed(items)),
            Value::Numbers(..) => Some(Cow::Owned(
                (0..self.array_len()?)
                    .filter_map(|i| self.item(i))
                    .collect(),
            )),
            _ => None,
        }
    }

    /// The number of items of an array.
    pub fn array_len(&self) -> Option<usize> {
        match self {
            Value::Array(_, items) => Some(items.len()),
            Value::Numbers(ty, bytes) => Some(bytes.len() / ty.scalar_size()?),
            _ => None,
        }
    }

    /// Item `i` of an array.
    pub fn item(&self, i: usize) -> Option<Value> {
        match self {
            Value::Array(_, items) => items.get(i).cloned(),
            Value::Numbers(ty, bytes) => {
                let n = ty.scalar_size()?;
                let b = bytes.get(i * n..(i + 1) * n)?;
                Value::decode_number(*ty, b)
            }
            _ => None,
        }
    }

    /// The number (or bool) of type `ty` encoded little-endian in `b` (exactly its size).
    pub fn decode_number(ty: ValueType, b: &[u8]) -> Option<Value> {
        Some(match ty {
            ValueType::U8 => Value::U8(b[0]),
            ValueType::I8 => Value::I8(b[0] as i8),
            ValueType::Bool => Value::Bool(b[0] != 0),
            ValueType::U16 => Value::U16(u16::from_le_bytes(b.try_into().ok()?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(b.try_into().ok()?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(b.try_into().ok()?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(b.try_into().ok()?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(b.try_into().ok()?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(b.try_into().ok()?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(b.try_into().ok()?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(b.try_into().ok()?)),
            ValueType::String | ValueType::Array => return None,
        })
    }

    /// An array of strings.
    pub fn strings<I: IntoIterator<Item = S>, S: Into<String>>(items: I) -> Value {
        Value::Array(
            ValueType::String,
            items.into_iter().map(|s| Value::String(s.into())).collect(),
        )
    }

    /// An array of i32 (token types).
    pub fn i32s(items: impl IntoIterator<Item = i32>) -> Value {
        let bytes = items.into_iter().flat_map(i32::to_le_bytes).collect();
        Value::Numbers(ValueType::I32, bytes)
    }

    /// An array of f32 (token scores).
    pub fn f32s(items: impl IntoIterator<Item = f32>) -> Value {
        let bytes = items.into_iter().flat_map(f32::to_le_bytes).collect();
        Value::Numbers(ValueType::F32, bytes)
    }
}

impl fmt::Display for Value {
    /// Human display; arrays longer than 8 items are summarized.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::String(s) => {
                if s.chars().count() > 120 {
                    let head: String = s.chars().take(100).collect();
                    write!(f, "{head:?}… ({} chars)", s.chars().count())
                } else {
                    write!(f, "{s:?}")
                }
            }
            Value::Array(t, _) | Value::Numbers(t, _) => {
                let len = self.array_len().unwrap_or(0);
                write!(f, "[")?;
                for i in 0..len.min(8) {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    if let Some(v) = self.item(i) {
                        write!(f, "{v}")?;
                    }
                }
                if len > 8 {
                    write!(f, ", … {} {:?} items in all", len, t)?;
                }
                write!(f, "]")
            }
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
        }
    }
}

/// Metadata in file order; keys are unique.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
}

impl Metadata {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Set `key`, keeping its position when it already exists, else appending.
    pub fn set(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// Append `key`, which the caller knows is not present yet (the reader checks with a set).
    pub(crate) fn push_new(&mut self, key: String, value: Value) {
        self.entries.push((key, value));
    }

    /// Set `key` as the last entry, as ggml's `gguf_set_val_*` does (remove, then append).
    pub fn set_last(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        self.remove(&key);
        self.entries.push((key, value));
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let pos = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(pos).1)
    }

    /// Keep only the entries for which `keep` answers true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &Value) -> bool) {
        self.entries.retain(|(k, v)| keep(k, v));
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    /// `general.architecture`, the prefix of the hyper-parameter keys.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }
}
