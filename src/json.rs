//! JSON values shrunk to fit before a cache keeps them.
//!
//! serde_json grows a map or a list by doubling while it parses (an object
//! of nine fields gets room for sixteen), and the caches that hold every
//! object (the store's, the informers') keep what they hold for long: a Pod
//! with its managed fields takes 39 KB parsed and 28 KB shrunk, an event
//! 8.7 KB and 6.8 KB (`docs/benchmarks.md`, "Objects shrunk to fit").

use std::fmt;
use std::sync::Arc;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// `v` with every map and list holding room for exactly its entries.
/// Order and content are unchanged.
pub fn shrink(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::with_capacity(m.len());
            for (k, x) in m {
                out.insert(k, shrink(x));
            }
            Value::Object(out)
        }
        Value::Array(a) => {
            // a mapped `into_iter().collect()` reuses the buffer, capacity and all
            let mut out: Vec<Value> = a.into_iter().map(shrink).collect();
            out.shrink_to_fit();
            Value::Array(out)
        }
        other => other,
    }
}

/// `v`'s top-level map (or list) rebuilt with room for exactly its
/// entries; what it holds is left as it is. For a map that grew by one key
/// after a shrunk parse.
pub fn shrink_top(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::with_capacity(m.len());
            out.extend(m);
            Value::Object(out)
        }
        Value::Array(mut a) => {
            a.shrink_to_fit();
            Value::Array(a)
        }
        other => other,
    }
}

/// Parse JSON into a [`Value`] whose maps and lists have room for exactly
/// their entries, as [`shrink`] would leave them, in one pass: each map's
/// entries are gathered first and the map is built at its final size, so
/// it never grows by doubling (and rehashing) on the way. Same result as
/// `serde_json::from_slice` otherwise, duplicate keys included (the last
/// value wins, in the first one's place).
pub fn from_slice_shrunk(bytes: &[u8]) -> serde_json::Result<Value> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = Shrunk.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

/// For `#[serde(deserialize_with)]`: an `Arc<Value>` parsed as
/// [`from_slice_shrunk`] parses.
pub fn shrunk_arc<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Value>, D::Error> {
    Shrunk.deserialize(d).map(Arc::new)
}

/// The seed and the visitor of a shrunk [`Value`].
#[derive(Clone, Copy)]
struct Shrunk;

impl<'de> DeserializeSeed<'de> for Shrunk {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Shrunk {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(x) = seq.next_element_seed(Shrunk)? {
            out.push(x);
        }
        out.shrink_to_fit();
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries: Vec<(String, Value)> = Vec::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(Shrunk)?;
            entries.push((k, v));
        }
        let mut out = Map::with_capacity(entries.len());
        out.extend(entries);
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacities(v: &Value, out: &mut Vec<(usize, usize)>) {
        match v {
            Value::Array(a) => {
                out.push((a.len(), a.capacity()));
                a.iter().for_each(|x| capacities(x, out));
            }
            Value::Object(m) => m.values().for_each(|x| capacities(x, out)),
            _ => {}
        }
    }

    #[test]
    fn shrinking_keeps_order_and_content_and_drops_spare_room() {
        let mut v: Value = serde_json::from_str(
            r#"{"z": 1, "a": {"y": [1, 2, 3], "b": null}, "m": [{"k": "v"}, [], "s"], "e": {}}"#,
        )
        .unwrap();
        // spare room, as parsing leaves it
        if let Some(list) = v["a"]["y"].as_array_mut() {
            list.reserve(100);
        }
        let before = v.to_string();
        let small = shrink(v);
        assert_eq!(small.to_string(), before, "same text, same key order");
        let mut caps = Vec::new();
        capacities(&small, &mut caps);
        assert!(!caps.is_empty());
        for (len, cap) in caps {
            assert_eq!(len, cap);
        }
    }

    #[test]
    fn a_shrunk_parse_reads_what_serde_reads_with_no_spare_room() {
        let text = r#"{"z": 1, "a": {"y": [1, 2.5, -3, 18446744073709551615], "b": null},
            "m": [{"k": "v\u00e9\n"}, [], "s", true, false], "e": {}, "dup": 1, "x": 0, "dup": [2]}"#;
        let ours = from_slice_shrunk(text.as_bytes()).unwrap();
        let serde: Value = serde_json::from_str(text).unwrap();
        assert_eq!(ours, serde);
        assert_eq!(ours.to_string(), serde.to_string(), "same key order");
        let mut caps = Vec::new();
        capacities(&ours, &mut caps);
        assert!(caps.iter().all(|(len, cap)| len == cap), "{caps:?}");
        // what serde refuses, this refuses
        for bad in ["{\"a\": 1,}", "[1 2]", "{} x", "", "{\"a\""] {
            assert!(from_slice_shrunk(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn refitting_the_top_keeps_content_and_order_and_a_list_loses_its_room() {
        // a map's capacity is not visible through serde_json: content and order
        let mut m = serde_json::json!({"b": 1, "a": {"c": 2}});
        m["z"] = Value::Null;
        assert_eq!(shrink_top(m).to_string(), r#"{"b":1,"a":{"c":2},"z":null}"#);
        let mut list = vec![Value::from(1), Value::from(2)];
        list.reserve(50);
        let Value::Array(list) = shrink_top(Value::Array(list)) else {
            panic!("a list stays a list")
        };
        assert_eq!((list.len(), list.capacity()), (2, 2));
    }
}
