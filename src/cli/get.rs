//! `wkctl get`: tables, `-o wide|yaml|json|name`, selectors, `-w`, `get all`.

use futures::StreamExt;
use serde_json::{json, Value};

use super::printers::{self, Output};
use super::{ref_name, resource, CliError, Context};
use crate::api::resources::{self, Resource};

#[derive(clap::Args)]
pub struct Get {
    /// Resource type(s) (`pods`, `po,svc`, `all`), optionally followed by names; or TYPE/NAME.
    #[arg(required = true)]
    pub args: Vec<String>,
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<Output>,
    /// Label selector (`app=web,tier!=db`).
    #[arg(short = 'l', long = "selector")]
    pub selector: Option<String>,
    #[arg(long = "field-selector")]
    pub field_selector: Option<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
    /// Watch for changes after listing.
    #[arg(short = 'w', long = "watch")]
    pub watch: bool,
    /// Show labels as the last column.
    #[arg(long = "show-labels")]
    pub show_labels: bool,
    /// Keep `metadata.managedFields` in JSON and YAML output (hidden by
    /// default, as kubectl hides them).
    #[arg(long = "show-managed-fields")]
    pub show_managed_fields: bool,
}

/// What was asked for: each resource type with the names requested (empty: all).
fn targets(args: &[String]) -> Result<Vec<(&'static Resource, Vec<String>)>, CliError> {
    if args.iter().any(|a| a.contains('/')) {
        let mut out: Vec<(&'static Resource, Vec<String>)> = Vec::new();
        for a in args {
            let (t, n) = a.split_once('/').ok_or_else(|| CliError::Usage(format!("there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (e.g. 'wkctl get resource/<resource_name>' instead of 'wkctl get resource resource/<resource_name>': {a}")))?;
            let res = resource(t)?;
            match out.iter_mut().find(|(r, _)| *r == res) {
                Some((_, names)) => names.push(n.into()),
                None => out.push((res, vec![n.into()])),
            }
        }
        return Ok(out);
    }
    let (types, names) = args.split_first().expect("clap requires one argument");
    let mut out = Vec::new();
    for t in types.split(',') {
        if t == "all" {
            out.extend(
                resources::category("all")
                    .into_iter()
                    .map(|r| (r, names.to_vec())),
            );
        } else {
            out.push((resource(t)?, names.to_vec()));
        }
    }
    Ok(out)
}

fn query(sel: &Option<String>, fields: &Option<String>) -> String {
    let mut q = Vec::new();
    if let Some(s) = sel {
        q.push(format!("labelSelector={}", urlencode(s)));
    }
    if let Some(f) = fields {
        q.push(format!("fieldSelector={}", urlencode(f)));
    }
    q.join("&")
}

/// Percent-encode a query value.
pub fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .unwrap_or_default()
        .trim_start_matches('=')
        .to_string()
}

/// The header and rows of server Tables (the columns the API server's
/// printers give; `-o wide` adds the priority-1 ones).
struct Printed {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Get {
    fn wide(&self) -> bool {
        self.output == Some(Output::Wide)
    }

    /// Print rows of `tables` (one Table per request) as kubectl does.
    fn rows(&self, res: &Resource, tables: &[Value], prefix_kind: bool) -> Printed {
        let columns = tables
            .iter()
            .map(|t| &t["columnDefinitions"])
            .find(|c| c.as_array().is_some_and(|a| !a.is_empty()))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let shown: Vec<usize> = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| self.wide() || c["priority"].as_i64().unwrap_or(0) == 0)
            .map(|(i, _)| i)
            .collect();
        let name_col = columns.iter().position(|c| c["format"] == "name");
        let mut headers: Vec<String> = shown
            .iter()
            .map(|i| {
                columns[*i]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_uppercase()
            })
            .collect();
        let namespaced = self.all_namespaces && res.namespaced;
        if namespaced {
            headers.insert(0, "NAMESPACE".into());
        }
        if self.show_labels {
            headers.push("LABELS".into());
        }
        let rows = tables
            .iter()
            .flat_map(|t| t["rows"].as_array().cloned().unwrap_or_default())
            .map(|row| {
                let cells = row["cells"].as_array().cloned().unwrap_or_default();
                let mut r: Vec<String> = shown
                    .iter()
                    .map(|i| {
                        let text = cells.get(*i).map(printers::cell_text).unwrap_or_default();
                        if prefix_kind && Some(*i) == name_col && res.kind != "Event" {
                            ref_name(res, &text)
                        } else {
                            text
                        }
                    })
                    .collect();
                let meta = &row["object"]["metadata"];
                if namespaced {
                    r.insert(
                        0,
                        meta["namespace"].as_str().unwrap_or_default().to_string(),
                    );
                }
                if self.show_labels {
                    let labels = meta["labels"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    r.push(if labels.is_empty() {
                        "<none>".into()
                    } else {
                        labels
                    });
                }
                r
            })
            .collect();
        Printed { headers, rows }
    }

