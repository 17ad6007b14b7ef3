//! Keeps `messages.txt` true to the `k8s-pb` crate: reads the prost
//! definitions in its source (located with `cargo metadata`), takes each
//! field's tag and wire type from its `#[prost(...)]` attribute and its
//! JSON name from the k8s-openapi schema of the same type, and compares the
//! result with the committed table. `WK_UPDATE_PB=1` rewrites the table.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use syn::{Fields, GenericArgument, Item, PathArguments, Type};

struct RawField {
    rust: String,
    tag: u32,
    kind: String,
    /// The referenced message, as a module path (`api::core::v1::Pod`).
    target: Option<String>,
}

fn k8s_pb_src() -> PathBuf {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata failed");
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "k8s-pb")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("k8s-pb is a dependency");
    Path::new(manifest).parent().unwrap().join("src")
}

/// The type inside `Option<..>`, `Vec<..>`, `Box<..>` or the value of a
/// `BTreeMap<_, ..>`.
fn inner(ty: &Type) -> &Type {
    if let Type::Path(p) = ty {
        let last = p.path.segments.last().unwrap();
        if matches!(
            last.ident.to_string().as_str(),
            "Option" | "Vec" | "Box" | "BTreeMap"
        ) {
            if let PathArguments::AngleBracketed(a) = &last.arguments {
                if let Some(GenericArgument::Type(t)) = a
                    .args
                    .iter()
                    .rev()
                    .find(|g| matches!(g, GenericArgument::Type(_)))
                {
                    return inner(t);
                }
            }
        }
    }
    ty
}

/// Resolve a field's message type against the module it is declared in.
fn resolve(module: &[String], ty: &Type) -> Option<String> {
    let Type::Path(p) = inner(ty) else {
        return None;
    };
    let segs: Vec<String> = p
        .path
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    if segs.len() == 1
        && matches!(
            segs[0].as_str(),
            "String" | "u8" | "i32" | "i64" | "bool" | "f64"
        )
    {
        return None;
    }
    if segs.first().is_some_and(|s| s == "prost" || s == "core") {
        return None;
    }
    let mut base = module.to_vec();
    let mut rest = segs.as_slice();
    while rest.first().is_some_and(|s| s == "super") {
        base.pop();
        rest = &rest[1..];
    }
    base.extend(rest.iter().cloned());
    Some(base.join("::"))
}

fn kind_of(attr: &str) -> String {
    let parts: Vec<&str> = attr.split(',').map(str::trim).collect();
    let has = |s: &str| parts.contains(&s);
    if attr.contains("btree_map") {
        let value = if attr.contains("\"string, message\"") {
            "msg"
        } else if attr.contains("\"string, bytes\"") {
            "bytes"
        } else {
            "str"
        };
        return format!("map:{value}");
    }
    let base = if has("message") {
        "msg"
    } else if has("string") {
        "str"
    } else if has("int32") {
        "i32"
    } else if has("int64") {
        "i64"
    } else if has("bool") {
        "bool"
    } else if has("double") {
        "f64"
    } else if parts.iter().any(|p| p.starts_with("bytes")) {
        "bytes"
    } else {
        panic!("unknown prost attribute {attr}")
    };
    if has("repeated") {
        format!("{base}s")
    } else {
        base.to_string()
    }
}

fn collect(dir: &Path, module: &mut Vec<String>, out: &mut BTreeMap<String, Vec<RawField>>) {
    let file = dir.join(if module.is_empty() {
        "lib.rs"
    } else {
        "mod.rs"
    });
    let text = std::fs::read_to_string(&file).unwrap();
    let ast = syn::parse_file(&text).unwrap();
    for item in ast.items {
        match item {
            Item::Mod(m) if m.content.is_none() => {
                let name = m.ident.to_string();
                module.push(name.clone());
                collect(&dir.join(&name), module, out);
                module.pop();
            }
            Item::Struct(s) => {
                let Fields::Named(named) = &s.fields else {
                    continue;
                };
                let mut fields = Vec::new();
                for f in &named.named {
                    let Some(attr) = f.attrs.iter().find(|a| a.path().is_ident("prost")) else {
                        continue;
                    };
                    let tokens = match &attr.meta {
                        syn::Meta::List(l) => l.tokens.to_string(),
                        _ => continue,
                    };
                    let tag: u32 = tokens
                        .split("tag = \"")
                        .nth(1)
                        .and_then(|s| s.split('"').next())
                        .and_then(|s| s.parse().ok())
                        .expect("a tag");
                    let kind = kind_of(&tokens);
                    let target = if kind.contains("msg") {
                        resolve(module, &f.ty)
                    } else {
                        None
                    };
                    fields.push(RawField {
                        rust: f
                            .ident
                            .as_ref()
                            .unwrap()
                            .to_string()
                            .trim_start_matches("r#")
                            .to_string(),
                        tag,
                        kind,
                        target,
                    });
                }
                let mut path = module.clone();
                path.push(s.ident.to_string());
                out.insert(path.join("::"), fields);
            }
            _ => {}
        }
    }
}

