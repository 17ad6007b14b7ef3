//! The object model: served kinds, selectors, defaulting and validation, and
//! the mapping of errors to `metav1.Status`. No I/O happens here.

pub mod crd;
pub mod error;
pub mod fields;
pub mod ingress;
pub mod kubelet;
pub mod managed;
pub mod meta;
pub mod pb;
pub mod podrefs;
pub mod printers;
pub mod qos;
pub mod quantity;
pub mod resources;
pub mod schema;
pub mod selector;
pub mod smp;
pub mod validation;

pub use error::{ApiError, FieldError};
pub use resources::{Resource, RESOURCES};
