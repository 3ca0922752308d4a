//! The Myelin node agent: owns the node's datapath, endpoints and IPAM, and
//! serves the local API.
//!
//! ```text
//!  CNI plugin / CLI --unix socket--> server (axum) --lock--> Endpoints
//!                                                            |  |  |
//!                               store (redb) <---------------+  |  +--> netlink (veth, routes)
//!                                                               +-----> Datapath (pinned maps, TCX links)
//! ```
#![forbid(unsafe_code)]

pub mod config;
pub mod endpoints;
pub mod ipam;
pub mod masq;
pub mod policy;
pub mod server;
pub mod store;
