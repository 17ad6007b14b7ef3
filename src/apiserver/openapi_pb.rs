//! The OpenAPI v2 document in protobuf, as kube-apiserver serves it to
//! clients that ask for `application/com.github.proto-openapi.spec.v2.v1.0+protobuf`
//! (or its older spelling with `@v1.0`):
//! the messages of gnostic's `openapiv2/OpenAPIv2.proto` (package
//! `openapi.v2`). client-go's discovery client asks for nothing else, and
//! kubectl reads it to validate a file on the client when the server cannot
//! (a `kind: List` of objects, `kubectl explain --output plaintext-openapiv2`).
//!
//! Encoded from the JSON document (`openapi::v2_document`) with the field
//! numbers of that file, as kube-openapi does with gnostic's
//! `ParseDocument`. Vendor extensions and `default`/`enum`/
//! `example` values go in `Any.yaml` as JSON text, which is YAML; readers
//! (kube-openapi's `VendorExtensionToMap`) parse them as YAML.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::api::pb::{put_bytes, put_key, put_varint};

/// The media type of the protobuf document. kube-openapi answers with this
/// spelling whichever one was asked for: Go's `mime` cannot parse the `@`.
pub const CONTENT_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Whether an `Accept` header asks for the protobuf document before JSON
/// (client-go sends the protobuf type alone; kube-openapi serves the first
/// type listed that it has).
pub fn wants_protobuf(accept: &str) -> bool {
    for media in accept.split(',') {
        let media = media.split(';').next().unwrap_or("").trim();
        // `@v1.0+protobuf` and the older `.v1.0+protobuf` spelling
        if media.starts_with("application/com.github.proto-openapi.spec.v2") {
            return true;
        }
        if matches!(media, "application/json" | "application/*" | "*/*") {
            return false;
        }
    }
    false
}

