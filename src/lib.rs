//! omero-operator: runs OMERO.server clusters on Kubernetes.
//!
//! `api` is the resource; `render`, `request`, `ownership`, `rollout`, `maintenance`,
//! `stopping`, `departures` and `lifecycle` are pure decisions; `omero` and `controller`
//! are the adapters to OMERO and to the API server.

pub mod api;
pub mod api_client;
pub mod controller;
pub mod departures;
mod error;
pub mod http;
pub mod lifecycle;
pub mod maintenance;
pub mod metrics;
pub mod omero;
pub mod ownership;
pub mod plugin;
pub mod pod_security;
pub mod pool;
pub mod rbac;
pub mod render;
pub mod request;
pub mod rollout;
pub mod stopping;
pub mod telemetry;

pub use error::{Error, Refusal, Result};
