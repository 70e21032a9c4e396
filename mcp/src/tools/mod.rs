//! Tool groups, one `#[tool_router]` per resource: clusters, nodes, remote execution, observability, snapshots.

pub mod cluster;
pub mod events;
pub mod exec;
pub mod files;
pub mod node;
pub mod observe;
pub mod ops;
pub mod snapshot;
