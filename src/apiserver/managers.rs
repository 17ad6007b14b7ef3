//! The field manager of the request being served (its `fieldManager`, or
//! its user agent up to the first `/`) and the subresource it writes, kept
//! in a task-local so every write path records `managedFields`
//! ([`crate::api::managed`]) without threading them through each call.

use std::cell::RefCell;
use std::future::Future;

use serde_json::Value;

use crate::api::managed::{self, Writer};
use crate::api::{meta, Resource};

#[derive(Debug, Clone)]
struct Current {
    manager: String,
    subresource: String,
    /// A server-side apply already recorded the fields of this write.
    applied: bool,
}

tokio::task_local! {
    static CURRENT: RefCell<Current>;
}

/// Run `f` as a write by `manager` to `subresource` (empty for the object).
pub async fn scope<F: Future>(manager: String, subresource: String, f: F) -> F::Output {
    CURRENT
        .scope(
            RefCell::new(Current {
                manager,
                subresource,
                applied: false,
            }),
            f,
        )
        .await
}

/// The manager and subresource of the current request, if any.
pub fn current() -> Option<(String, String)> {
    CURRENT
        .try_with(|c| {
            let c = c.borrow();
            (c.manager.clone(), c.subresource.clone())
        })
        .ok()
}

/// Note that this request's fields were recorded by a server-side apply.
pub fn mark_applied() {
    let _ = CURRENT.try_with(|c| c.borrow_mut().applied = true);
}

/// Record the write of `new` (from `old`; none for a create) in its
/// `managedFields`, unless outside a request or already done by an apply.
pub fn track(res: &Resource, old: Option<&Value>, new: &mut Value) {
    let Ok(Some((manager, subresource))) = CURRENT.try_with(|c| {
        let c = c.borrow();
        (!c.applied).then(|| (c.manager.clone(), c.subresource.clone()))
    }) else {
        return;
    };
    let (api_version, now) = (res.api_version(), meta::now());
    let w = Writer {
        manager: &manager,
        api_version: &api_version,
        subresource: &subresource,
        now: &now,
    };
    managed::track(old, new, crate::api::schema::schemas().root(res), &w);
}