/// The document as an `openapi.v2.Document` message, and the keys met that
/// the message cannot express (none for the documents this server makes).
pub fn encode(doc: &Value) -> (Vec<u8>, BTreeSet<String>) {
    let mut e = Encoder::default();
    let mut out = Vec::new();
    e.document(&mut out, doc);
    (out, e.skipped)
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;

/// A nested message, written even when empty (its presence is meaning:
/// `properties: {}` is an object with no fields).
fn message(buf: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    body(&mut inner);
    put_bytes(buf, field, &inner);
}

#[derive(Default)]
struct Encoder {
    skipped: BTreeSet<String>,
}

impl Encoder {
    fn skip(&mut self, what: &str, key: &str) {
        self.skipped.insert(format!("{what}.{key}"));
    }

    fn string(&mut self, buf: &mut Vec<u8>, field: u32, v: &Value, what: &str, k: &str) {
        match v.as_str() {
            Some(s) => put_bytes(buf, field, s.as_bytes()),
            None => self.skip(what, k),
        }
    }

    fn strings(&mut self, buf: &mut Vec<u8>, field: u32, v: &Value, what: &str, k: &str) {
        match v.as_array() {
            Some(a) => a.iter().for_each(|s| self.string(buf, field, s, what, k)),
            None => self.skip(what, k),
        }
    }

    /// A bool, written only when true (false is proto3's default).
    fn boolean(&mut self, buf: &mut Vec<u8>, field: u32, v: &Value, what: &str, k: &str) {
        match v.as_bool() {
            Some(b) => {
                if b {
                    put_key(buf, field, VARINT);
                    put_varint(buf, 1);
                }
            }
            None => self.skip(what, k),
        }
    }

    fn double(&mut self, buf: &mut Vec<u8>, field: u32, v: &Value, what: &str, k: &str) {
        match v.as_f64() {
            Some(x) => {
                put_key(buf, field, FIXED64);
                buf.extend_from_slice(&x.to_le_bytes());
            }
            None => self.skip(what, k),
        }
    }

    fn int64(&mut self, buf: &mut Vec<u8>, field: u32, v: &Value, what: &str, k: &str) {
        match v.as_i64() {
            Some(n) => {
                put_key(buf, field, VARINT);
                put_varint(buf, n as u64);
            }
            None => self.skip(what, k),
        }
    }

    /// `openapi.v2.Any`: the value as YAML (JSON text is YAML).
    fn any(buf: &mut Vec<u8>, field: u32, v: &Value) {
        message(buf, field, |b| put_bytes(b, 2, v.to_string().as_bytes()));
    }

    /// `repeated NamedAny vendor_extension`: one `x-` key.
    fn extension(buf: &mut Vec<u8>, field: u32, name: &str, v: &Value) {
        message(buf, field, |b| {
            put_bytes(b, 1, name.as_bytes());
            Self::any(b, 2, v);
        });
    }

    fn object<'v>(&mut self, v: &'v Value, what: &str) -> Option<&'v Map<String, Value>> {
        let m = v.as_object();
        if m.is_none() {
            self.skipped.insert(format!("{what} (not an object)"));
        }
        m
    }

    fn document(&mut self, buf: &mut Vec<u8>, doc: &Value) {
        let Some(m) = self.object(doc, "Document") else {
            return;
        };
        for (k, v) in m {
            match k.as_str() {
                "swagger" => self.string(buf, 1, v, "Document", k),
                "info" => message(buf, 2, |b| self.info(b, v)),
                "host" => self.string(buf, 3, v, "Document", k),
                "basePath" => self.string(buf, 4, v, "Document", k),
                "schemes" => self.strings(buf, 5, v, "Document", k),
                "consumes" => self.strings(buf, 6, v, "Document", k),
                "produces" => self.strings(buf, 7, v, "Document", k),
                "paths" => message(buf, 8, |b| self.paths(b, v)),
                "definitions" => message(buf, 9, |b| self.named_schemas(b, v, "definitions")),
                x if x.starts_with("x-") => Self::extension(buf, 16, x, v),
                _ => self.skip("Document", k),
            }
        }
    }

    fn info(&mut self, buf: &mut Vec<u8>, v: &Value) {
        let Some(m) = self.object(v, "Info") else {
            return;
        };
        for (k, v) in m {
            match k.as_str() {
                "title" => self.string(buf, 1, v, "Info", k),
                "version" => self.string(buf, 2, v, "Info", k),
                "description" => self.string(buf, 3, v, "Info", k),
                "termsOfService" => self.string(buf, 4, v, "Info", k),
                x if x.starts_with("x-") => Self::extension(buf, 7, x, v),
                _ => self.skip("Info", k),
            }
        }
    }

    /// `Definitions` or `Properties`: `repeated NamedSchema` at field 1.
    fn named_schemas(&mut self, buf: &mut Vec<u8>, v: &Value, what: &str) {
        let Some(m) = self.object(v, what) else {
            return;
        };
        for (name, s) in m {
            message(buf, 1, |b| {
                put_bytes(b, 1, name.as_bytes());
                message(b, 2, |b| self.schema(b, s));
            });
        }
    }

    fn schema(&mut self, buf: &mut Vec<u8>, s: &Value) {
        const W: &str = "Schema";
        let Some(m) = self.object(s, W) else {
            return;
        };
        for (k, v) in m {
            match k.as_str() {
                "$ref" => self.string(buf, 1, v, W, k),
                "format" => self.string(buf, 2, v, W, k),
                "title" => self.string(buf, 3, v, W, k),
                "description" => self.string(buf, 4, v, W, k),
                "default" => Self::any(buf, 5, v),
                "multipleOf" => self.double(buf, 6, v, W, k),
                "maximum" => self.double(buf, 7, v, W, k),
                "exclusiveMaximum" => self.boolean(buf, 8, v, W, k),
                "minimum" => self.double(buf, 9, v, W, k),
                "exclusiveMinimum" => self.boolean(buf, 10, v, W, k),
                "maxLength" => self.int64(buf, 11, v, W, k),
                "minLength" => self.int64(buf, 12, v, W, k),
                "pattern" => self.string(buf, 13, v, W, k),
                "maxItems" => self.int64(buf, 14, v, W, k),
                "minItems" => self.int64(buf, 15, v, W, k),
                "uniqueItems" => self.boolean(buf, 16, v, W, k),
                "maxProperties" => self.int64(buf, 17, v, W, k),
                "minProperties" => self.int64(buf, 18, v, W, k),
                "required" => self.strings(buf, 19, v, W, k),
                "enum" => match v.as_array() {
                    Some(a) => a.iter().for_each(|x| Self::any(buf, 20, x)),
                    None => self.skip(W, k),
                },
                // AdditionalPropertiesItem: a oneof of a schema or a bool
                "additionalProperties" => message(buf, 21, |b| match v {
                    Value::Bool(x) => {
                        put_key(b, 2, VARINT);
                        put_varint(b, u64::from(*x));
                    }
                    _ => message(b, 1, |b| self.schema(b, v)),
                }),
                // TypeItem: repeated string at 1
                "type" => message(buf, 22, |b| match v {
                    Value::Array(_) => self.strings(b, 1, v, W, k),
                    _ => self.string(b, 1, v, W, k),
                }),
                // ItemsItem: repeated Schema at 1
                "items" => message(buf, 23, |b| match v {
                    Value::Array(a) => a.iter().for_each(|x| message(b, 1, |b| self.schema(b, x))),
                    _ => message(b, 1, |b| self.schema(b, v)),
                }),
                "allOf" => match v.as_array() {
                    Some(a) => a
                        .iter()
                        .for_each(|x| message(buf, 24, |b| self.schema(b, x))),
                    None => self.skip(W, k),
                },
                "properties" => message(buf, 25, |b| self.named_schemas(b, v, "properties")),
                "discriminator" => self.string(buf, 26, v, W, k),
                "readOnly" => self.boolean(buf, 27, v, W, k),
                "example" => Self::any(buf, 30, v),
                x if x.starts_with("x-") => Self::extension(buf, 31, x, v),
                _ => self.skip(W, k),
            }
        }
    }

    fn paths(&mut self, buf: &mut Vec<u8>, v: &Value) {
        let Some(m) = self.object(v, "Paths") else {
            return;
        };
        for (path, item) in m {
            if path.starts_with("x-") {
                Self::extension(buf, 1, path, item);
                continue;
            }
            message(buf, 2, |b| {
                put_bytes(b, 1, path.as_bytes());
                message(b, 2, |b| self.path_item(b, item));
            });
        }
    }

    fn path_item(&mut self, buf: &mut Vec<u8>, v: &Value) {
        let Some(m) = self.object(v, "PathItem") else {
            return;
        };
        for (k, v) in m {
            let field = match k.as_str() {
                "$ref" => {
                    self.string(buf, 1, v, "PathItem", k);
                    continue;
                }
                "get" => 2,
                "put" => 3,
                "post" => 4,
                "delete" => 5,
                "options" => 6,
                "head" => 7,
                "patch" => 8,
                "parameters" => {
                    self.parameters(buf, 9, v);
                    continue;
                }
                x if x.starts_with("x-") => {
                    Self::extension(buf, 10, x, v);
                    continue;
                }
                _ => {
                    self.skip("PathItem", k);
                    continue;
                }
            };
            message(buf, field, |b| self.operation(b, v));
        }
    }

    fn operation(&mut self, buf: &mut Vec<u8>, v: &Value) {
        const W: &str = "Operation";
        let Some(m) = self.object(v, W) else {
            return;
        };
        for (k, v) in m {
            match k.as_str() {
                "tags" => self.strings(buf, 1, v, W, k),
                "summary" => self.string(buf, 2, v, W, k),
                "description" => self.string(buf, 3, v, W, k),
                "operationId" => self.string(buf, 5, v, W, k),
                "produces" => self.strings(buf, 6, v, W, k),
                "consumes" => self.strings(buf, 7, v, W, k),
                "parameters" => self.parameters(buf, 8, v),
                "responses" => message(buf, 9, |b| self.responses(b, v)),
                "schemes" => self.strings(buf, 10, v, W, k),
                "deprecated" => self.boolean(buf, 11, v, W, k),
                x if x.starts_with("x-") => Self::extension(buf, 13, x, v),
                _ => self.skip(W, k),
            }
        }
    }

    /// `repeated ParametersItem` at `field`: each a `Parameter` (field 1).
    fn parameters(&mut self, buf: &mut Vec<u8>, field: u32, v: &Value) {
        let Some(a) = v.as_array() else {
            self.skipped.insert("parameters (not a list)".into());
            return;
        };
        for p in a {
            message(buf, field, |b| message(b, 1, |b| self.parameter(b, p)));
        }
    }

    /// A `Parameter`: a body parameter (1), or a non-body one (2) whose
    /// sub-schema is the header (1), form data (2), query (3) or path (4)
    /// kind, each with its own field numbers.
    fn parameter(&mut self, buf: &mut Vec<u8>, p: &Value) {
        let Some(m) = self.object(p, "Parameter") else {
            return;
        };
        let within = p["in"].as_str().unwrap_or_default();
        if within == "body" {
            return message(buf, 1, |b| {
                for (k, v) in m {
                    match k.as_str() {
                        "description" => self.string(b, 1, v, "BodyParameter", k),
                        "name" => self.string(b, 2, v, "BodyParameter", k),
                        "in" => self.string(b, 3, v, "BodyParameter", k),
                        "required" => self.boolean(b, 4, v, "BodyParameter", k),
                        "schema" => message(b, 5, |b| self.schema(b, v)),
                        x if x.starts_with("x-") => Self::extension(b, 6, x, v),
                        _ => self.skip("BodyParameter", k),
                    }
                }
            });
        }
        // (sub-schema field, then the fields of type, format and
        // uniqueItems, and of vendor extensions, which differ by kind)
        let (sub, ty, format, unique, ext, what) = match within {
            "header" => (1, 5, 6, 19, 22, "HeaderParameterSubSchema"),
            "formData" => (2, 6, 7, 20, 23, "FormDataParameterSubSchema"),
            "query" => (3, 6, 7, 20, 23, "QueryParameterSubSchema"),
            "path" => (4, 5, 6, 19, 22, "PathParameterSubSchema"),
            other => {
                self.skipped.insert(format!("Parameter.in={other}"));
                return;
            }
        };
        message(buf, 2, |b| {
            message(b, sub, |b| {
                for (k, v) in m {
                    match k.as_str() {
                        "required" => self.boolean(b, 1, v, what, k),
                        "in" => self.string(b, 2, v, what, k),
                        "description" => self.string(b, 3, v, what, k),
                        "name" => self.string(b, 4, v, what, k),
                        "type" => self.string(b, ty, v, what, k),
                        "format" => self.string(b, format, v, what, k),
                        "uniqueItems" => self.boolean(b, unique, v, what, k),
                        x if x.starts_with("x-") => Self::extension(b, ext, x, v),
                        _ => self.skip(what, k),
                    }
                }
            })
        });
    }

    /// `Responses`: `repeated NamedResponseValue` at 1, each a `Response`.
    fn responses(&mut self, buf: &mut Vec<u8>, v: &Value) {
        let Some(m) = self.object(v, "Responses") else {
            return;
        };
        for (code, r) in m {
            if code.starts_with("x-") {
                Self::extension(buf, 2, code, r);
                continue;
            }
            message(buf, 1, |b| {
                put_bytes(b, 1, code.as_bytes());
                message(b, 2, |b| message(b, 1, |b| self.response(b, r)));
            });
        }
    }

    fn response(&mut self, buf: &mut Vec<u8>, v: &Value) {
        let Some(m) = self.object(v, "Response") else {
            return;
        };
        for (k, v) in m {
            match k.as_str() {
                "description" => self.string(buf, 1, v, "Response", k),
                // SchemaItem: a oneof whose schema is field 1
                "schema" => message(buf, 2, |b| message(b, 1, |b| self.schema(b, v))),
                x if x.starts_with("x-") => Self::extension(buf, 5, x, v),
                _ => self.skip("Response", k),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The encoding read back with prost over the subset of gnostic's
    //! messages these checks need (prost skips the fields left out).

    use super::*;
    use prost::Message;

    #[derive(Clone, PartialEq, Message)]
    struct Document {
        #[prost(string, tag = "1")]
        swagger: String,
        #[prost(message, optional, tag = "2")]
        info: Option<Info>,
        #[prost(message, optional, tag = "8")]
        paths: Option<Paths>,
        #[prost(message, optional, tag = "9")]
        definitions: Option<Definitions>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Info {
        #[prost(string, tag = "1")]
        title: String,
        #[prost(string, tag = "2")]
        version: String,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Definitions {
        #[prost(message, repeated, tag = "1")]
        additional_properties: Vec<NamedSchema>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct NamedSchema {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, optional, tag = "2")]
        value: Option<Schema>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Schema {
        #[prost(string, tag = "1")]
        r#ref: String,
        #[prost(string, tag = "4")]
        description: String,
        #[prost(string, repeated, tag = "19")]
        required: Vec<String>,
        #[prost(message, optional, boxed, tag = "21")]
        additional_properties: Option<Box<AdditionalPropertiesItem>>,
        #[prost(message, optional, tag = "22")]
        r#type: Option<TypeItem>,
        #[prost(message, optional, tag = "23")]
        items: Option<ItemsItem>,
        #[prost(message, repeated, tag = "24")]
        all_of: Vec<Schema>,
        #[prost(message, optional, tag = "25")]
        properties: Option<Definitions>,
        #[prost(message, repeated, tag = "31")]
        vendor_extension: Vec<NamedAny>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct AdditionalPropertiesItem {
        #[prost(message, optional, tag = "1")]
        schema: Option<Schema>,
        #[prost(bool, optional, tag = "2")]
        boolean: Option<bool>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct TypeItem {
        #[prost(string, repeated, tag = "1")]
        value: Vec<String>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct ItemsItem {
        #[prost(message, repeated, tag = "1")]
        schema: Vec<Schema>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct NamedAny {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, optional, tag = "2")]
        value: Option<Any>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Any {
        #[prost(string, tag = "2")]
        yaml: String,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Paths {
        #[prost(message, repeated, tag = "2")]
        path: Vec<NamedPathItem>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct NamedPathItem {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, optional, tag = "2")]
        value: Option<PathItem>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct PathItem {
        #[prost(message, optional, tag = "2")]
        get: Option<Operation>,
        #[prost(message, optional, tag = "4")]
        post: Option<Operation>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Operation {
        #[prost(string, tag = "5")]
        operation_id: String,
        #[prost(message, repeated, tag = "8")]
        parameters: Vec<ParametersItem>,
        #[prost(message, optional, tag = "9")]
        responses: Option<Responses>,
        #[prost(message, repeated, tag = "13")]
        vendor_extension: Vec<NamedAny>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct ParametersItem {
        #[prost(message, optional, tag = "1")]
        parameter: Option<Parameter>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Parameter {
        #[prost(message, optional, tag = "1")]
        body: Option<BodyParameter>,
        #[prost(message, optional, tag = "2")]
        non_body: Option<NonBodyParameter>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct BodyParameter {
        #[prost(string, tag = "2")]
        name: String,
        #[prost(string, tag = "3")]
        r#in: String,
        #[prost(bool, tag = "4")]
        required: bool,
        #[prost(message, optional, tag = "5")]
        schema: Option<Schema>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct NonBodyParameter {
        #[prost(message, optional, tag = "3")]
        query: Option<QueryParameter>,
        #[prost(message, optional, tag = "4")]
        path: Option<PathParameter>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct QueryParameter {
        #[prost(string, tag = "2")]
        r#in: String,
        #[prost(string, tag = "4")]
        name: String,
        #[prost(string, tag = "6")]
        r#type: String,
        #[prost(bool, tag = "20")]
        unique_items: bool,
    }

    #[derive(Clone, PartialEq, Message)]
    struct PathParameter {
        #[prost(bool, tag = "1")]
        required: bool,
        #[prost(string, tag = "4")]
        name: String,
        #[prost(string, tag = "5")]
        r#type: String,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Responses {
        #[prost(message, repeated, tag = "1")]
        response_code: Vec<NamedResponseValue>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct NamedResponseValue {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, optional, tag = "2")]
        value: Option<ResponseValue>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct ResponseValue {
        #[prost(message, optional, tag = "1")]
        response: Option<Response>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Response {
        #[prost(string, tag = "1")]
        description: String,
        #[prost(message, optional, tag = "2")]
        schema: Option<SchemaItem>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct SchemaItem {
        #[prost(message, optional, tag = "1")]
        schema: Option<Schema>,
    }

    fn builtin() -> Document {
        let doc = crate::apiserver::openapi::v2_document();
        let (bytes, skipped) = encode(&doc);
        assert!(skipped.is_empty(), "left out: {skipped:?}");
        Document::decode(bytes.as_slice()).expect("a valid openapi.v2.Document")
    }

    fn named<'a>(list: &'a [NamedSchema], name: &str) -> &'a Schema {
        list.iter()
            .find(|n| n.name == name)
            .and_then(|n| n.value.as_ref())
            .unwrap_or_else(|| panic!("no {name}"))
    }

    fn property<'a>(s: &'a Schema, name: &str) -> &'a Schema {
        named(
            &s.properties
                .as_ref()
                .expect("properties")
                .additional_properties,
            name,
        )
    }

    fn types(s: &Schema) -> Vec<String> {
        s.r#type.clone().map(|t| t.value).unwrap_or_default()
    }

    #[test]
    fn the_built_in_document_encodes_whole_and_reads_back() {
        let doc = builtin();
        assert_eq!(doc.swagger, "2.0");
        assert_eq!(doc.info.as_ref().unwrap().title, "Kubernetes");
        let defs = &doc.definitions.as_ref().unwrap().additional_properties;
        assert!(defs.len() > 300, "{} definitions", defs.len());

        // what kubectl finds a kind's schema by
        let pod = named(defs, "io.k8s.api.core.v1.Pod");
        let gvk = pod
            .vendor_extension
            .iter()
            .find(|e| e.name == "x-kubernetes-group-version-kind")
            .and_then(|e| e.value.as_ref())
            .expect("the Pod's group-version-kind");
        let gvk: Value = serde_json::from_str(&gvk.yaml).unwrap();
        assert_eq!(
            gvk,
            serde_json::json!([{"group": "", "kind": "Pod", "version": "v1"}])
        );
        assert_eq!(types(pod), ["object"]);
        // a reference with a description is a plain $ref in v2, not allOf
        let spec = property(pod, "spec");
        assert_eq!(spec.r#ref, "#/definitions/io.k8s.api.core.v1.PodSpec");
        assert!(spec.all_of.is_empty());
        assert!(!spec.description.is_empty());
        let containers = property(named(defs, "io.k8s.api.core.v1.PodSpec"), "containers");
        assert_eq!(types(containers), ["array"]);
        assert_eq!(
            containers.items.as_ref().unwrap().schema[0].r#ref,
            "#/definitions/io.k8s.api.core.v1.Container"
        );
        assert!(named(defs, "io.k8s.api.core.v1.Container")
            .required
            .contains(&"name".to_string()));
        // a map of strings
        let data = property(named(defs, "io.k8s.api.core.v1.ConfigMap"), "data");
        assert_eq!(types(data), ["object"]);
        let values = data.additional_properties.as_ref().unwrap();
        assert_eq!(types(values.schema.as_ref().unwrap()), ["string"]);

        // every reference names a definition
        fn refs(s: &Schema, out: &mut Vec<String>) {
            if !s.r#ref.is_empty() {
                out.push(s.r#ref.clone());
            }
            let props = s.properties.iter().flat_map(|p| &p.additional_properties);
            for n in props {
                n.value.iter().for_each(|v| refs(v, out));
            }
            s.items
                .iter()
                .flat_map(|i| &i.schema)
                .for_each(|v| refs(v, out));
            s.all_of.iter().for_each(|v| refs(v, out));
            let extra = s
                .additional_properties
                .iter()
                .filter_map(|a| a.schema.as_ref());
            extra.for_each(|v| refs(v, out));
        }
        let mut all = Vec::new();
        defs.iter()
            .filter_map(|d| d.value.as_ref())
            .for_each(|s| refs(s, &mut all));
        assert!(all.len() > 500, "{} references", all.len());
        for r in all {
            let name = r
                .strip_prefix("#/definitions/")
                .unwrap_or_else(|| panic!("{r}"));
            named(defs, name);
        }
    }

    #[test]
    fn operations_carry_their_parameters_and_responses() {
        let doc = builtin();
        let paths = &doc.paths.as_ref().unwrap().path;
        let pods = paths
            .iter()
            .find(|p| p.name == "/api/v1/namespaces/{namespace}/pods")
            .and_then(|p| p.value.as_ref())
            .expect("the pods collection");
        let post = pods.post.as_ref().expect("create");
        let json = crate::apiserver::openapi::v2_document();
        let id = &json["paths"]["/api/v1/namespaces/{namespace}/pods"]["post"]["operationId"];
        assert_eq!(post.operation_id, id.as_str().unwrap());
        let params: Vec<&Parameter> = post
            .parameters
            .iter()
            .filter_map(|p| p.parameter.as_ref())
            .collect();
        let body = params
            .iter()
            .find_map(|p| p.body.as_ref())
            .expect("a body parameter");
        assert_eq!((body.name.as_str(), body.r#in.as_str()), ("body", "body"));
        assert!(body.required);
        assert_eq!(
            body.schema.as_ref().unwrap().r#ref,
            "#/definitions/io.k8s.api.core.v1.Pod"
        );
        let query: Vec<&QueryParameter> = params
            .iter()
            .filter_map(|p| p.non_body.as_ref()?.query.as_ref())
            .collect();
        let validation = query
            .iter()
            .find(|q| q.name == "fieldValidation")
            .expect("fieldValidation");
        assert_eq!(
            (validation.r#in.as_str(), validation.r#type.as_str()),
            ("query", "string")
        );
        assert!(validation.unique_items);
        let namespace = params
            .iter()
            .filter_map(|p| p.non_body.as_ref()?.path.as_ref())
            .find(|p| p.name == "namespace")
            .expect("the namespace path parameter");
        assert!(namespace.required);
        assert_eq!(namespace.r#type, "string");
        let ok = &post.responses.as_ref().unwrap().response_code;
        let ok = ok.iter().find(|r| r.name == "200").expect("a 200 response");
        let ok = ok.value.as_ref().unwrap().response.as_ref().unwrap();
        assert_eq!(ok.description, "OK");
        assert_eq!(
            ok.schema.as_ref().unwrap().schema.as_ref().unwrap().r#ref,
            "#/definitions/io.k8s.api.core.v1.Pod"
        );
        let action = post
            .vendor_extension
            .iter()
            .find(|e| e.name == "x-kubernetes-action")
            .expect("the action");
        assert_eq!(action.value.as_ref().unwrap().yaml, "\"post\"");
    }

    #[test]
    fn what_swagger_2_cannot_say_is_named_not_encoded() {
        let doc = serde_json::json!({
            "swagger": "2.0",
            "definitions": {"A": {"type": "object", "oneOf": [], "x-ok": true}},
            "extra": 1,
        });
        let (bytes, skipped) = encode(&doc);
        assert_eq!(
            skipped.into_iter().collect::<Vec<_>>(),
            ["Document.extra", "Schema.oneOf"]
        );
        let back = Document::decode(bytes.as_slice()).unwrap();
        let a = named(&back.definitions.unwrap().additional_properties, "A").clone();
        assert_eq!(types(&a), ["object"]);
        assert_eq!(a.vendor_extension[0].name, "x-ok");
        assert_eq!(a.vendor_extension[0].value.as_ref().unwrap().yaml, "true");
    }

    #[test]
    fn accept_headers_choose_protobuf_only_when_asked_first() {
        assert!(wants_protobuf(
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
        ));
        assert!(wants_protobuf(
            "application/com.github.proto-openapi.spec.v2.v1.0+protobuf, application/json"
        ));
        assert!(!wants_protobuf("application/json"));
        assert!(!wants_protobuf(""));
        assert!(!wants_protobuf(
            "*/*, application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
        ));
    }
}
