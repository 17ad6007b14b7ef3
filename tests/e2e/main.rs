//! Integration tests: real `wk server` processes on loopback, real redb files,
//! driven over HTTP, with kube-rs and with the `wkctl` binary.

mod agent;
mod api;
mod autoscaling;
mod batch;
mod cli;
mod controllers;
mod deployments;
mod durability;
mod examples;
mod exec;
mod functions;
mod ha;
mod ingress;
mod join;
mod kube_client;
mod kubectl;
mod nodes;
mod oci;
mod registry;
mod scale;
mod scheduler;
mod security;
mod services;
mod util;
mod watch;
