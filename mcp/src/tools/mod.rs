//! Tool groups, one `#[tool_router]` per resource: clusters, nodes, remote execution, observability.

pub mod cluster;
pub mod exec;
pub mod files;
pub mod node;
pub mod observe;
