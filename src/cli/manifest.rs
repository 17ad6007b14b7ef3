//! Reading manifests for `apply -f` / `delete -f`: files, directories or
//! stdin; multi-document YAML or JSON (including `kind: List`). A bad
//! document is reported with its file, document number and line, and the
//! other documents are still read.

use std::path::Path;

use serde_json::Value;

/// One decoded document.
#[derive(Debug, Clone)]
pub struct Document {
    /// The file it came from (`STDIN` for `-`).
    pub source: String,
    /// 1-based position in the file.
    pub index: usize,
    /// The line the document starts on.
    pub line: usize,
    pub value: Value,
}

/// A document that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("error parsing {file} (document {index}, line {line}): {message}")]
pub struct ManifestError {
    pub file: String,
    pub index: usize,
    pub line: usize,
    pub message: String,
}

/// Split YAML text into documents at `---` lines: (start line, text).
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") || t.starts_with("---\t") {
            docs.push((start, std::mem::take(&mut cur)));
            start = i + 2;
            continue;
        }
        if t == "..." {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    docs.push((start, cur));
    docs
}

fn is_blank(doc: &str) -> bool {
    doc.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#')
    })
}

/// Expand `kind: List` into its items.
fn expand(v: Value) -> Vec<Value> {
    let is_list = v["kind"]
        .as_str()
        .is_some_and(|k| k == "List" || k.ends_with("List"))
        && v["items"].is_array();
    if is_list {
        v["items"].as_array().cloned().unwrap_or_default()
    } else {
        vec![v]
    }
}

/// Decode every document in `text`, read from `source`.
pub fn decode(source: &str, text: &str) -> (Vec<Document>, Vec<ManifestError>) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        // JSON: one value, or a stream of values.
        let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        let mut index = 0;
        loop {
            let offset = stream.byte_offset();
            match stream.next() {
                None => break,
                Some(Ok(v)) => {
                    index += 1;
                    let line = text[..offset].lines().count().max(1);
                    let items = match v {
                        Value::Array(items) => items,
                        other => expand(other),
                    };
                    docs.extend(items.into_iter().map(|value| Document {
                        source: source.into(),
                        index,
                        line,
                        value,
                    }));
                }
                Some(Err(e)) => {
                    errors.push(ManifestError {
                        file: source.into(),
                        index: index + 1,
                        line: e.line(),
                        message: e.to_string(),
                    });
                    break;
                }
            }
        }
        return (docs, errors);
    }
    let mut index = 0;
    for (start, doc) in split_documents(text) {
        if is_blank(&doc) {
            continue;
        }
        index += 1;
        match serde_saphyr::from_str::<Value>(&doc) {
            Ok(Value::Null) => {}
            Ok(v @ Value::Object(_)) => {
                docs.extend(expand(v).into_iter().map(|value| Document {
                    source: source.into(),
                    index,
                    line: start,
                    value,
                }));
            }
            Ok(other) => errors.push(ManifestError {
                file: source.into(),
                index,
                line: start,
                message: format!("expected a mapping (an object), found {}", kind_of(&other)),
            }),
            Err(e) => {
                let line = e
                    .location()
                    .map(|l| start + l.line() as usize - 1)
                    .unwrap_or(start);
                let message =
                    strip_relative_position(e.to_string().lines().next().unwrap_or_default());
                errors.push(ManifestError {
                    file: source.into(),
                    index,
                    line,
                    message,
                });
            }
        }
    }
    (docs, errors)
}

/// The YAML error's own `error: line L column C: ` prefix counts from the
/// document start; the absolute line is reported separately, keep the column.
fn strip_relative_position(msg: &str) -> String {
    let rest = msg.strip_prefix("error: ").unwrap_or(msg);
    if let Some(after_line) = rest.strip_prefix("line ") {
        if let Some((_, tail)) = after_line.split_once(" column ") {
            return format!("column {tail}");
        }
    }
    rest.to_string()
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

/// Read `-f` arguments: files, directories (their .yaml/.yml/.json files, sorted) or `-`.
pub fn read(paths: &[String]) -> (Vec<Document>, Vec<ManifestError>) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    let mut add = |source: String, text: Result<String, std::io::Error>| match text {
        Ok(t) => {
            let (d, e) = decode(&source, &t);
            docs.extend(d);
            errors.extend(e);
        }
        Err(e) => errors.push(ManifestError {
            file: source,
            index: 0,
            line: 0,
            message: e.to_string(),
        }),
    };
    for p in paths {
        if p == "-" {
            let mut s = String::new();
            let r = std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map(|_| s);
            add("STDIN".into(), r);
            continue;
        }
        let path = Path::new(p);
        if path.is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(path)
                .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
                .unwrap_or_default();
            files.retain(|f| {
                f.extension()
                    .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            });
            files.sort();
            for f in files {
                add(f.display().to_string(), std::fs::read_to_string(&f));
            }
        } else {
            add(p.clone(), std::fs::read_to_string(path));
        }
    }
    (docs, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_bad_document_is_reported_and_the_others_still_decode() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\n# comment only\n---\napiVersion: v1\nkind: Pod\nmetadata: [unclosed\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n";
        let (docs, errors) = decode("m.yaml", text);
        assert_eq!(
            docs.iter()
                .map(|d| d.value["metadata"]["name"].as_str().unwrap())
                .collect::<Vec<_>>(),
            vec!["a", "c"]
        );
        assert_eq!(docs[1].index, 3);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].index, 2);
        assert!(
            errors[0].line >= 8 && errors[0].line <= 11,
            "{:?}",
            errors[0]
        );
        assert!(errors[0]
            .to_string()
            .starts_with("error parsing m.yaml (document 2, line"));
    }

    #[test]
    fn json_and_lists_expand() {
        let (docs, errors) = decode(
            "x.json",
            r#"{"apiVersion":"v1","kind":"List","items":[{"kind":"Pod"},{"kind":"Service"}]}"#,
        );
        assert!(errors.is_empty());
        assert_eq!(docs.len(), 2);
        let (docs, errors) = decode("x.json", "{\"kind\": \"Pod\"}\n{\"kind\": ");
        assert_eq!(docs.len(), 1);
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn scalars_are_not_objects() {
        let (_, errors) = decode("s.yaml", "just a string\n");
        assert!(errors[0].message.contains("expected a mapping"));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_text_never_panics(s in "(.|\n){0,200}") {
            let _ = decode("f", &s);
        }

        #[test]
        fn documents_round_trip_through_yaml(names in prop::collection::vec("[a-z][a-z0-9-]{0,10}", 1..6)) {
            let text: String = names.iter().map(|n| format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"{n}\"\ndata:\n  k: \"1\"\n")).collect::<Vec<_>>().join("---\n");
            let (docs, errors) = decode("f", &text);
            prop_assert!(errors.is_empty());
            let got: Vec<&str> = docs.iter().map(|d| d.value["metadata"]["name"].as_str().unwrap()).collect();
            prop_assert_eq!(got, names.iter().map(String::as_str).collect::<Vec<_>>());
            prop_assert!(docs.iter().all(|d| d.value["data"]["k"] == "1"));
        }
    }
}