    pub async fn execute(&self, ctx: &Context) -> Result<(), CliError> {
        let targets = targets(&self.args)?;
        let multi = targets.len() > 1;
        let mut all_items: Vec<Value> = Vec::new();
        let mut printed_any = false;
        let mut failed = false;
        let mut watch_from = None;
        for (res, names) in &targets {
            let ns = if self.all_namespaces {
                None
            } else {
                ctx.ns_for(res)
            };
            // tables from the server for the human formats, objects otherwise
            let tables = matches!(self.output, None | Some(Output::Wide));
            let fetch = |path: String| async move {
                if tables {
                    ctx.client.table(&path).await
                } else {
                    ctx.client.request(reqwest::Method::GET, &path, None).await
                }
            };
            let q = query(&self.selector, &self.field_selector);
            let items: Vec<Value> = if names.is_empty() {
                let sep = if q.is_empty() { "" } else { "?" };
                let list = fetch(format!("{}{sep}{q}", res.collection_path(ns))).await?;
                watch_from = list["metadata"]["resourceVersion"]
                    .as_str()
                    .map(String::from);
                if tables {
                    vec![list]
                } else {
                    list["items"].as_array().cloned().unwrap_or_default()
                }
            } else {
                let mut v = Vec::new();
                for n in names {
                    match fetch(res.object_path(ctx.ns_for(res), n)).await {
                        Ok(o) => v.push(o),
                        Err(e) => {
                            eprintln!("{e}");
                            failed = true;
                        }
                    }
                }
                v
            };
            match self.output {
                Some(Output::Json) | Some(Output::Yaml) => {
                    all_items.extend(items.into_iter().map(|mut o| {
                        o["apiVersion"] = json!(res.api_version());
                        o["kind"] = json!(res.kind);
                        if !self.show_managed_fields {
                            if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                                m.remove("managedFields");
                            }
                        }
                        o
                    }))
                }
                Some(Output::Name) => {
                    for o in &items {
                        println!("{}", ref_name(res, super::name_of(o)));
                    }
                    printed_any |= !items.is_empty();
                }
                _ => {
                    let p = self.rows(res, &items, multi);
                    if p.rows.is_empty() {
                        continue;
                    }
                    if printed_any {
                        println!();
                    }
                    print!("{}", printers::table(&p.headers, &p.rows));
                    printed_any = true;
                }
            }
        }
        if matches!(self.output, Some(Output::Json) | Some(Output::Yaml)) {
            let single = targets.len() == 1 && targets[0].1.len() == 1 && all_items.len() == 1;
            let doc = if single {
                all_items.pop().unwrap_or(Value::Null)
            } else {
                json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": all_items})
            };
            if self.output == Some(Output::Json) {
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else {
                print!("{}", printers::yaml(&doc));
            }
            printed_any = true;
        }
        if !printed_any && !failed && targets.iter().all(|(_, n)| n.is_empty()) {
            let res = targets[0].0;
            if self.all_namespaces || !res.namespaced {
                eprintln!("No resources found");
            } else {
                eprintln!("No resources found in {} namespace.", ctx.namespace);
            }
        }
        if self.watch {
            if multi {
                return Err(CliError::Usage(
                    "you may only specify a single resource type with --watch".into(),
                ));
            }
            let (res, names) = &targets[0];
            let mut fields = self.field_selector.clone();
            if let [name] = names.as_slice() {
                fields = Some(format!("metadata.name={name}"));
                if let Ok(o) = ctx.client.get(res, ctx.ns_for(res), name).await {
                    watch_from = o["metadata"]["resourceVersion"].as_str().map(String::from);
                }
            }
            let ns = if self.all_namespaces {
                None
            } else {
                ctx.ns_for(res)
            };
            let mut q = query(&self.selector, &fields);
            if let Some(rv) = watch_from {
                q = format!(
                    "{q}{}resourceVersion={rv}",
                    if q.is_empty() { "" } else { "&" }
                );
            }
            let tables = matches!(self.output, None | Some(Output::Wide));
            let stream = ctx.client.watch_as(res, ns, &q, tables).await?;
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                let ev = ev?;
                if ev.event_type == "ERROR" {
                    return Err(CliError::Usage(
                        ev.object["message"]
                            .as_str()
                            .unwrap_or("watch failed")
                            .into(),
                    ));
                }
                if ev.event_type == "BOOKMARK" {
                    continue;
                }
                match self.output {
                    Some(Output::Json) => println!(
                        "{}",
                        serde_json::to_string_pretty(&ev.object).unwrap_or_default()
                    ),
                    Some(Output::Yaml) => print!("---\n{}", printers::yaml(&ev.object)),
                    Some(Output::Name) => println!("{}", ref_name(res, super::name_of(&ev.object))),
                    _ => {
                        let p = self.rows(res, std::slice::from_ref(&ev.object), false);
                        let t = printers::table(&p.headers, &p.rows);
                        // Rows only: the header was printed with the list.
                        print!(
                            "{}",
                            t.lines()
                                .skip(1)
                                .map(|l| format!("{l}\n"))
                                .collect::<String>()
                        );
                    }
                }
                use std::io::Write;
                let _ = std::io::stdout().flush();
            }
        }
        if failed {
            Err(CliError::Reported)
        } else {
            Ok(())
        }
    }
}
