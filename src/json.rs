//! JSON values shrunk to fit before a cache keeps them.
//!
//! serde_json grows a map or a list by doubling while it parses (an object
//! of nine fields gets room for sixteen), and the caches that hold every
//! object (the store's, the informers') keep what they hold for long: a Pod
//! with its managed fields takes 39 KB parsed and 28 KB shrunk, an event
//! 8.7 KB and 6.8 KB (`docs/benchmarks.md`, "Objects shrunk to fit").

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
}
