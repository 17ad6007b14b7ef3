//! Field management: who owns which field of an object
//! (`metadata.managedFields`, in the `FieldsV1` format), and server-side
//! apply, as `k8s.io/apimachinery/pkg/util/managedfields` does them.
//!
//! A field set holds paths to leaves (scalars, atomic lists, empty maps)
//! and to the elements of merged lists: `k:{"name":"main"}` for a list of
//! objects merged by key, `v:"x"` for a set of primitives. Which lists are
//! which comes from the types' patch strategies ([`super::schema`]).
//!
//! - [`track`]: an update (create, PUT, patch) by a manager takes the
//!   fields it changed from every other manager; fields it removed are
//!   nobody's any more.
//! - [`apply`]: a server-side apply merges the applied configuration into
//!   the live object, refuses to change a field another manager owns
//!   unless forced ([`Conflict`]), removes the fields the manager applied
//!   last time but no longer does (when nobody else owns them), and makes
//!   the manager own exactly what it applied.
//!
//! No I/O.

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use super::schema::{schemas, strategies, strategy, FieldType, Strategy};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// `f:NAME`: a field of an object or a key of a map.
    Field(String),
    /// `k:{...}`: the element of a keyed list with these key fields (JSON).
    Key(String),
    /// `v:...`: the element of a set of primitives with this value (JSON).
    Value(String),
    /// `i:N`: an element of a list by position.
    Index(usize),
}

/// A path from the object's root.
pub type Path = Vec<Step>;
/// A set of paths.
pub type Set = BTreeSet<Path>;

/// Which part of an object a write manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything but `status` (writes to the object itself).
    Main,
    /// Only `status` (writes to the status subresource).
    Status,
}

/// Metadata fields the server owns: never part of a field set.
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "generateName",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// The type of a node while walking an object: an index into [`types`].
#[derive(Debug, Clone, Copy)]
enum Ty {
    /// An object of a named definition.
    Struct(u32),
    /// A map whose values are objects of this definition (or unknown).
    Map(Option<u32>),
    Unknown,
}

/// Each definition's fields as the walk needs them: the field's type and
/// patch strategy, worked out once per process rather than looked up in
/// the schemas (and the strategy table) for every field of every write.
struct Types {
    by_name: HashMap<String, u32>,
    fields: Vec<HashMap<String, (Ty, Option<Strategy>)>>,
}

impl Types {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        let i = self.fields.len() as u32;
        self.by_name.insert(name.to_string(), i);
        self.fields.push(HashMap::new());
        i
    }

    fn build() -> Types {
        let s = schemas();
        let mut t = Types {
            by_name: HashMap::new(),
            fields: Vec::new(),
        };
        let field_ty = |t: &mut Types, ty: &str, field: &str| match s.field(ty, field) {
            FieldType::Object(n) | FieldType::List(Some(n)) => Ty::Struct(t.intern(&n)),
            FieldType::Map(v) => Ty::Map(v.map(|n| t.intern(&n))),
            FieldType::List(None) | FieldType::Other => Ty::Unknown,
        };
        for (name, def) in &s.definitions {
            let i = t.intern(name);
            let props = def["properties"].as_object().into_iter().flatten();
            for field in props.map(|(f, _)| f) {
                let entry = (field_ty(&mut t, name, field), strategy(name, field));
                t.fields[i as usize].insert(field.clone(), entry);
            }
        }
        // a strategy for a field the schemas do not describe still counts
        for (name, field, strat) in strategies() {
            let i = t.intern(name);
            if !t.fields[i as usize].contains_key(field) {
                let ty = field_ty(&mut t, name, field);
                t.fields[i as usize].insert(field.to_string(), (ty, Some(strat)));
            }
        }
        t
    }
}

fn types() -> &'static Types {
    static TYPES: OnceLock<Types> = OnceLock::new();
    TYPES.get_or_init(Types::build)
}

impl Ty {
    fn child(self, key: &str) -> (Ty, Option<Strategy>) {
        match self {
            Ty::Struct(i) => types().fields[i as usize]
                .get(key)
                .copied()
                .unwrap_or((Ty::Unknown, None)),
            Ty::Map(values) => (values.map_or(Ty::Unknown, Ty::Struct), None),
            Ty::Unknown => (Ty::Unknown, None),
        }
    }
}

fn root_ty(ty: Option<&str>) -> Ty {
    ty.and_then(|t| types().by_name.get(t))
        .map_or(Ty::Unknown, |&i| Ty::Struct(i))
}

/// The key step of element `e` of a list merged by `key`.
fn key_step(key: &str, e: &Value) -> Option<Step> {
    let v = e.get(key)?;
    let mut m = Map::new();
    m.insert(key.to_string(), v.clone());
    Some(Step::Key(Value::Object(m).to_string()))
}

/// Whether a top-level field of an object is within `scope`.
fn in_scope(scope: Scope, field: &str) -> bool {
    match (scope, field) {
        (_, "apiVersion" | "kind") => false,
        (Scope::Main, "status") => false,
        (Scope::Main, _) => true,
        (Scope::Status, "status") => true,
        (Scope::Status, _) => false,
    }
}

