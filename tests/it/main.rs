//! Fast integration tests (libvirt test driver, real sled, MCP client).
