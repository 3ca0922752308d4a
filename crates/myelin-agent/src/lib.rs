//! The Myelin node agent: owns the node's datapath, endpoints, IPAM and
//! policy, and serves the local API. The components and the channels between
//! them are drawn at the top of [`daemon`].
#![forbid(unsafe_code)]

pub mod cgroups;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod endpoints;
pub mod gc;
pub mod ipam;
pub mod masq;
pub mod metrics;
pub mod observe;
pub mod policy;
pub mod process;
pub mod server;
pub mod snapshot;
pub mod store;