/// The keys of `a`, then those of `b` that `a` lacks.
fn union_keys<'a>(a: &'a Map<String, Value>, b: &'a Map<String, Value>) -> Vec<&'a str> {
    let mut keys: Vec<&str> = a.keys().map(String::as_str).collect();
    keys.extend(b.keys().map(String::as_str).filter(|k| !a.contains_key(*k)));
    keys
}

/// What an update from `old` to `new` changed and removed within `scope`,
/// as the two field sets say: the paths of `new`'s set whose value is not
/// `old`'s (an element of a merged list only by appearing), and the paths
/// of `old`'s set that `new`'s lacks. A subtree equal on both sides holds
/// neither, so only the parts that differ are walked.
fn changes(old: &Value, new: &Value, ty: Option<&str>, scope: Scope) -> (Set, Set) {
    let mut d = Diff::default();
    let root = root_ty(ty);
    let empty = Map::new();
    let (o, n) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    for k in union_keys(n, o) {
        if !in_scope(scope, k) {
            continue;
        }
        let (cty, strat) = root.child(k);
        d.path.push(Step::Field(k.to_string()));
        if k == "metadata" {
            let om = o.get(k).and_then(Value::as_object).unwrap_or(&empty);
            let nm = n.get(k).and_then(Value::as_object).unwrap_or(&empty);
            for mk in union_keys(nm, om) {
                if SERVER_METADATA.contains(&mk) {
                    continue;
                }
                let (mty, mstrat) = cty.child(mk);
                d.path.push(Step::Field(mk.to_string()));
                d.node(om.get(mk), nm.get(mk), mty, mstrat);
                d.path.pop();
            }
        } else {
            d.node(o.get(k), n.get(k), cty, strat);
        }
        d.path.pop();
    }
    (d.changed, d.removed)
}

/// The walk of [`changes`].
#[derive(Default)]
struct Diff {
    path: Path,
    changed: Set,
    removed: Set,
}

impl Diff {
    fn node(&mut self, old: Option<&Value>, new: Option<&Value>, ty: Ty, strat: Option<Strategy>) {
        match (old, new) {
            (None, None) => {}
            (Some(o), Some(n)) if o == n => {}
            (None, Some(n)) => walk(n, ty, strat, &mut self.path, &mut self.changed),
            (Some(o), None) => walk(o, ty, strat, &mut self.path, &mut self.removed),
            (Some(Value::Object(om)), Some(Value::Object(nm)))
                if !om.is_empty() && !nm.is_empty() =>
            {
                for k in union_keys(nm, om) {
                    let (cty, cstrat) = ty.child(k);
                    self.path.push(Step::Field(k.to_string()));
                    self.node(om.get(k), nm.get(k), cty, cstrat);
                    self.path.pop();
                }
            }
            (Some(o), Some(n)) => {
                // lists, scalars, a change of shape: compare the two sets here
                let depth = self.path.len();
                let (mut os, mut ns) = (Set::new(), Set::new());
                walk(o, ty, strat, &mut self.path, &mut os);
                walk(n, ty, strat, &mut self.path, &mut ns);
                for p in &ns {
                    let rel = &p[depth..];
                    let changed = match p.last() {
                        // an element is changed only by appearing; its
                        // fields speak for themselves
                        Some(Step::Key(_) | Step::Value(_)) => value_at(o, rel).is_none(),
                        _ => value_at(o, rel) != value_at(n, rel),
                    };
                    if changed {
                        self.changed.insert(p.clone());
                    }
                }
                self.removed
                    .extend(os.into_iter().filter(|p| !ns.contains(p)));
            }
        }
    }
}

/// The fields `obj` sets, within `scope`.
pub fn fields_of(obj: &Value, ty: Option<&str>, scope: Scope) -> Set {
    let mut out = Set::new();
    let Some(m) = obj.as_object() else {
        return out;
    };
    let root = root_ty(ty);
    for (k, v) in m {
        if !in_scope(scope, k) {
            continue;
        }
        let (ty, strat) = root.child(k);
        let mut path = vec![Step::Field(k.clone())];
        if k == "metadata" {
            if let Some(meta) = v.as_object() {
                for (mk, mv) in meta {
                    if SERVER_METADATA.contains(&mk.as_str()) {
                        continue;
                    }
                    let (mty, mstrat) = ty.child(mk);
                    path.push(Step::Field(mk.clone()));
                    walk(mv, mty, mstrat, &mut path, &mut out);
                    path.pop();
                }
            }
            continue;
        }
        walk(v, ty, strat, &mut path, &mut out);
    }
    out
}

