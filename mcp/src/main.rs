//! The `vmcluster` binary: `vmcluster serve` runs the MCP server on stdio; every other verb runs
//! one operation on the same engine and exits.

use vmcluster_engine::config::Config;

#[tokio::main]
async fn main() {
    let cli = vmcluster_mcp::cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error [INVALID_ARGUMENT]: {e}");
            std::process::exit(2);
        }
    };
    // Logs go to stderr: stdout is the MCP transport.
    // A one-shot CLI verb stays quiet unless asked; the server logs at the configured level.
    let explicit = std::env::var("VMCLUSTER_LOG_LEVEL").is_ok();
    let level = match cli.command {
        vmcluster_mcp::cli::Command::Serve => config.log_level.to_lowercase(),
        _ if explicit => config.log_level.to_lowercase(),
        _ => "warn".to_owned(),
    };
    let filter = std::env::var("RUST_LOG").unwrap_or(level);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let engine = match vmcluster_actors::Engine::start(config).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error [{}]: cannot start: {e}", e.code());
            std::process::exit(2);
        }
    };
    let code = match cli.command {
        vmcluster_mcp::cli::Command::Serve => {
            match vmcluster_mcp::server::VmclusterServer::new(engine.clone())
                .serve_stdio()
                .await
            {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!(error = %e, "MCP server stopped");
                    1
                }
            }
        }
        other => vmcluster_mcp::cli::run(&engine, other, cli.json).await,
    };
    engine.shutdown().await;
    std::process::exit(code);
}
