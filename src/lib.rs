//! omero-operator: runs OMERO.server clusters on Kubernetes.
//!
//! `api` is the resource; `render`, `drain` and `ownership` are pure decisions; `omero` and `controller`
//! are the adapters to OMERO and to the API server.

pub mod api;
pub mod controller;
pub mod drain;
mod error;
pub mod omero;
pub mod ownership;
pub mod render;
pub mod telemetry;

pub use error::{Error, Result};