fn walk(v: &Value, ty: Ty, strat: Option<Strategy>, path: &mut Path, out: &mut Set) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let (cty, cstrat) = ty.child(k);
                path.push(Step::Field(k.clone()));
                walk(child, cty, cstrat, path, out);
                path.pop();
            }
        }
        Value::Array(items) if strat.is_some_and(|s| s.merge) => {
            let key = strat.and_then(|s| s.key);
            for e in items {
                let step = match key {
                    Some(k) => match key_step(k, e) {
                        Some(s) => s,
                        None => continue,
                    },
                    None => Step::Value(e.to_string()),
                };
                path.push(step);
                out.insert(path.clone());
                if key.is_some() {
                    if let Some(m) = e.as_object() {
                        for (k, child) in m {
                            let (cty, cstrat) = ty.child(k);
                            path.push(Step::Field(k.clone()));
                            walk(child, cty, cstrat, path, out);
                            path.pop();
                        }
                    }
                }
                path.pop();
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The value at `path` in `obj`.
pub fn value_at<'a>(obj: &'a Value, path: &[Step]) -> Option<&'a Value> {
    let mut cur = obj;
    for step in path {
        cur = match step {
            Step::Field(k) => cur.get(k)?,
            Step::Index(i) => cur.get(*i)?,
            Step::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).ok()?;
                cur.as_array()?
                    .iter()
                    .find(|e| key.iter().all(|(f, v)| e.get(f) == Some(v)))?
            }
            Step::Value(v) => {
                let want: Value = serde_json::from_str(v).ok()?;
                cur.as_array()?.iter().find(|e| **e == want)?
            }
        };
    }
    Some(cur)
}

/// Remove what `path` names from `obj` (nothing if it is not there).
fn remove(obj: &mut Value, path: &[Step]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for step in parent {
        let next = match step {
            Step::Field(k) => cur.get_mut(k),
            Step::Index(i) => cur.get_mut(*i),
            Step::Key(k) => {
                let Ok(key) = serde_json::from_str::<Map<String, Value>>(k) else {
                    return;
                };
                cur.as_array_mut().and_then(|a| {
                    a.iter_mut()
                        .find(|e| key.iter().all(|(f, v)| e.get(f) == Some(v)))
                })
            }
            Step::Value(_) => None,
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Step::Field(k) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(k);
            }
        }
        Step::Index(i) => {
            if let Some(a) = cur.as_array_mut() {
                if *i < a.len() {
                    a.remove(*i);
                }
            }
        }
        Step::Key(k) => {
            if let (Some(a), Ok(key)) = (
                cur.as_array_mut(),
                serde_json::from_str::<Map<String, Value>>(k),
            ) {
                a.retain(|e| !key.iter().all(|(f, v)| e.get(f) == Some(v)));
            }
        }
        Step::Value(v) => {
            if let (Some(a), Ok(want)) = (cur.as_array_mut(), serde_json::from_str::<Value>(v)) {
                a.retain(|e| *e != want);
            }
        }
    }
}

/// A set in the `FieldsV1` form: nested objects keyed `f:`, `k:`, `v:`,
/// `i:`, with `.` marking a member that also has members below it.
pub fn to_fields_v1(set: &Set) -> Value {
    // sorted: a path comes just before the paths below it
    fn build(paths: &[&[Step]], depth: usize) -> Map<String, Value> {
        let mut node = Map::new();
        let mut i = 0;
        while i < paths.len() {
            let step = &paths[i][depth];
            let end = i + paths[i..].iter().take_while(|p| &p[depth] == step).count();
            let member = paths[i].len() == depth + 1;
            let below = &paths[if member { i + 1 } else { i }..end];
            let mut child = Map::new();
            if member && !below.is_empty() {
                child.insert(".".into(), Value::Object(Map::new()));
            }
            child.extend(build(below, depth + 1));
            node.insert(step_key(step), Value::Object(child));
            i = end;
        }
        node
    }
    let paths: Vec<&[Step]> = set
        .iter()
        .map(Vec::as_slice)
        .filter(|p| !p.is_empty())
        .collect();
    Value::Object(build(&paths, 0))
}

/// A step as a `FieldsV1` key.
fn step_key(step: &Step) -> String {
    match step {
        Step::Field(k) => format!("f:{k}"),
        Step::Key(k) => format!("k:{k}"),
        Step::Value(v) => format!("v:{v}"),
        Step::Index(i) => format!("i:{i}"),
    }
}

/// Whether the `FieldsV1` form `fields` holds `path` itself (not only
/// paths below it).
fn holds(fields: &Value, path: &[Step]) -> bool {
    let mut cur = fields;
    for step in path {
        match cur.get(step_key(step)) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    cur.as_object()
        .is_some_and(|m| m.is_empty() || m.contains_key("."))
}

fn parse_step(k: &str) -> Option<Step> {
    let (kind, rest) = k.split_at_checked(2)?;
    Some(match kind {
        "f:" => Step::Field(rest.into()),
        "k:" => Step::Key(rest.into()),
        "v:" => Step::Value(rest.into()),
        "i:" => Step::Index(rest.parse().ok()?),
        _ => return None,
    })
}

/// A set from its `FieldsV1` form.
pub fn from_fields_v1(v: &Value) -> Set {
    fn walk(node: &Map<String, Value>, path: &mut Path, out: &mut Set) {
        for (k, child) in node {
            if k == "." {
                continue;
            }
            let Some(step) = parse_step(k) else { continue };
            path.push(step);
            match child.as_object() {
                Some(c) if !c.is_empty() => {
                    if c.contains_key(".") {
                        out.insert(path.clone());
                    }
                    walk(c, path, out);
                }
                _ => {
                    out.insert(path.clone());
                }
            }
            path.pop();
        }
    }
    let mut out = Set::new();
    if let Some(m) = v.as_object() {
        walk(m, &mut Vec::new(), &mut out);
    }
    out
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: String,
    pub set: Set,
}

impl Entry {
    fn same_slot(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }

    /// An entry of `managedFields`; `None` when it names no manager.
    fn parse(e: &Value) -> Option<Entry> {
        Some(Entry {
            manager: e.get("manager")?.as_str()?.to_string(),
            operation: e["operation"].as_str().unwrap_or("Update").to_string(),
            api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
            time: e["time"].as_str().unwrap_or_default().to_string(),
            subresource: e["subresource"].as_str().unwrap_or_default().to_string(),
            set: from_fields_v1(&e["fieldsV1"]),
        })
    }

    fn to_json(&self) -> Value {
        let mut e = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(&self.set),
        });
        if !self.subresource.is_empty() {
            e["subresource"] = json!(self.subresource);
        }
        e
    }
}

