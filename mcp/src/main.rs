//! The `vmcluster` binary: `vmcluster serve` runs the MCP server on stdio; every other verb runs
//! one operation on the same engine and exits.

use vmcluster_engine::config::Config;

#[tokio::main]
async fn main() {
    let cli = vmcluster_mcp::cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => startup_failure(
            cli.json,
            vmcluster_engine::ErrorCode::InvalidArgument,
            &e.to_string(),
        ),
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
        Err(e) => startup_failure(cli.json, e.code(), &format!("Cannot start: {e}")),
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

/// Reports a failure to start (bad configuration, journal in use, libvirt unreachable) and exits
/// with status 2; with `--json` the envelope goes to stdout like every other result.
fn startup_failure(json: bool, code: vmcluster_engine::ErrorCode, message: &str) -> ! {
    if json {
        let env: vmcluster_mcp::envelope::Envelope<()> = vmcluster_mcp::envelope::Envelope {
            success: false,
            result: None,
            error: Some(vmcluster_mcp::envelope::ToolError {
                code,
                message: message.to_owned(),
                recoverable: code.recoverable(),
                ..vmcluster_mcp::envelope::ToolError::invalid("")
            }),
            op_id: None,
            state: None,
            outcome: None,
        };
        println!("{}", serde_json::to_string_pretty(&env).unwrap_or_default());
    }
    eprintln!("error [{code}]: {message}");
    std::process::exit(2);
}
