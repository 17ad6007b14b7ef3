//! `wkctl describe KIND NAME`: a human summary of the object and its events.

use serde_json::Value;

use super::get::urlencode;
use super::printers::{self, age};
use super::{resource, CliError, Context};
use crate::api::resources;

#[derive(clap::Args)]
pub struct Describe {
    /// Resource type.
    pub kind: String,
    /// Names (default: every object of the type).
    pub names: Vec<String>,
}

fn kv_map(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        v.as_str()
                            .map(String::from)
                            .unwrap_or_else(|| v.to_string())
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn field(out: &mut String, label: &str, value: &str) {
    out.push_str(&format!(
        "{:<14}{}\n",
        format!("{label}:"),
        if value.is_empty() { "<none>" } else { value }
    ));
}

fn multi(out: &mut String, label: &str, values: Vec<String>) {
    if values.is_empty() {
        field(out, label, "");
        return;
    }
    for (i, v) in values.iter().enumerate() {
        field(out, if i == 0 { label } else { "" }, v);
        if i == 0 {
            continue;
        }
    }
}

fn section(out: &mut String, title: &str, v: &Value) {
    if v.is_null() || v.as_object().is_some_and(|m| m.is_empty()) {
        return;
    }
    out.push_str(&format!("{title}:\n"));
    for line in printers::yaml(v).lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
}

/// Render an object and its events.
pub fn render(obj: &Value, events: &[Value]) -> String {
    let mut out = String::new();
    let m = &obj["metadata"];
    field(&mut out, "Name", m["name"].as_str().unwrap_or_default());
    if let Some(ns) = m["namespace"].as_str() {
        field(&mut out, "Namespace", ns);
    }
    field(&mut out, "Kind", obj["kind"].as_str().unwrap_or_default());
    multi(&mut out, "Labels", kv_map(m.get("labels")));
    let annotations: Vec<String> = kv_map(m.get("annotations"))
        .into_iter()
        .filter(|a| !a.starts_with(super::apply::LAST_APPLIED))
        .collect();
    multi(&mut out, "Annotations", annotations);
    field(
        &mut out,
        "Created",
        m["creationTimestamp"].as_str().unwrap_or_default(),
    );
    if let Some(d) = m["deletionTimestamp"].as_str() {
        field(&mut out, "Deleting", d);
    }
    if let Some(f) = m["finalizers"].as_array() {
        multi(
            &mut out,
            "Finalizers",
            f.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
        );
    }
    if let Some(owners) = m["ownerReferences"].as_array() {
        multi(
            &mut out,
            "Controlled By",
            owners
                .iter()
                .map(|o| {
                    format!(
                        "{}/{}",
                        o["kind"].as_str().unwrap_or_default(),
                        o["name"].as_str().unwrap_or_default()
                    )
                })
                .collect(),
        );
    }
    for (key, title) in [("spec", "Spec"), ("data", "Data"), ("status", "Status")] {
        let mut v = obj.get(key).cloned().unwrap_or(Value::Null);
        if key == "data" && obj["kind"] == "Secret" {
            if let Some(map) = v.as_object_mut() {
                for (_, val) in map.iter_mut() {
                    *val = Value::String(format!(
                        "{} bytes",
                        val.as_str().map_or(0, |s| s.len() * 3 / 4)
                    ));
                }
            }
        }
        section(&mut out, title, &v);
    }
    if events.is_empty() {
        out.push_str("Events:       <none>\n");
    } else {
        out.push_str("Events:\n");
        let headers: Vec<String> = ["Type", "Reason", "Age", "From", "Message"]
            .into_iter()
            .map(String::from)
            .collect();
        let mut rows = vec![["----", "------", "----", "----", "-------"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()];
        for e in events {
            let count = e["count"].as_i64().unwrap_or(1);
            let last = age(e["lastTimestamp"].as_str());
            let age_col = if count > 1 {
                format!(
                    "{last} (x{count} over {})",
                    age(e["firstTimestamp"].as_str())
                )
            } else {
                last
            };
            rows.push(vec![
                e["type"].as_str().unwrap_or_default().into(),
                e["reason"].as_str().unwrap_or_default().into(),
                age_col,
                e.pointer("/source/component")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .into(),
                e["message"].as_str().unwrap_or_default().into(),
            ]);
        }
        for line in printers::table(&headers, &rows).lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

impl Describe {
    pub async fn execute(&self, ctx: &Context) -> Result<(), CliError> {
        let res = resource(&self.kind)?;
        let ns = ctx.ns_for(res);
        let objects: Vec<Value> = if self.names.is_empty() {
            ctx.client.list(res, ns, "").await?["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        } else {
            let mut v = Vec::new();
            for n in &self.names {
                v.push(ctx.client.get(res, ns, n).await?);
            }
            v
        };
        let events_res = resources::lookup("events").expect("events are served");
        let mut first = true;
        for obj in objects {
            let uid = obj
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let q = format!(
                "fieldSelector={}",
                urlencode(&format!(
                    "involvedObject.name={},involvedObject.kind={},involvedObject.uid={uid}",
                    super::name_of(&obj),
                    res.kind
                ))
            );
            let ev_ns = crate::api::meta::namespace(&obj);
            let ev_ns = if ev_ns.is_empty() { "default" } else { ev_ns };
            let mut events = ctx.client.list(events_res, Some(ev_ns), &q).await?["items"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            events.sort_by(|a, b| {
                a["lastTimestamp"]
                    .as_str()
                    .cmp(&b["lastTimestamp"].as_str())
            });
            if !first {
                println!("\n");
            }
            first = false;
            let mut o = obj.clone();
            o["kind"] = Value::String(res.kind.into());
            print!("{}", render(&o, &events));
        }
        Ok(())
    }
}