/// `api::core::v1::Pod` → `io.k8s.api.core.v1.Pod`, with the Go spelling of
/// the name when the schemas know it (`JSONSchemaProps`, not `JsonSchemaProps`).
fn definition_name(path: &str, defs: &Map<String, Value>) -> String {
    let parts: Vec<&str> = path.split("::").collect();
    let (pkg, name) = parts.split_at(parts.len() - 1);
    let pkg: Vec<String> = pkg.iter().map(|p| p.replace('_', "-")).collect();
    let prefix = format!("io.k8s.{}.", pkg.join("."));
    let exact = format!("{prefix}{}", name[0]);
    if defs.contains_key(&exact) {
        return exact;
    }
    defs.keys()
        .find(|k| {
            k.strip_prefix(&prefix)
                .is_some_and(|n| n.eq_ignore_ascii_case(name[0]))
        })
        .cloned()
        .unwrap_or(exact)
}

fn normal(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn lower_camel(snake: &str) -> String {
    let mut out = String::new();
    for (i, part) in snake.split('_').enumerate() {
        if i == 0 {
            out.push_str(part);
        } else {
            let mut c = part.chars();
            if let Some(f) = c.next() {
                out.extend(f.to_uppercase());
                out.push_str(c.as_str());
            }
        }
    }
    out
}

/// The messages the API server encodes and decodes: every served kind and
/// its list, and the option and status kinds, with all they reference.
fn roots() -> Vec<&'static str> {
    vec![
        "apimachinery::pkg::apis::meta::v1::DeleteOptions",
        "apimachinery::pkg::apis::meta::v1::Status",
        "apimachinery::pkg::apis::meta::v1::WatchEvent",
        "apimachinery::pkg::apis::meta::v1::List",
        "apimachinery::pkg::runtime::Unknown",
        "api::policy::v1::Eviction",
        "api::autoscaling::v1::Scale",
        "api::core::v1::Binding",
        "api::authentication::v1::TokenRequest",
        "api::authentication::v1::TokenReview",
        "api::authentication::v1::SelfSubjectReview",
        "api::authorization::v1::SubjectAccessReview",
        "api::authorization::v1::SelfSubjectAccessReview",
        "api::authorization::v1::LocalSubjectAccessReview",
        "api::authorization::v1::SelfSubjectRulesReview",
    ]
}

fn generate() -> String {
    let src = k8s_pb_src();
    let mut raw = BTreeMap::new();
    collect(&src, &mut Vec::new(), &mut raw);
    let defs = &super::super::schema::schemas().definitions;
    let extra = super::super::schema::extra_definitions();
    let all_defs: Map<String, Value> = defs.clone().into_iter().chain(extra.clone()).collect();
    // the module paths of the served kinds, found by definition name
    let by_def: BTreeMap<String, String> = raw
        .keys()
        .map(|p| (definition_name(p, &all_defs), p.clone()))
        .collect();
    let mut queue: VecDeque<String> = roots().into_iter().map(String::from).collect();
    for name in all_defs.keys() {
        if all_defs[name]
            .get("x-kubernetes-group-version-kind")
            .is_some()
        {
            if let Some(p) = by_def.get(name) {
                queue.push_back(p.clone());
                if raw.contains_key(&format!("{p}List")) {
                    queue.push_back(format!("{p}List"));
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    while let Some(p) = queue.pop_front() {
        if !seen.insert(p.clone()) {
            continue;
        }
        for f in raw.get(&p).unwrap_or_else(|| panic!("no message {p}")) {
            if let Some(t) = &f.target {
                queue.push_back(t.clone());
            }
        }
    }
    let mut out = String::from(
        "# generated from the k8s-pb crate's prost types by `api::pb::gen` (WK_UPDATE_PB=1 cargo test pb::gen); do not edit\n",
    );
    let mut named: Vec<(String, &String)> = seen
        .iter()
        .map(|p| (definition_name(p, &all_defs), p))
        .collect();
    named.sort();
    for (def, path) in named {
        out.push_str(&format!("message {def}\n"));
        let props = all_defs
            .get(&def)
            .and_then(|d| d.get("properties"))
            .and_then(Value::as_object);
        for f in &raw[path] {
            // a Go struct embedded without a JSON name: its fields appear in
            // the parent's JSON (`localObjectReference`, `volumeSource`)
            let embedded = props.is_some_and(|p| !p.keys().any(|k| normal(k) == normal(&f.rust)))
                && f.kind == "msg";
            if embedded {
                let t = f.target.as_ref().unwrap();
                out.push_str(&format!(
                    "{} {} inline {}\n",
                    f.tag,
                    lower_camel(&f.rust),
                    definition_name(t, &all_defs)
                ));
                continue;
            }
            let json = props
                .and_then(|p| p.keys().find(|k| normal(k) == normal(&f.rust)).cloned())
                .unwrap_or_else(|| {
                    if props.is_some() {
                        eprintln!("{def}: {} is not in the schema", f.rust);
                    }
                    lower_camel(&f.rust)
                });
            let target = f
                .target
                .as_ref()
                .map(|t| format!(" {}", definition_name(t, &all_defs)))
                .unwrap_or_default();
            // fields Kubernetes requires are kept when zero, as Go's JSON
            // keeps them (no omitempty)
            let required = all_defs
                .get(&def)
                .and_then(|d| d.get("required"))
                .and_then(Value::as_array)
                .is_some_and(|r| r.iter().any(|k| k == &Value::String(json.clone())));
            let star = if required { "*" } else { "" };
            out.push_str(&format!("{} {} {}{star}{}\n", f.tag, json, f.kind, target));
        }
    }
    out
}

#[test]
fn the_message_table_matches_the_k8s_pb_crate() {
    let generated = generate();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/pb/messages.txt");
    if std::env::var_os("WK_UPDATE_PB").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "src/api/pb/messages.txt is out of date: run WK_UPDATE_PB=1 cargo test pb::gen"
    );
}