/// The entries of `obj`'s `metadata.managedFields`.
pub fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Entry::parse)
        .collect()
}

fn set_entries(obj: &mut Value, entries: &[Entry]) {
    let list = entries
        .iter()
        .filter(|e| !e.set.is_empty())
        .map(Entry::to_json)
        .collect();
    put_entries(obj, list);
}

fn put_entries(obj: &mut Value, list: Vec<Value>) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

/// Who writes, and how.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    pub manager: &'a str,
    /// `apiVersion` of the entry (the resource's group/version).
    pub api_version: &'a str,
    /// The subresource written (`status`, `scale`), or empty.
    pub subresource: &'a str,
    pub now: &'a str,
}

impl Writer<'_> {
    /// A new entry of this writer's, `operation` (`Update`, `Apply`), now.
    fn entry(&self, operation: &str, set: Set) -> Entry {
        Entry {
            manager: self.manager.to_string(),
            operation: operation.into(),
            api_version: self.api_version.to_string(),
            time: self.now.to_string(),
            subresource: self.subresource.to_string(),
            set,
        }
    }

    fn scope(&self) -> Scope {
        if self.subresource == "status" {
            Scope::Status
        } else {
            Scope::Main
        }
    }
}

/// Record an update by `w` that turned `old` (none for a create) into
/// `new`, in `new`'s `managedFields`. Entries `new` brings along replace
/// the stored ones (a client may reset them, as in Kubernetes); without
/// any, `old`'s are kept. A write that changes no field changes nothing.
///
/// An entry as stored that the write does not touch is kept as it is, not
/// parsed and written again.
pub fn track(old: Option<&Value>, new: &mut Value, ty: Option<&str>, w: &Writer) {
    let scope = w.scope();
    let (changed, removed) = match old {
        Some(o) => changes(o, new, ty, scope),
        None => (fields_of(new, ty, scope), Set::new()),
    };
    let stored = old
        .and_then(|o| o.pointer("/metadata/managedFields"))
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let given = new.pointer_mut("/metadata/managedFields").map(Value::take);
    let from_old = given.is_none();
    let raw = match given {
        Some(Value::Array(list)) => list,
        Some(_) => Vec::new(),
        None => stored.to_vec(),
    };
    let touched = |fields: &Value| changed.iter().chain(&removed).any(|p| holds(fields, p));
    let changes = !changed.is_empty() || !removed.is_empty();
    let mine = |e: &Value| {
        e["manager"] == w.manager
            && e["operation"].as_str().unwrap_or("Update") == "Update"
            && e["subresource"].as_str().unwrap_or_default() == w.subresource
    };
    let mut list: Vec<Result<Value, Entry>> = Vec::with_capacity(raw.len() + 1);
    for (i, e) in raw.into_iter().enumerate() {
        let as_stored = from_old || stored.get(i) == Some(&e);
        if as_stored
            && e["manager"].is_string()
            && !(changes && (mine(&e) || touched(&e["fieldsV1"])))
        {
            list.push(Ok(e));
        } else if let Some(entry) = Entry::parse(&e) {
            list.push(Err(entry));
        }
    }
    if changes {
        for e in list.iter_mut().filter_map(|e| e.as_mut().err()) {
            e.set
                .retain(|p| !changed.contains(p) && !removed.contains(p));
        }
        let slot = list
            .iter_mut()
            .filter_map(|e| e.as_mut().err())
            .find(|e| e.same_slot(w.manager, "Update", w.subresource));
        match slot {
            Some(e) => {
                e.set.extend(changed);
                e.time = w.now.to_string();
                e.api_version = w.api_version.to_string();
            }
            None => list.push(Err(w.entry("Update", changed))),
        }
    }
    let list = list
        .into_iter()
        .filter_map(|e| match e {
            Ok(raw) => Some(raw),
            Err(e) => (!e.set.is_empty()).then(|| e.to_json()),
        })
        .collect();
    put_entries(new, list);
}

/// Fields another manager owns that an apply would change.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// (manager, its subresource, apiVersion, the field as `.a.b[k="v"]`)
    pub fields: Vec<(String, String, String, String)>,
}

