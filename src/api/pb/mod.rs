//! Kubernetes protobuf, generically: a table of the `k8s-pb` messages
//! (`messages.txt`: each field's tag, wire type and JSON name, generated
//! from the crate by `gen`) drives one codec between protobuf bytes and
//! the JSON objects the API server keeps. No I/O.
//!
//! The wire form is kube-apiserver's: `k8s\0`, then a `runtime.Unknown`
//! naming the apiVersion and kind, whose `raw` is the object's message.
//! Kubernetes' own JSON forms are kept for the types whose protobuf shape
//! differs (`Time`, `MicroTime`, `Duration`, `IntOrString`, `Quantity`,
//! `RawExtension`, `FieldsV1`, the `JSONSchemaProps` unions).
//!
//! Go writes every non-pointer field, zero or not, so a decoded message
//! holds zeros JSON would have left out. They are dropped as Go's
//! `omitempty` would, except for required fields and the pointer fields
//! where zero means something (`replicas: 0`, `runAsUser: 0`,
//! `automountServiceAccountToken: false`): see [`KEEP_ZERO`].

#[cfg(test)]
mod gen;

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine;
use serde_json::{json, Map, Value};

/// The protobuf media type.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The four bytes every Kubernetes protobuf document starts with.
pub const MAGIC: &[u8] = b"k8s\x00";

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";
const TIME: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Duration";
const FIELDS_V1: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1";
const VERBS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Verbs";
const INT_OR_STRING: &str = "io.k8s.apimachinery.pkg.util.intstr.IntOrString";
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";
const RAW_EXTENSION: &str = "io.k8s.apimachinery.pkg.runtime.RawExtension";
const CRD: &str = "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1";

/// Optional fields that are pointers in Go, where a zero value differs
/// from an absent one, by JSON name. Zero values of other optional fields
/// are dropped on decoding, as Go's `omitempty` drops them.
pub const KEEP_ZERO: &[&str] = &[
    // integers
    "replicas",
    "revisionHistoryLimit",
    "terminationGracePeriodSeconds",
    "gracePeriodSeconds",
    "deletionGracePeriodSeconds",
    "runAsUser",
    "runAsGroup",
    "fsGroup",
    "ttlSecondsAfterFinished",
    "backoffLimit",
    "backoffLimitPerIndex",
    "maxFailedIndexes",
    "parallelism",
    "completions",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
    "startingDeadlineSeconds",
    "activeDeadlineSeconds",
    "expirationSeconds",
    "defaultMode",
    "mode",
    "partition",
    "priority",
    "tolerationSeconds",
    "exitCode",
    "minReplicas",
    "sinceSeconds",
    "tailLines",
    // int-or-strings
    "maxUnavailable",
    "maxSurge",
    "minAvailable",
    // booleans whose absence means true
    "automountServiceAccountToken",
    "allowPrivilegeEscalation",
    "enableServiceLinks",
    "allocateLoadBalancerNodePorts",
    "hostUsers",
    "runAsNonRoot",
    "ready",
    "serving",
    "terminating",
    // strings whose emptiness is a choice
    "storageClassName",
];

/// What went wrong turning bytes into an object or back.
#[derive(Debug, thiserror::Error)]
pub enum PbError {
    #[error("not Kubernetes protobuf: the body does not start with \"k8s\\x00\"")]
    NoMagic,
    #[error("malformed protobuf at {0}")]
    Malformed(String),
    #[error("no protobuf encoding is known for {0}")]
    UnknownKind(String),
    #[error("{path}: {message}")]
    Field { path: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Msg,
    Msgs,
    Inline,
    Str,
    Strs,
    I32,
    I32s,
    I64,
    I64s,
    Bool,
    Bytes,
    F64,
    MapMsg,
    MapStr,
    MapBytes,
}

#[derive(Debug)]
struct Field {
    tag: u32,
    json: String,
    kind: Kind,
    required: bool,
    ty: Option<String>,
}

#[derive(Debug, Default)]
struct Message {
    fields: Vec<Field>,
}

impl Message {
    fn by_tag(&self, tag: u32) -> Option<&Field> {
        self.fields.iter().find(|f| f.tag == tag)
    }
}

fn table() -> &'static HashMap<String, Message> {
    static TABLE: OnceLock<HashMap<String, Message>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut out: HashMap<String, Message> = HashMap::new();
        let mut current = None;
        for line in include_str!("messages.txt").lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix("message ") {
                current = Some(name.to_string());
                out.entry(name.to_string()).or_default();
                continue;
            }
            let mut parts = line.split(' ');
            let (Some(tag), Some(json), Some(kind)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let required = kind.ends_with('*');
            let kind = match kind.trim_end_matches('*') {
                "msg" => Kind::Msg,
                "msgs" => Kind::Msgs,
                "inline" => Kind::Inline,
                "str" => Kind::Str,
                "strs" => Kind::Strs,
                "i32" => Kind::I32,
                "i32s" => Kind::I32s,
                "i64" => Kind::I64,
                "i64s" => Kind::I64s,
                "bool" => Kind::Bool,
                "bytes" => Kind::Bytes,
                "f64" => Kind::F64,
                "map:msg" => Kind::MapMsg,
                "map:str" => Kind::MapStr,
                "map:bytes" => Kind::MapBytes,
                other => unreachable!("messages.txt: unknown kind {other}"),
            };
            let field = Field {
                tag: tag.parse().expect("messages.txt: a numeric tag"),
                json: json.to_string(),
                kind,
                required,
                ty: parts.next().map(String::from),
            };
            if let Some(m) = current.as_ref().and_then(|c| out.get_mut(c)) {
                m.fields.push(field);
            }
        }
        out
    })
}

