//! Tool groups, one `#[tool_router]` per resource: clusters and nodes.

pub mod cluster;
pub mod node;
