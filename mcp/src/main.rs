//! The `vmcluster` binary: `vmcluster serve` runs the MCP server on stdio (and the control
//! socket in the state directory); `vmcluster events` reads the event stream (through that
//! socket, or from the journal when no server runs); every other verb runs one operation on the
//! same engine and exits: inside the running server (through the socket) when there is one, in
//! this process otherwise.

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
    // `events` reads through a running server's control socket, or the journal: it never
    // starts an engine (a server may be holding the journal and libvirt).
    if let vmcluster_mcp::cli::Command::Events {
        follow,
        since,
        cluster,
    } = &cli.command
    {
        let args = vmcluster_mcp::cli::events::EventsArgs {
            follow: *follow,
            since: *since,
            cluster: cluster.clone(),
            json: cli.json,
        };
        std::process::exit(vmcluster_mcp::cli::events::run(&config, args).await);
    }
    let socket = vmcluster_mcp::control::socket_path(&config.state_dir);
    // A running server owns the journal and the host: it runs the verb.
    if !matches!(cli.command, vmcluster_mcp::cli::Command::Serve)
        && let Some((code, out)) =
            vmcluster_mcp::cli::through_server(&socket, std::env::args().collect()).await
    {
        print!("{}", out.stdout);
        eprint!("{}", out.stderr);
        std::process::exit(code);
    }
    let engine = match vmcluster_actors::Engine::start(config).await {
        Ok(e) => e,
        Err(e) => startup_failure(cli.json, e.code(), &format!("Cannot start: {e}")),
    };
    let code = match cli.command {
        vmcluster_mcp::cli::Command::Serve => {
            let control =
                match vmcluster_mcp::control::ControlServer::start(engine.clone(), &socket) {
                    Ok(c) => c,
                    Err(e) => {
                        engine.shutdown().await;
                        startup_failure(
                            cli.json,
                            vmcluster_engine::ErrorCode::Io,
                            &format!("Cannot open the control socket {}: {e}", socket.display()),
                        )
                    }
                };
            let code = match vmcluster_mcp::server::VmclusterServer::new(engine.clone())
                .serve_stdio()
                .await
            {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!(error = %e, "MCP server stopped");
                    1
                }
            };
            control.shutdown().await;
            code
        }
        mut other => {
            if let Ok(cwd) = std::env::current_dir() {
                vmcluster_mcp::cli::absolutize(&mut other, &cwd);
            }
            let mut out = vmcluster_mcp::cli::Output::default();
            let code = vmcluster_mcp::cli::run(&engine, other, cli.json, &mut out).await;
            print!("{}", out.stdout);
            eprint!("{}", out.stderr);
            code
        }
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