/// The message of an apiVersion and kind, if the table has it.
pub fn message_for(api_version: &str, kind: &str) -> Option<&'static str> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = match group {
        "" => "io.k8s.api.core".to_string(),
        "apiextensions.k8s.io" => "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions".into(),
        "meta.k8s.io" => "io.k8s.apimachinery.pkg.apis.meta".into(),
        g => format!(
            "io.k8s.api.{}",
            g.trim_end_matches(".k8s.io").split('.').next().unwrap_or(g)
        ),
    };
    let t = table();
    [
        format!("{package}.{version}.{kind}"),
        format!("{META}.{kind}"),
    ]
    .into_iter()
    .find_map(|name| t.get_key_value(&name).map(|(k, _)| k.as_str()))
}

// ------------------------------------------------------------- wire level

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_key(out: &mut Vec<u8>, tag: u32, wire: u8) {
    put_varint(out, (u64::from(tag) << 3) | u64::from(wire));
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, tag: u32, b: &[u8]) {
    put_key(out, tag, 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// One field read off the wire.
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    /// The next field, or `None` at the end; `Err` when malformed.
    fn next(&mut self) -> Result<Option<(u32, Wire<'a>)>, ()> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint().ok_or(())?;
        let tag = u32::try_from(key >> 3).map_err(|_| ())?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint().ok_or(())?),
            1 => Wire::Fixed64(u64::from_le_bytes(
                self.take(8).ok_or(())?.try_into().map_err(|_| ())?,
            )),
            2 => {
                let n = usize::try_from(self.varint().ok_or(())?).map_err(|_| ())?;
                Wire::Bytes(self.take(n).ok_or(())?)
            }
            5 => {
                self.take(4).ok_or(())?;
                Wire::Fixed32
            }
            _ => return Err(()),
        };
        Ok(Some((tag, wire)))
    }
}

fn fields_of<'a>(buf: &'a [u8], path: &str) -> Result<Vec<(u32, Wire<'a>)>, PbError> {
    let mut r = Reader::new(buf);
    let mut out = Vec::new();
    loop {
        match r.next() {
            Ok(Some(f)) => out.push(f),
            Ok(None) => return Ok(out),
            Err(()) => return Err(PbError::Malformed(path.to_string())),
        }
    }
}

// --------------------------------------------------------------- decoding

fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = ns < 0;
    let mut n = ns.unsigned_abs();
    let mut out = String::new();
    if n < 1_000_000_000 {
        // below a second Go uses the largest unit that fits
        let (unit, div) = if n < 1_000 {
            ("ns", 1)
        } else if n < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        out.push_str(&trim_fraction(n, div));
        out.push_str(unit);
    } else {
        let h = n / 3_600_000_000_000;
        n %= 3_600_000_000_000;
        let m = n / 60_000_000_000;
        n %= 60_000_000_000;
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if h > 0 || m > 0 {
            out.push_str(&format!("{m}m"));
        }
        out.push_str(&trim_fraction(n, 1_000_000_000));
        out.push('s');
    }
    if neg {
        format!("-{out}")
    } else {
        out
    }
}

fn trim_fraction(n: u64, div: u64) -> String {
    let whole = n / div;
    let frac = n % div;
    if frac == 0 {
        return whole.to_string();
    }
    let width = div.to_string().len() - 1;
    let f = format!("{frac:0width$}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

fn parse_go_duration(s: &str) -> Option<i64> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += num * scale;
        rest = &rest[unit_end..];
    }
    Some(if neg { -total as i64 } else { total as i64 })
}

