//! Typed access to GGUF metadata. GGUF writers disagree on integer widths (u32 vs i32 vs u64),
//! so the getters here accept any integer or float variant.

use candle_core::quantized::gguf_file::{Content, Value};

use crate::error::{EngineError, Result};

pub struct GgufMetadata<'a> {
    content: &'a Content,
}

impl<'a> GgufMetadata<'a> {
    pub fn new(content: &'a Content) -> Self {
        Self { content }
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.content.metadata.get(key)
    }

    pub fn u64_opt(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(value_as_u64)
    }

    pub fn u64(&self, key: &str) -> Result<u64> {
        self.u64_opt(key).ok_or_else(|| {
            EngineError::InvalidConfig(format!("GGUF metadata `{key}` missing or not an integer"))
        })
    }

    pub fn f64_opt(&self, key: &str) -> Option<f64> {
        match self.get(key)? {
            Value::F32(v) => Some(*v as f64),
            Value::F64(v) => Some(*v),
            other => value_as_u64(other).map(|v| v as f64),
        }
    }

    pub fn bool_opt(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            other => value_as_u64(other).map(|v| v != 0),
        }
    }

    pub fn str_opt(&self, key: &str) -> Option<&'a str> {
        match self.get(key)? {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        }
    }

    pub fn str(&self, key: &str) -> Result<&'a str> {
        self.str_opt(key).ok_or_else(|| {
            EngineError::InvalidConfig(format!("GGUF metadata `{key}` missing or not a string"))
        })
    }

    pub fn array(&self, key: &str) -> Result<&'a [Value]> {
        match self.get(key) {
            Some(Value::Array(v)) => Ok(v.as_slice()),
            _ => Err(EngineError::InvalidConfig(format!(
                "GGUF metadata `{key}` missing or not an array"
            ))),
        }
    }

    pub fn string_array(&self, key: &str) -> Result<Vec<&'a str>> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(EngineError::InvalidConfig(format!(
                    "GGUF metadata `{key}` holds a non-string"
                ))),
            })
            .collect()
    }
}

pub fn value_as_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x as u64),
        Value::U16(x) => Some(x as u64),
        Value::U32(x) => Some(x as u64),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

pub fn value_as_f32(v: &Value) -> Option<f32> {
    match *v {
        Value::F32(x) => Some(x),
        Value::F64(x) => Some(x as f32),
        ref other => value_as_u64(other).map(|x| x as f32),
    }
}