impl Conflict {
    /// kube-apiserver's message.
    pub fn message(&self) -> String {
        let n = self.fields.len();
        let mut msg = format!(
            "Apply failed with {n} conflict{}: ",
            if n == 1 { "" } else { "s" }
        );
        let parts: Vec<String> = self
            .fields
            .iter()
            .map(|(m, sub, v, f)| format!("{}: {f}", Self::with(m, sub, v)))
            .collect();
        msg.push_str(&parts.join("\n"));
        msg
    }

    fn with(manager: &str, sub: &str, version: &str) -> String {
        if sub.is_empty() {
            format!("conflict with {manager:?} using {version}")
        } else {
            format!("conflict with {manager:?} with subresource {sub:?} using {version}")
        }
    }

    /// `(message, field)` of each conflicting field, for `details.causes`.
    pub fn causes(&self) -> Vec<(String, String)> {
        self.fields
            .iter()
            .map(|(m, sub, v, f)| (Self::with(m, sub, v), f.clone()))
            .collect()
    }
}

/// A path as kube-apiserver prints it: `.spec.containers[name="main"].image`.
pub fn display(path: &[Step]) -> String {
    let mut s = String::new();
    for step in path {
        match step {
            Step::Field(k) => {
                s.push('.');
                s.push_str(k);
            }
            Step::Index(i) => s.push_str(&format!("[{i}]")),
            Step::Value(v) => s.push_str(&format!("[={v}]")),
            Step::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = key.iter().map(|(f, v)| format!("{f}={v}")).collect();
                s.push_str(&format!("[{}]", parts.join(",")));
            }
        }
    }
    s
}

/// Server-side apply of `config` by `w` to `live` (`None` when the object
/// does not exist yet). Returns the object to store, its `managedFields`
/// updated, or the conflicts when `force` is not set.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    ty: Option<&str>,
    w: &Writer,
    force: bool,
) -> Result<Value, Conflict> {
    let mut config = config.clone();
    if let Some(m) = config.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    let scope = w.scope();
    let applied = fields_of(&config, ty, scope);
    let base = live.cloned().unwrap_or_else(|| json!({}));
    // the configuration merges as a strategic merge patch without directives
    let mut merged = super::smp::apply(&base, &config, ty).unwrap_or_else(|_| config.clone());
    let mut list = live.map(entries).unwrap_or_default();
    let me = |e: &Entry| e.same_slot(w.manager, "Apply", w.subresource);
    let mut conflicts = Vec::new();
    for e in list.iter().filter(|e| !me(e) && e.manager != w.manager) {
        for p in applied.intersection(&e.set) {
            if matches!(p.last(), Some(Step::Key(_) | Step::Value(_))) {
                continue;
            }
            if value_at(&base, p) != value_at(&merged, p) {
                conflicts.push((e.manager.clone(), e.subresource.clone(), p.clone()));
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            return Err(Conflict {
                fields: conflicts
                    .into_iter()
                    .map(|(m, sub, p)| {
                        let version = list
                            .iter()
                            .find(|e| e.manager == m && e.subresource == sub)
                            .map(|e| e.api_version.clone())
                            .unwrap_or_default();
                        (m, sub, version, display(&p))
                    })
                    .collect(),
            });
        }
        // forced: the others lose what they disagreed on
        for (m, sub, p) in &conflicts {
            for e in list
                .iter_mut()
                .filter(|e| &e.manager == m && &e.subresource == sub)
            {
                e.set.remove(p);
            }
        }
    }
    // what this manager applied before and no longer does goes, unless
    // another manager owns it (or something below it)
    let before: Set = list
        .iter()
        .find(|e| me(e))
        .map(|e| e.set.clone())
        .unwrap_or_default();
    let others: Vec<&Entry> = list.iter().filter(|e| !me(e)).collect();
    let mut dropped: Vec<&Path> = before
        .difference(&applied)
        .filter(|p| {
            !others.iter().any(|e| {
                e.set
                    .range((*p).clone()..)
                    .next()
                    .is_some_and(|q| q.starts_with(p))
            })
        })
        .collect();
    // shallowest first: an element goes whole; the key fields of an
    // element that stays are never removed
    dropped.sort_by_key(|p| p.len());
    for p in dropped {
        if let [.., Step::Key(k), Step::Field(f)] = p.as_slice() {
            if serde_json::from_str::<Map<String, Value>>(k).is_ok_and(|m| m.contains_key(f)) {
                continue;
            }
        }
        remove(&mut merged, p);
    }
    match list.iter_mut().find(|e| me(e)) {
        Some(e) => {
            if e.set != applied {
                e.time = w.now.to_string();
            }
            e.set = applied;
            e.api_version = w.api_version.to_string();
        }
        None => list.push(w.entry("Apply", applied)),
    }
    if let Some(m) = merged.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    } else if merged.is_object() {
        merged["metadata"] = json!({});
    }
    set_entries(&mut merged, &list);
    Ok(merged)
}