fn rfc3339(seconds: i64, micros: Option<u32>) -> Value {
    let Some(t) = chrono::DateTime::from_timestamp(seconds, micros.unwrap_or(0) * 1000) else {
        return Value::Null;
    };
    Value::String(match micros {
        Some(_) => t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        None => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    })
}

fn varint_of(w: &Wire) -> Option<u64> {
    match w {
        Wire::Varint(v) => Some(*v),
        _ => None,
    }
}

fn bytes_of<'a>(w: &Wire<'a>) -> Option<&'a [u8]> {
    match w {
        Wire::Bytes(b) => Some(b),
        _ => None,
    }
}

/// Raw JSON kept in a bytes field (`RawExtension`, `FieldsV1`, `JSON`); an
/// embedded protobuf object (a watch event's) is decoded too.
fn raw_value(b: &[u8], path: &str) -> Result<Value, PbError> {
    if b.starts_with(MAGIC) {
        return decode_object(b);
    }
    if b.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(b).map_err(|e| PbError::Field {
        path: path.to_string(),
        message: format!("embedded JSON: {e}"),
    })
}

fn decode_special(ty: &str, buf: &[u8], path: &str) -> Result<Option<Value>, PbError> {
    let fields = || fields_of(buf, path);
    let v = match ty {
        TIME | MICRO_TIME => {
            let f = fields()?;
            if f.is_empty() {
                return Ok(Some(Value::Null));
            }
            let secs = f
                .iter()
                .find(|(t, _)| *t == 1)
                .and_then(|(_, w)| varint_of(w))
                .unwrap_or(0) as i64;
            let nanos = f
                .iter()
                .find(|(t, _)| *t == 2)
                .and_then(|(_, w)| varint_of(w))
                .unwrap_or(0) as u32;
            rfc3339(secs, (ty == MICRO_TIME).then_some(nanos / 1000))
        }
        DURATION => {
            let f = fields()?;
            let ns = f
                .iter()
                .find_map(|(t, w)| (*t == 1).then(|| varint_of(w)).flatten());
            json!(go_duration(ns.unwrap_or(0) as i64))
        }
        INT_OR_STRING => {
            let f = fields()?;
            let get = |tag| f.iter().find(|(t, _)| *t == tag).map(|(_, w)| w);
            let is_string = get(1).and_then(varint_of) == Some(1);
            if is_string {
                let s = get(3).and_then(bytes_of).unwrap_or_default();
                json!(String::from_utf8_lossy(s))
            } else {
                json!(get(2).and_then(varint_of).unwrap_or(0) as i32)
            }
        }
        QUANTITY => {
            let f = fields()?;
            let s = f
                .iter()
                .find_map(|(t, w)| (*t == 1).then(|| bytes_of(w)).flatten())
                .unwrap_or_default();
            json!(String::from_utf8_lossy(s))
        }
        RAW_EXTENSION | FIELDS_V1 => {
            let f = fields()?;
            match f
                .iter()
                .find_map(|(t, w)| (*t == 1).then(|| bytes_of(w)).flatten())
            {
                Some(b) => raw_value(b, path)?,
                None => Value::Null,
            }
        }
        VERBS => {
            let f = fields()?;
            Value::Array(
                f.iter()
                    .filter_map(|(t, w)| (*t == 1).then(|| bytes_of(w)).flatten())
                    .map(|b| json!(String::from_utf8_lossy(b)))
                    .collect(),
            )
        }
        _ if ty == format!("{CRD}.JSON") => {
            let f = fields()?;
            match f
                .iter()
                .find_map(|(t, w)| (*t == 1).then(|| bytes_of(w)).flatten())
            {
                Some(b) => raw_value(b, path)?,
                None => Value::Null,
            }
        }
        _ if ty.starts_with(&format!("{CRD}.JSONSchemaPropsOr")) => {
            let props = format!("{CRD}.JSONSchemaProps");
            let f = fields()?;
            let which = ty.rsplit("Or").next().unwrap_or_default();
            match which {
                "Array" => {
                    let mut items = Vec::new();
                    let mut one = None;
                    for (t, w) in &f {
                        let b = bytes_of(w).unwrap_or_default();
                        match t {
                            1 => one = Some(decode_message(&props, b, path)?),
                            2 => items.push(decode_message(&props, b, path)?),
                            _ => {}
                        }
                    }
                    one.unwrap_or(Value::Array(items))
                }
                "Bool" => {
                    let mut allows = false;
                    let mut schema = None;
                    for (t, w) in &f {
                        match t {
                            1 => allows = varint_of(w) == Some(1),
                            2 => {
                                schema = Some(decode_message(
                                    &props,
                                    bytes_of(w).unwrap_or_default(),
                                    path,
                                )?)
                            }
                            _ => {}
                        }
                    }
                    schema.unwrap_or(Value::Bool(allows))
                }
                _ => {
                    let mut list = Vec::new();
                    let mut schema = None;
                    for (t, w) in &f {
                        let b = bytes_of(w).unwrap_or_default();
                        match t {
                            1 => schema = Some(decode_message(&props, b, path)?),
                            2 => list.push(json!(String::from_utf8_lossy(b))),
                            _ => {}
                        }
                    }
                    schema.unwrap_or(Value::Array(list))
                }
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(v))
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn decode_message(ty: &str, buf: &[u8], path: &str) -> Result<Value, PbError> {
    if let Some(v) = decode_special(ty, buf, path)? {
        return Ok(v);
    }
    let msg = table()
        .get(ty)
        .ok_or_else(|| PbError::UnknownKind(ty.to_string()))?;
    let mut out = Map::new();
    let mut inline = Vec::new();
    for (tag, wire) in fields_of(buf, path)? {
        let Some(f) = msg.by_tag(tag) else { continue };
        let at = format!("{path}.{}", f.json);
        let bad = || PbError::Malformed(at.clone());
        let sub = |b: &[u8]| -> Result<Value, PbError> {
            decode_message(f.ty.as_deref().unwrap_or_default(), b, &at)
        };
        let string = |b: &[u8]| -> Result<Value, PbError> {
            String::from_utf8(b.to_vec())
                .map(Value::String)
                .map_err(|_| PbError::Field {
                    path: at.clone(),
                    message: "a string is not UTF-8".into(),
                })
        };
        let push = |out: &mut Map<String, Value>, v: Value| {
            if let Some(a) = out
                .entry(f.json.clone())
                .or_insert_with(|| Value::Array(Vec::new()))
                .as_array_mut()
            {
                a.push(v);
            }
        };
        match (f.kind, &wire) {
            (Kind::Msg, Wire::Bytes(b)) => {
                out.insert(f.json.clone(), sub(b)?);
            }
            (Kind::Inline, Wire::Bytes(b)) => inline.push(sub(b)?),
            (Kind::Msgs, Wire::Bytes(b)) => push(&mut out, sub(b)?),
            (Kind::Str, Wire::Bytes(b)) => {
                out.insert(f.json.clone(), string(b)?);
            }
            (Kind::Strs, Wire::Bytes(b)) => push(&mut out, string(b)?),
            (Kind::Bytes, Wire::Bytes(b)) => {
                out.insert(
                    f.json.clone(),
                    json!(base64::engine::general_purpose::STANDARD.encode(b)),
                );
            }
            (Kind::I32, Wire::Varint(v)) => {
                out.insert(f.json.clone(), json!(*v as i32));
            }
            (Kind::I64, Wire::Varint(v)) => {
                out.insert(f.json.clone(), json!(*v as i64));
            }
            (Kind::I32s, Wire::Varint(v)) => push(&mut out, json!(*v as i32)),
            (Kind::I64s, Wire::Varint(v)) => push(&mut out, json!(*v as i64)),
            (Kind::I32s | Kind::I64s, Wire::Bytes(b)) => {
                // packed
                let mut r = Reader::new(b);
                while r.pos < b.len() {
                    let v = r.varint().ok_or_else(bad)?;
                    push(
                        &mut out,
                        if f.kind == Kind::I32s {
                            json!(v as i32)
                        } else {
                            json!(v as i64)
                        },
                    );
                }
            }
            (Kind::Bool, Wire::Varint(v)) => {
                out.insert(f.json.clone(), json!(*v != 0));
            }
            (Kind::F64, Wire::Fixed64(v)) => {
                out.insert(f.json.clone(), json!(f64::from_bits(*v)));
            }
            (Kind::MapMsg | Kind::MapStr | Kind::MapBytes, Wire::Bytes(b)) => {
                let mut key = String::new();
                let mut value = Value::Null;
                for (t, w) in fields_of(b, &at)? {
                    let b = bytes_of(&w).ok_or_else(bad)?;
                    match t {
                        1 => key = String::from_utf8_lossy(b).into_owned(),
                        2 => {
                            value = match f.kind {
                                Kind::MapMsg => sub(b)?,
                                Kind::MapStr => string(b)?,
                                _ => json!(base64::engine::general_purpose::STANDARD.encode(b)),
                            }
                        }
                        _ => {}
                    }
                }
                if value.is_null() {
                    value = match f.kind {
                        Kind::MapMsg => match f.ty.as_deref() {
                            Some(QUANTITY) => json!(""),
                            _ => json!({}),
                        },
                        _ => json!(""),
                    };
                }
                if let Some(m) = out
                    .entry(f.json.clone())
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
                {
                    m.insert(key, value);
                }
            }
            _ => return Err(bad()),
        }
    }
    // drop what Go's JSON would leave out
    for f in &msg.fields {
        let keep = f.required || KEEP_ZERO.contains(&f.json.as_str());
        if let Some(v) = out.get(&f.json) {
            if v.is_null() || (!keep && is_zero(v)) {
                out.remove(&f.json);
            }
        }
    }
    for v in inline {
        if let Value::Object(m) = v {
            for (k, v) in m {
                out.entry(k).or_insert(v);
            }
        }
    }
    // keep the table's field order, as Go's JSON does
    let mut ordered = Map::new();
    for f in &msg.fields {
        if let Some(v) = out.remove(&f.json) {
            ordered.insert(f.json.clone(), v);
        }
    }
    ordered.extend(out);
    Ok(Value::Object(ordered))
}

/// The apiVersion and kind an envelope names, and its raw message.
fn envelope(bytes: &[u8]) -> Result<(String, String, &[u8]), PbError> {
    let body = bytes.strip_prefix(MAGIC).ok_or(PbError::NoMagic)?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (tag, w) in fields_of(body, "Unknown")? {
        match (tag, w) {
            (1, Wire::Bytes(tm)) => {
                for (t, w) in fields_of(tm, "Unknown.typeMeta")? {
                    let s = bytes_of(&w).unwrap_or_default();
                    match t {
                        1 => api_version = String::from_utf8_lossy(s).into_owned(),
                        2 => kind = String::from_utf8_lossy(s).into_owned(),
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    Ok((api_version, kind, raw))
}

/// The apiVersion and kind a protobuf body names, without decoding it.
pub fn type_of(bytes: &[u8]) -> Result<(String, String), PbError> {
    envelope(bytes).map(|(a, k, _)| (a, k))
}

/// Decode a Kubernetes protobuf document (magic, envelope, message) into
/// the object's JSON, `apiVersion` and `kind` first.
pub fn decode_object(bytes: &[u8]) -> Result<Value, PbError> {
    let (api_version, kind, raw) = envelope(bytes)?;
    let ty = message_for(&api_version, &kind)
        .ok_or_else(|| PbError::UnknownKind(format!("{api_version} {kind}")))?;
    let body = decode_message(ty, raw, &kind)?;
    let mut out = Map::new();
    out.insert("kind".into(), json!(kind));
    out.insert("apiVersion".into(), json!(api_version));
    if let Value::Object(m) = body {
        out.extend(m);
    }
    Ok(Value::Object(out))
}

// --------------------------------------------------------------- encoding

fn field_error(path: &str, message: impl Into<String>) -> PbError {
    PbError::Field {
        path: path.to_string(),
        message: message.into(),
    }
}

fn as_int(v: &Value, path: &str) -> Result<i64, PbError> {
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| field_error(path, format!("expected an integer, got {v}")))
}

fn encode_time(v: &Value, micro: bool, path: &str, out: &mut Vec<u8>) -> Result<(), PbError> {
    let s = v
        .as_str()
        .ok_or_else(|| field_error(path, "expected an RFC 3339 time"))?;
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .map_err(|e| field_error(path, format!("{s:?} is not an RFC 3339 time: {e}")))?;
    put_key(out, 1, 0);
    put_varint(out, t.timestamp() as u64);
    if micro && t.timestamp_subsec_nanos() > 0 {
        put_key(out, 2, 0);
        put_varint(out, u64::from(t.timestamp_subsec_micros() * 1000));
    }
    Ok(())
}

fn encode_special(ty: &str, v: &Value, path: &str, out: &mut Vec<u8>) -> Result<bool, PbError> {
    match ty {
        TIME | MICRO_TIME => encode_time(v, ty == MICRO_TIME, path, out)?,
        DURATION => {
            let s = v
                .as_str()
                .ok_or_else(|| field_error(path, "expected a duration"))?;
            let ns = parse_go_duration(s)
                .ok_or_else(|| field_error(path, format!("{s:?} is not a duration")))?;
            put_key(out, 1, 0);
            put_varint(out, ns as u64);
        }
        INT_OR_STRING => match v {
            Value::String(s) => {
                put_key(out, 1, 0);
                put_varint(out, 1);
                put_bytes(out, 3, s.as_bytes());
            }
            other => {
                put_key(out, 1, 0);
                put_varint(out, 0);
                put_key(out, 2, 0);
                put_varint(out, as_int(other, path)? as i32 as i64 as u64);
            }
        },
        QUANTITY => {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(field_error(path, "expected a quantity")),
            };
            put_bytes(out, 1, s.as_bytes());
        }
        RAW_EXTENSION | FIELDS_V1 => {
            if !v.is_null() {
                put_bytes(out, 1, v.to_string().as_bytes());
            }
        }
        VERBS => {
            for s in v.as_array().into_iter().flatten() {
                put_bytes(out, 1, s.as_str().unwrap_or_default().as_bytes());
            }
        }
        _ if ty == format!("{CRD}.JSON") => put_bytes(out, 1, v.to_string().as_bytes()),
        _ if ty.starts_with(&format!("{CRD}.JSONSchemaPropsOr")) => {
            let props = format!("{CRD}.JSONSchemaProps");
            let which = ty.rsplit("Or").next().unwrap_or_default();
            match (which, v) {
                ("Bool", Value::Bool(b)) => {
                    put_key(out, 1, 0);
                    put_varint(out, u64::from(*b));
                }
                ("Bool", obj) => {
                    put_key(out, 1, 0);
                    put_varint(out, 1);
                    put_bytes(out, 2, &encode_message(&props, obj, path)?);
                }
                ("Array", Value::Array(items)) => {
                    for i in items {
                        put_bytes(out, 2, &encode_message(&props, i, path)?);
                    }
                }
                ("StringArray", Value::Array(items)) => {
                    for i in items {
                        put_bytes(out, 2, i.as_str().unwrap_or_default().as_bytes());
                    }
                }
                (_, obj) => put_bytes(out, 1, &encode_message(&props, obj, path)?),
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn encode_message(ty: &str, v: &Value, path: &str) -> Result<Vec<u8>, PbError> {
    let mut out = Vec::new();
    if encode_special(ty, v, path, &mut out)? {
        return Ok(out);
    }
    let msg = table()
        .get(ty)
        .ok_or_else(|| PbError::UnknownKind(ty.to_string()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| field_error(path, format!("expected an object, got {v}")))?;
    for f in &msg.fields {
        let at = format!("{path}.{}", f.json);
        let sub_ty = f.ty.as_deref().unwrap_or_default();
        if f.kind == Kind::Inline {
            let b = encode_message(sub_ty, v, &at)?;
            if !b.is_empty() {
                put_bytes(&mut out, f.tag, &b);
            }
            continue;
        }
        let Some(x) = obj.get(&f.json).filter(|x| !x.is_null()) else {
            continue;
        };
        let list = || {
            x.as_array()
                .ok_or_else(|| field_error(&at, format!("expected a list, got {x}")))
        };
        let string = |x: &Value| match x {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(field_error(&at, format!("expected a string, got {other}"))),
        };
        let bytes = |x: &Value| {
            let s = x
                .as_str()
                .ok_or_else(|| field_error(&at, "expected base64 bytes"))?;
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| field_error(&at, format!("not base64: {e}")))
        };
        match f.kind {
            Kind::Msg => put_bytes(&mut out, f.tag, &encode_message(sub_ty, x, &at)?),
            Kind::Msgs => {
                for (i, e) in list()?.iter().enumerate() {
                    put_bytes(
                        &mut out,
                        f.tag,
                        &encode_message(sub_ty, e, &format!("{at}[{i}]"))?,
                    );
                }
            }
            Kind::Str => put_bytes(&mut out, f.tag, string(x)?.as_bytes()),
            Kind::Strs => {
                for e in list()? {
                    put_bytes(&mut out, f.tag, string(e)?.as_bytes());
                }
            }
            Kind::Bytes => put_bytes(&mut out, f.tag, &bytes(x)?),
            Kind::I32 | Kind::I64 => {
                put_key(&mut out, f.tag, 0);
                put_varint(&mut out, as_int(x, &at)? as u64);
            }
            Kind::I32s | Kind::I64s => {
                for e in list()? {
                    put_key(&mut out, f.tag, 0);
                    put_varint(&mut out, as_int(e, &at)? as u64);
                }
            }
            Kind::Bool => {
                let b = x
                    .as_bool()
                    .ok_or_else(|| field_error(&at, format!("expected a boolean, got {x}")))?;
                put_key(&mut out, f.tag, 0);
                put_varint(&mut out, u64::from(b));
            }
            Kind::F64 => {
                let n = x
                    .as_f64()
                    .ok_or_else(|| field_error(&at, format!("expected a number, got {x}")))?;
                put_key(&mut out, f.tag, 1);
                out.extend_from_slice(&n.to_bits().to_le_bytes());
            }
            Kind::MapMsg | Kind::MapStr | Kind::MapBytes => {
                let m = x
                    .as_object()
                    .ok_or_else(|| field_error(&at, format!("expected a map, got {x}")))?;
                for (k, e) in m {
                    let mut entry = Vec::new();
                    put_bytes(&mut entry, 1, k.as_bytes());
                    let value = match f.kind {
                        Kind::MapMsg => encode_message(sub_ty, e, &format!("{at}[{k}]"))?,
                        Kind::MapStr => string(e)?.into_bytes(),
                        _ => bytes(e)?,
                    };
                    put_bytes(&mut entry, 2, &value);
                    put_bytes(&mut out, f.tag, &entry);
                }
            }
            Kind::Inline => unreachable!(),
        }
    }
    Ok(out)
}

/// Wrap a message in the envelope: magic, then `runtime.Unknown`.
fn wrap(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let mut tm = Vec::new();
    put_bytes(&mut tm, 1, api_version.as_bytes());
    put_bytes(&mut tm, 2, kind.as_bytes());
    let mut out = MAGIC.to_vec();
    put_bytes(&mut out, 1, &tm);
    put_bytes(&mut out, 2, raw);
    put_bytes(&mut out, 3, b"");
    put_bytes(&mut out, 4, b"");
    out
}

/// Encode an object (its `apiVersion` and `kind` name the message) as a
/// Kubernetes protobuf document.
pub fn encode_object(v: &Value) -> Result<Vec<u8>, PbError> {
    let api_version = v["apiVersion"].as_str().unwrap_or_default();
    let kind = v["kind"].as_str().unwrap_or_default();
    let ty = message_for(api_version, kind)
        .ok_or_else(|| PbError::UnknownKind(format!("{api_version} {kind}")))?;
    Ok(wrap(api_version, kind, &encode_message(ty, v, kind)?))
}

/// One frame of a protobuf watch stream: the big-endian length, then a
/// `WatchEvent` (unwrapped) whose object is a whole protobuf document.
pub fn encode_watch_event(event_type: &str, object: &Value) -> Result<Vec<u8>, PbError> {
    let mut event = Vec::new();
    put_bytes(&mut event, 1, event_type.as_bytes());
    let mut raw = Vec::new();
    put_bytes(&mut raw, 1, &encode_object(object)?);
    put_bytes(&mut event, 2, &raw);
    let mut out = (event.len() as u32).to_be_bytes().to_vec();
    out.extend(event);
    Ok(out)
}

/// Whether an object of this apiVersion and kind has a protobuf encoding.
pub fn supports(api_version: &str, kind: &str) -> bool {
    message_for(api_version, kind).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn round_trip(v: Value) -> Value {
        decode_object(&encode_object(&v).unwrap()).unwrap()
    }

    #[test]
    fn a_deployment_round_trips_with_kubernetes_json_forms() {
        let d = json!({
            "kind": "Deployment", "apiVersion": "apps/v1",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
                "creationTimestamp": "2026-12-01T05:31:12Z",
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "apps/v1",
                    "time": "2026-12-01T05:31:12Z", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"automountServiceAccountToken": false,
                        "containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 80}],
                            "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}},
                            "env": [{"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}]}],
                        "volumes": [{"name": "v", "configMap": {"name": "cm", "defaultMode": 420}}]}}},
        });
        assert_eq!(round_trip(d.clone()), d);
    }

    #[test]
    fn the_envelope_matches_the_k8s_pb_types() {
        let cm = json!({"kind": "ConfigMap", "apiVersion": "v1",
            "metadata": {"name": "c"}, "data": {"a": "b"}, "binaryData": {"z": "AAE="}});
        let bytes = encode_object(&cm).unwrap();
        let unknown =
            k8s_pb::apimachinery::pkg::runtime::Unknown::decode(&bytes[MAGIC.len()..]).unwrap();
        assert_eq!(
            unknown.type_meta.as_ref().unwrap().kind.as_deref(),
            Some("ConfigMap")
        );
        let typed =
            k8s_pb::api::core::v1::ConfigMap::decode(unknown.raw.as_deref().unwrap()).unwrap();
        assert_eq!(typed.metadata.unwrap().name.as_deref(), Some("c"));
        assert_eq!(typed.data["a"], "b");
        assert_eq!(typed.binary_data["z"], vec![0, 1]);
        // and prost's own encoding decodes to the same JSON
        let mut raw = Vec::new();
        k8s_pb::api::core::v1::ConfigMap {
            metadata: Some(k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("c".into()),
                // Go writes empty strings for unset non-pointer fields
                generate_name: Some(String::new()),
                ..Default::default()
            }),
            data: [("a".to_string(), "b".to_string())].into(),
            binary_data: [("z".to_string(), vec![0, 1])].into(),
            immutable: None,
        }
        .encode(&mut raw)
        .unwrap();
        assert_eq!(decode_object(&wrap("v1", "ConfigMap", &raw)).unwrap(), cm);
    }

    #[test]
    fn go_zero_values_are_dropped_but_meaningful_zeros_kept() {
        use k8s_pb::api::core::v1 as core;
        let mut raw = Vec::new();
        core::Pod {
            spec: Some(core::PodSpec {
                host_network: Some(false),
                node_name: Some(String::new()),
                termination_grace_period_seconds: Some(0),
                containers: vec![core::Container {
                    name: Some("a".into()),
                    image: Some("x".into()),
                    stdin: Some(false),
                    ports: vec![core::ContainerPort {
                        container_port: Some(80),
                        host_port: Some(0),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode(&mut raw)
        .unwrap();
        let pod = decode_object(&wrap("v1", "Pod", &raw)).unwrap();
        assert_eq!(
            pod["spec"],
            json!({"containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 80}]}],
                "terminationGracePeriodSeconds": 0})
        );
    }

    #[test]
    fn special_types_keep_their_json_forms() {
        assert_eq!(go_duration(3_723_000_000_000), "1h2m3s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(500_000_000), "500ms");
        assert_eq!(parse_go_duration("1h2m3s"), Some(3_723_000_000_000));
        assert_eq!(parse_go_duration("1.5s"), Some(1_500_000_000));
        let ev = json!({"kind": "Event", "apiVersion": "v1",
            "metadata": {"name": "e", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "p"},
            "eventTime": "2026-12-01T05:31:12.123456Z", "count": 2, "type": "Normal"});
        assert_eq!(round_trip(ev.clone()), ev);
        let svc = json!({"kind": "Service", "apiVersion": "v1", "metadata": {"name": "s"},
            "spec": {"ports": [{"port": 80, "targetPort": "http"}, {"port": 81, "targetPort": 8081}]}});
        assert_eq!(round_trip(svc.clone()), svc);
        let secret = json!({"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "s"},
            "data": {"k": "dmFsdWU="}, "type": "Opaque"});
        assert_eq!(round_trip(secret.clone()), secret);
    }

    #[test]
    fn lists_options_and_watch_events_encode() {
        let list = json!({"kind": "PodList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "7"},
            "items": [{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]});
        assert_eq!(round_trip(list.clone()), list);
        let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1",
            "gracePeriodSeconds": 0, "propagationPolicy": "Foreground"});
        assert_eq!(round_trip(opts.clone()), opts);
        let ev = json!({"kind": "Eviction", "apiVersion": "policy/v1",
            "metadata": {"name": "p", "namespace": "default"}});
        assert_eq!(round_trip(ev.clone()), ev);
        let frame = encode_watch_event("ADDED", &list["items"][0].clone().tap()).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        let e = k8s_pb::apimachinery::pkg::apis::meta::v1::WatchEvent::decode(&frame[4..]).unwrap();
        assert_eq!(e.r#type.as_deref(), Some("ADDED"));
        let obj = decode_object(e.object.unwrap().raw.as_deref().unwrap()).unwrap();
        assert_eq!(obj["metadata"]["name"], "a");
    }

    trait Tap {
        fn tap(self) -> Value;
    }
    impl Tap for Value {
        fn tap(mut self) -> Value {
            self["kind"] = json!("Pod");
            self["apiVersion"] = json!("v1");
            self
        }
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        assert!(matches!(decode_object(b"{}"), Err(PbError::NoMagic)));
        assert!(decode_object(b"k8s\x00\x0a\xff").is_err());
        let unknown = wrap("example.com/v1", "Widget", b"");
        assert!(matches!(
            decode_object(&unknown),
            Err(PbError::UnknownKind(_))
        ));
        let mut bad = wrap("v1", "ConfigMap", &[0x0a, 0x05, 0x01]);
        bad.truncate(bad.len() - 1);
        assert!(decode_object(&bad).is_err());
    }
}