/// The manager a request without `fieldManager` gets: its user agent up
/// to the first `/`, as kube-apiserver names it.
pub fn manager_from_user_agent(ua: &str) -> String {
    let m = ua.split('/').next().unwrap_or("").trim();
    if m.is_empty() {
        "unknown".into()
    } else {
        m.chars().take(128).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOY: &str = "io.k8s.api.apps.v1.Deployment";

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "apps/v1",
            subresource: "",
            now: "2026-12-01T00:00:00Z",
        }
    }

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "main", "image": image}]}}}})
    }

    #[test]
    fn field_sets_use_keys_for_merged_lists_and_round_trip_fields_v1() {
        let d = deploy(2, "a");
        let set = fields_of(&d, Some(DEPLOY), Scope::Main);
        let c = vec![
            Step::Field("spec".into()),
            Step::Field("template".into()),
            Step::Field("spec".into()),
            Step::Field("containers".into()),
            Step::Key(r#"{"name":"main"}"#.into()),
        ];
        assert!(set.contains(&c), "{set:?}");
        let mut image = c.clone();
        image.push(Step::Field("image".into()));
        assert!(set.contains(&image));
        assert!(!set.iter().any(|p| p[0] == Step::Field("apiVersion".into())));
        assert!(!set
            .iter()
            .any(|p| p.get(1) == Some(&Step::Field("name".into()))));
        let v1 = to_fields_v1(&set);
        assert_eq!(
            v1["f:spec"]["f:template"]["f:spec"]["f:containers"][r#"k:{"name":"main"}"#],
            json!({".": {}, "f:image": {}, "f:name": {}})
        );
        assert_eq!(v1["f:metadata"]["f:labels"]["f:app"], json!({}));
        assert_eq!(from_fields_v1(&v1), set);
    }

    #[test]
    fn an_update_takes_the_fields_it_changes_from_other_managers() {
        let mut created = deploy(2, "a");
        track(None, &mut created, Some(DEPLOY), &writer("kubectl-create"));
        let mut scaled = created.clone();
        scaled["spec"]["replicas"] = json!(5);
        track(
            Some(&created),
            &mut scaled,
            Some(DEPLOY),
            &writer("kubectl-scale"),
        );
        let e = entries(&scaled);
        assert_eq!(e.len(), 2);
        let replicas = vec![Step::Field("spec".into()), Step::Field("replicas".into())];
        assert!(!e[0].set.contains(&replicas));
        assert_eq!(e[1].manager, "kubectl-scale");
        assert_eq!(e[1].set, Set::from([replicas]));
        // a write that changes nothing leaves the entries alone
        let mut same = scaled.clone();
        let mut w = writer("other");
        w.now = "2030-01-01T00:00:00Z";
        track(Some(&scaled), &mut same, Some(DEPLOY), &w);
        assert_eq!(same, scaled);
    }

    #[test]
    fn apply_conflicts_with_a_field_another_manager_changed_unless_forced() {
        let w = writer("alice");
        let applied = apply(None, &deploy(2, "a"), Some(DEPLOY), &w, false).unwrap();
        assert_eq!(entries(&applied)[0].operation, "Apply");
        let mut set_image = applied.clone();
        set_image["spec"]["template"]["spec"]["containers"][0]["image"] = json!("b");
        track(
            Some(&applied),
            &mut set_image,
            Some(DEPLOY),
            &writer("kubectl-set"),
        );
        // re-applying the same config would change the image back
        let c = apply(Some(&set_image), &deploy(2, "a"), Some(DEPLOY), &w, false).unwrap_err();
        assert_eq!(
            c.message(),
            r#"Apply failed with 1 conflict: conflict with "kubectl-set" using apps/v1: .spec.template.spec.containers[name="main"].image"#
        );
        // agreeing with the other manager is no conflict: shared ownership
        let shared = apply(Some(&set_image), &deploy(2, "b"), Some(DEPLOY), &w, false).unwrap();
        assert_eq!(
            shared["spec"]["template"]["spec"]["containers"][0]["image"],
            "b"
        );
        // forced: alice takes the field
        let forced = apply(Some(&set_image), &deploy(2, "a"), Some(DEPLOY), &w, true).unwrap();
        assert_eq!(
            forced["spec"]["template"]["spec"]["containers"][0]["image"],
            "a"
        );
        assert!(
            entries(&forced).iter().all(|e| e.manager != "kubectl-set"),
            "{:#}",
            forced["metadata"]["managedFields"]
        );
    }

    #[test]
    fn fields_dropped_from_the_config_are_removed_unless_someone_else_owns_them() {
        let w = writer("alice");
        let mut cfg = deploy(2, "a");
        cfg["metadata"]["labels"]["tier"] = json!("web");
        cfg["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "side", "image": "s"}));
        let v1 = apply(None, &cfg, Some(DEPLOY), &w, false).unwrap();
        // bob adds an annotation of his own
        let mut v2 = v1.clone();
        v2["metadata"]["annotations"] = json!({"bob": "yes"});
        track(Some(&v1), &mut v2, Some(DEPLOY), &writer("bob"));
        // alice applies without tier and without the side container
        let v3 = apply(Some(&v2), &deploy(2, "a"), Some(DEPLOY), &w, false).unwrap();
        assert_eq!(v3["metadata"]["labels"], json!({"app": "web"}));
        let cs = v3["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(cs.len(), 1, "{cs:?}");
        assert_eq!(v3["metadata"]["annotations"]["bob"], "yes");
        // and applying the same again changes nothing
        let v4 = apply(Some(&v3), &deploy(2, "a"), Some(DEPLOY), &w, false).unwrap();
        assert_eq!(v4, v3);
    }

    #[test]
    fn status_writes_manage_only_status() {
        let mut old = deploy(1, "a");
        old["status"] = json!({"replicas": 0});
        let mut new = old.clone();
        new["status"]["replicas"] = json!(1);
        let mut w = writer("deployment-controller");
        w.subresource = "status";
        track(Some(&old), &mut new, Some(DEPLOY), &w);
        let e = entries(&new);
        assert_eq!(e[0].subresource, "status");
        assert_eq!(
            e[0].set,
            Set::from([vec![
                Step::Field("status".into()),
                Step::Field("replicas".into())
            ]])
        );
    }

    /// The definition of [`changes`]: both whole field sets, compared.
    fn changes_by_sets(old: &Value, new: &Value, ty: Option<&str>, scope: Scope) -> (Set, Set) {
        let old_set = fields_of(old, ty, scope);
        let new_set = fields_of(new, ty, scope);
        let changed = new_set
            .iter()
            .filter(|p| match p.last() {
                Some(Step::Key(_) | Step::Value(_)) => value_at(old, p).is_none(),
                _ => value_at(old, p) != value_at(new, p),
            })
            .cloned()
            .collect();
        (changed, old_set.difference(&new_set).cloned().collect())
    }

    /// [`track`] as it was before entries were kept as stored: every entry
    /// parsed and written again.
    fn track_by_sets(old: Option<&Value>, new: &mut Value, ty: Option<&str>, w: &Writer) {
        let (changed, removed) = match old {
            Some(o) => changes_by_sets(o, new, ty, w.scope()),
            None => (fields_of(new, ty, w.scope()), Set::new()),
        };
        let given = new.pointer("/metadata/managedFields").is_some();
        let mut list = if given {
            entries(new)
        } else {
            old.map(entries).unwrap_or_default()
        };
        if changed.is_empty() && removed.is_empty() {
            set_entries(new, &list);
            return;
        }
        for e in &mut list {
            e.set
                .retain(|p| !changed.contains(p) && !removed.contains(p));
        }
        match list
            .iter_mut()
            .find(|e| e.same_slot(w.manager, "Update", w.subresource))
        {
            Some(e) => {
                e.set.extend(changed);
                e.time = w.now.to_string();
                e.api_version = w.api_version.to_string();
            }
            None => list.push(w.entry("Update", changed)),
        }
        set_entries(new, &list);
    }

    const POD: &str = "io.k8s.api.core.v1.Pod";

    fn pod() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default", "uid": "u1",
                "labels": {"app": "web", "tier": "front"},
                "annotations": {"a": "1"}, "finalizers": ["x", "y"]},
            "spec": {
                "containers": [
                    {"name": "main", "image": "a", "args": ["-v"],
                     "ports": [{"containerPort": 80, "protocol": "TCP"}],
                     "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                     "resources": {"limits": {"cpu": "1"}}},
                    {"name": "side", "image": "s", "volumeMounts": [{"mountPath": "/d", "name": "data"}]}],
                "volumes": [{"name": "data", "emptyDir": {}}],
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "nodeSelector": {"zone": "a"}},
            "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]}})
    }

    /// A small deterministic generator (xorshift), so a failure repeats.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// Change one randomly chosen place of `v`: replace, remove, add, empty,
    /// duplicate or copy an element of a list, or change a scalar's shape.
    fn mutate(v: &mut Value, rng: &mut Rng, depth: usize) {
        let descend = depth == 0 || (depth < 6 && rng.below(3) > 0);
        match v {
            Value::Object(m) if !m.is_empty() && descend => {
                let k = m.keys().nth(rng.below(m.len())).unwrap().clone();
                mutate(m.get_mut(&k).unwrap(), rng, depth + 1);
            }
            Value::Array(a) if !a.is_empty() && descend => {
                let i = rng.below(a.len());
                mutate(&mut a[i], rng, depth + 1);
            }
            Value::Object(m) => match rng.below(5) {
                0 if !m.is_empty() => {
                    let k = m.keys().nth(rng.below(m.len())).unwrap().clone();
                    m.remove(&k);
                }
                1 => {
                    m.insert(format!("new{}", rng.below(3)), json!("n"));
                }
                2 => *v = json!({}),
                3 => *v = json!("scalar"),
                _ => {
                    m.insert("name".into(), json!(format!("n{}", rng.below(3))));
                }
            },
            Value::Array(a) => match rng.below(5) {
                0 if !a.is_empty() => {
                    a.remove(rng.below(a.len()));
                }
                1 if !a.is_empty() => {
                    // a duplicate key, as a client may send
                    let e = a[rng.below(a.len())].clone();
                    a.push(e);
                }
                2 => a.push(json!({"name": format!("e{}", rng.below(3)), "value": "v"})),
                3 => a.push(json!(format!("s{}", rng.below(3)))),
                _ => *v = json!([]),
            },
            _ => match rng.below(4) {
                0 => *v = json!(rng.below(3)),
                1 => *v = json!({"k": "v"}),
                2 => *v = json!([1, 2]),
                _ => *v = Value::Null,
            },
        }
    }

    #[test]
    fn changes_and_track_agree_with_comparing_whole_field_sets() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut w = writer("kubectl-edit");
        w.api_version = "v1";
        for round in 0..3000 {
            let mut old = pod();
            for _ in 0..rng.below(3) {
                mutate(&mut old, &mut rng, 0);
            }
            track(None, &mut old, Some(POD), &writer("kubectl-create"));
            let mut new = old.clone();
            for _ in 0..1 + rng.below(3) {
                mutate(&mut new, &mut rng, 0);
            }
            if rng.below(2) == 0 {
                // a client that sends no managedFields keeps the stored ones
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove("managedFields");
                }
            }
            for scope in [Scope::Main, Scope::Status] {
                assert_eq!(
                    changes(&old, &new, Some(POD), scope),
                    changes_by_sets(&old, &new, Some(POD), scope),
                    "round {round}, {scope:?}:\nold {old}\nnew {new}"
                );
            }
            w.subresource = ["", "status"][rng.below(2)];
            let (mut a, mut b) = (new.clone(), new.clone());
            track(Some(&old), &mut a, Some(POD), &w);
            track_by_sets(Some(&old), &mut b, Some(POD), &w);
            assert_eq!(a, b, "round {round}:\nold {old}\nnew {new}");
        }
    }

    /// [`to_fields_v1`] as first written: one path at a time, then "."
    /// marked by looking each member up.
    fn to_fields_v1_by_paths(set: &Set) -> Value {
        let mut root = Map::new();
        for path in set {
            let mut cur = &mut root;
            for step in path {
                cur = cur
                    .entry(step_key(step))
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .unwrap();
            }
        }
        fn mark(node: &mut Map<String, Value>, set: &Set, path: &mut Path) {
            let keys: Vec<String> = node.keys().filter(|k| *k != ".").cloned().collect();
            for k in keys {
                path.push(parse_step(&k).unwrap());
                let child = node[&k].as_object_mut().unwrap();
                if !child.is_empty() && set.contains(path) {
                    child.insert(".".into(), json!({}));
                }
                mark(child, set, path);
                path.pop();
            }
        }
        mark(&mut root, set, &mut Vec::new());
        Value::Object(root)
    }

    #[test]
    fn fields_v1_is_built_as_path_by_path_and_read_back() {
        let mut rng = Rng(7);
        for _ in 0..500 {
            let mut p = pod();
            for _ in 0..rng.below(4) {
                mutate(&mut p, &mut rng, 0);
            }
            let mut set = fields_of(&p, Some(POD), Scope::Main);
            // members with members below them, as an element of a merged list
            set.extend(
                set.iter()
                    .filter(|p| p.len() > 2)
                    .map(|p| p[..2].to_vec())
                    .collect::<Vec<_>>(),
            );
            let v1 = to_fields_v1(&set);
            assert_eq!(v1, to_fields_v1_by_paths(&set));
            assert_eq!(from_fields_v1(&v1), set);
            for p in &set {
                assert!(holds(&v1, p), "{p:?} in {v1}");
            }
        }
    }

    #[test]
    fn an_entry_the_write_does_not_touch_is_kept_as_stored() {
        let mut created = pod();
        track(None, &mut created, Some(POD), &writer("kubectl-create"));
        // as an older server wrote it: "." after the members
        let stored = created["metadata"]["managedFields"][0].clone();
        let mut bound = created.clone();
        bound["spec"]["nodeName"] = json!("node-1");
        let mut w = writer("default-scheduler");
        w.subresource = "binding";
        track(Some(&created), &mut bound, Some(POD), &w);
        let list = bound["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0], stored);
        assert_eq!(list[1]["manager"], "default-scheduler");
        assert_eq!(list[1]["fieldsV1"], json!({"f:spec": {"f:nodeName": {}}}));
        // a client's own entries are read and written again
        let mut edited = bound.clone();
        edited["metadata"]["managedFields"][0]["fieldsV1"] =
            json!({"f:metadata": {"f:labels": {"f:app": {}}}});
        edited["metadata"]["labels"]["app"] = json!("api");
        track(
            Some(&bound),
            &mut edited,
            Some(POD),
            &writer("kubectl-edit"),
        );
        let list = edited["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(list.len(), 2, "{list:?}");
        assert_eq!(list[0]["manager"], "default-scheduler");
        assert_eq!(list[1]["manager"], "kubectl-edit");
    }

    #[test]
    fn managers_come_from_the_user_agent() {
        assert_eq!(
            manager_from_user_agent("kubectl/v1.32.4 (linux/amd64) kubernetes/59526cd"),
            "kubectl"
        );
        assert_eq!(manager_from_user_agent(""), "unknown");
    }
}
