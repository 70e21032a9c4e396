//! The test harness shared by the fast tests (`it`: libvirt's `test:///default` driver, real
//! sled, the real binary behind a real MCP client) and the real-guest tests (`e2e`: real
//! libvirtd and QEMU inside the isolated test host that `scripts/testhost` creates).
//!
//! It provides scratch directories that QEMU can read, topology writers, the built binary, an
//! MCP client over its stdio, and checks of results against the tools' advertised schemas.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ProgressNotificationParam, ReadResourceRequestParams,
    RequestMetaObject, ResourceContents, ResourceTemplate, Tool,
};
use rmcp::service::NotificationContext;
use rmcp::service::RunningService;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};

/// Events (as `events_read` or `vmcluster events --json` give them) as short lines, for
/// failure messages.
pub fn event_story(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("-").to_owned();
            format!(
                "{} {} {}/{} {} {} {}\n",
                e["seq"],
                s("kind"),
                s("cluster"),
                s("node"),
                s("tool"),
                s("detail"),
                s("outcome")
            )
        })
        .collect()
}

/// The `vmcluster` binary built by cargo (`VMCLUSTER_BIN` overrides).
pub fn vmcluster_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VMCLUSTER_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>/vmcluster
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("vmcluster");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bins` first (scripts/test does)",
        bin.display()
    );
    bin
}

/// A scratch root for one test: world-traversable (QEMU runs as another user), removed on drop.
#[derive(Debug)]
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// A new scratch root under `/var/tmp`.
    pub fn new(tag: &str) -> Scratch {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all("/var/tmp/vmcluster-tests").expect("scratch parent");
        let dir = tempfile::Builder::new()
            .prefix(&format!("{tag}-"))
            .tempdir_in("/var/tmp/vmcluster-tests")
            .expect("scratch dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod scratch");
        for sub in ["topologies", "overlays", "state", "ssh"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("scratch subdir");
        }
        // `env()` names this file explicitly, and a named config file must exist.
        std::fs::write(dir.path().join("config.yaml"), "").expect("write config");
        Scratch { dir }
    }

    /// Its root.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The environment that points a `vmcluster` process at this scratch root.
    pub fn env(&self, libvirt_uri: &str) -> Vec<(String, String)> {
        let p = |s: &str| self.path().join(s).to_string_lossy().into_owned();
        vec![
            ("VMCLUSTER_CONFIG".into(), p("config.yaml")),
            ("VMCLUSTER_TOPOLOGY_DIR".into(), p("topologies")),
            ("VMCLUSTER_OVERLAY_DIR".into(), p("overlays")),
            ("VMCLUSTER_STATE_DIR".into(), p("state")),
            ("VMCLUSTER_SSH_KEY_PATH".into(), p("ssh/id_ed25519")),
            ("VMCLUSTER_LIBVIRT_URI".into(), libvirt_uri.into()),
        ]
    }

    /// An engine configuration pointing at this scratch root.
    pub fn config(&self, libvirt_uri: &str) -> vmcluster_engine::config::Config {
        let mut c = vmcluster_engine::config::Config::defaults(true, None);
        c.topology_dir = self.path().join("topologies");
        c.overlay_dir = self.path().join("overlays");
        c.state_dir = self.path().join("state");
        c.ssh_key_path = self.path().join("ssh/id_ed25519");
        c.libvirt_uri = libvirt_uri.into();
        c
    }

    /// Writes `topologies/<name>.yaml`.
    pub fn write_topology(&self, name: &str, yaml: &str) {
        std::fs::write(
            self.path().join("topologies").join(format!("{name}.yaml")),
            yaml,
        )
        .expect("write topology");
        std::fs::write(self.path().join("config.yaml"), "").expect("write config");
    }

    /// A small qcow2 image usable as a base image where nothing boots.
    pub fn fake_base_image(&self) -> PathBuf {
        let p = self.path().join("base.qcow2");
        let st = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&p)
            .arg("64M")
            .status()
            .expect("qemu-img");
        assert!(st.success());
        p
    }
}

/// Parameters of a generated topology.
#[derive(Debug, Clone)]
pub struct TopologySpec<'a> {
    /// Cluster name.
    pub cluster: &'a str,
    /// Third octet of `192.168.X.0/24`.
    pub octet: u8,
    /// Node names.
    pub nodes: &'a [&'a str],
    /// Base image.
    pub base_image: &'a Path,
    /// Direct kernel boot: kernel and initrd.
    pub kernel: Option<(&'a Path, &'a Path)>,
    /// Memory per node.
    pub memory_mb: u64,
}

/// Renders a topology in seed 000's format (nodes at `.11`, `.12`, ...).
pub fn topology_yaml(t: &TopologySpec<'_>) -> String {
    let mut y = format!(
        "cluster_name: {c}\nbase_image: {b}\ndomain_type: auto\nnetwork:\n  name: {c}-net\n  bridge: vt{c:.8}{o}\n  subnet: 192.168.{o}.0/24\nnodes:\n",
        c = t.cluster,
        b = t.base_image.display(),
        o = t.octet
    );
    for (i, n) in t.nodes.iter().enumerate() {
        y.push_str(&format!(
            "  - name: {n}\n    role: {}\n    vcpus: 1\n    memory_mb: {}\n    ip: 192.168.{}.{}\n",
            if i == 0 { "control" } else { "worker" },
            t.memory_mb,
            t.octet,
            11 + i
        ));
    }
    if let Some((k, i)) = t.kernel {
        y.push_str(&format!(
            "kernel: {}\ninitrd: {}\ncmdline: console=ttyS0 root=/dev/vda rw quiet printk.devkmsg=on\n",
            k.display(),
            i.display()
        ));
    }
    y.push_str("ssh:\n  user: root\n  connect_timeout_s: 5\nsnapshots:\n  baseline: clean-boot\n");
    y
}

/// The system `ssh` client, set up as a downstream user of a cluster handle would run it (key
/// auth only, no host key prompts, no known_hosts writes).
pub fn system_ssh(
    key: &Path,
    user: &str,
    ip: &str,
    port: u16,
    connect_timeout_s: u32,
) -> std::process::Command {
    let mut c = std::process::Command::new("ssh");
    c.arg("-i").arg(key).args([
        "-p",
        &port.to_string(),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
    ]);
    c.args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]);
    c.arg("-o")
        .arg(format!("ConnectTimeout={connect_timeout_s}"))
        .arg(format!("{user}@{ip}"));
    c
}

/// The default client handler: records the server's progress notifications.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    progress: Arc<std::sync::Mutex<Vec<ProgressNotificationParam>>>,
}

impl ClientHandler for Recorder {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(params);
    }
}

/// An MCP client connected to a `vmcluster serve` child process; `H` handles what the server
/// sends on its own (notifications).
pub struct McpClient<H: ClientHandler = Recorder> {
    /// The running client service.
    pub service: RunningService<RoleClient, H>,
    tools: Vec<Tool>,
}

impl<H: ClientHandler> std::fmt::Debug for McpClient<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpClient")
            .field("tools", &self.tools.len())
            .finish()
    }
}

/// What a tool call returned, already checked against the tool's output schema.
#[derive(Debug, Clone)]
pub struct Called {
    /// `isError`.
    pub is_error: bool,
    /// The structured envelope.
    pub envelope: Value,
}

impl Called {
    /// The `result` of a successful call (panics with the error otherwise).
    #[track_caller]
    pub fn ok(&self) -> &Value {
        assert!(!self.is_error, "tool failed: {}", self.envelope);
        assert_eq!(self.envelope["success"], json!(true), "{}", self.envelope);
        &self.envelope["result"]
    }

    /// The `error` of a failed call (panics if it succeeded).
    #[track_caller]
    pub fn err(&self) -> &Value {
        assert!(
            self.is_error,
            "tool unexpectedly succeeded: {}",
            self.envelope
        );
        assert_eq!(self.envelope["success"], json!(false));
        &self.envelope["error"]
    }

    /// The error code of a failed call.
    #[track_caller]
    pub fn code(&self) -> String {
        self.err()["code"].as_str().expect("error code").to_owned()
    }
}

impl McpClient {
    /// Spawns `vmcluster serve` with `env` and initialises an MCP session.
    pub async fn spawn(env: &[(String, String)]) -> McpClient {
        McpClient::spawn_with(env, Recorder::default()).await
    }

    /// Every progress notification received so far, in order: `(progress, total, message)`.
    /// (rmcp's client gives each request its own token, so the caller's is not echoed.)
    pub fn progress(&self) -> Vec<(f64, Option<f64>, Option<String>)> {
        self.service
            .service()
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|p| (p.progress, p.total, p.message.clone()))
            .collect()
    }
}

impl<H: ClientHandler> McpClient<H> {
    /// Like [`McpClient::spawn`], with `handler` receiving the server's notifications.
    pub async fn spawn_with(env: &[(String, String)], handler: H) -> McpClient<H> {
        let env = env.to_vec();
        let cmd = tokio::process::Command::new(vmcluster_bin()).configure(move |c| {
            c.arg("serve").env("VMCLUSTER_LOG_LEVEL", "warn");
            for (k, v) in &env {
                c.env(k, v);
            }
        });
        let service = handler
            .serve(TokioChildProcess::new(cmd).expect("spawn server"))
            .await
            .expect("initialize");
        let tools = service.list_all_tools().await.expect("tools/list");
        McpClient { service, tools }
    }

    /// The advertised tools.
    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    /// Calls `name` with `args` and checks the result against the tool's output schema.
    pub async fn call(&self, name: &str, args: Value) -> Called {
        self.try_call(name, args)
            .await
            .unwrap_or_else(|| panic!("{name}: the server went away (tools/call transport)"))
    }

    /// Like [`McpClient::call`], asking for progress notifications.
    pub async fn call_with_progress(&self, name: &str, args: Value, token: &str) -> Called {
        let meta = RequestMetaObject::with_progress_token(rmcp::model::ProgressToken(
            rmcp::model::NumberOrString::String(token.to_owned().into()),
        ));
        self.call_inner(name, args, Some(meta))
            .await
            .unwrap_or_else(|| panic!("{name}: the server went away"))
    }

    /// Like [`McpClient::call`], but `None` when the server dies before answering (a test
    /// that kills it on purpose).
    pub async fn try_call(&self, name: &str, args: Value) -> Option<Called> {
        self.call_inner(name, args, None).await
    }

    async fn call_inner(
        &self,
        name: &str,
        args: Value,
        meta: Option<RequestMetaObject>,
    ) -> Option<Called> {
        let mut params = CallToolRequestParams::new(name.to_owned());
        params.meta = meta;
        if let Value::Object(m) = args {
            params = params.with_arguments(m);
        }
        let res: CallToolResult = self.service.call_tool(params).await.ok()?;
        let envelope = res
            .structured_content
            .clone()
            .unwrap_or_else(|| panic!("{name}: no structured content: {res:?}"));
        let tool = self
            .tools
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("unknown tool {name}"));
        check_schema(tool, &envelope);
        Some(Called {
            is_error: res.is_error.unwrap_or(false),
            envelope,
        })
    }

    /// Reads resource `uri`: its text (or base64-decoded blob) and MIME type, or the JSON-RPC
    /// error as `(code, data)`.
    pub async fn read_resource(
        &self,
        uri: &str,
    ) -> Result<(Vec<u8>, Option<String>), (i32, Option<Value>)> {
        match self
            .service
            .read_resource(ReadResourceRequestParams::new(uri))
            .await
        {
            Ok(r) => {
                assert_eq!(r.contents.len(), 1, "one content per resource");
                let c = r.contents.into_iter().next().expect("one content");
                Ok(match c {
                    ResourceContents::TextResourceContents {
                        uri: u,
                        mime_type,
                        text,
                        ..
                    } => {
                        assert_eq!(u, uri);
                        (text.into_bytes(), mime_type)
                    }
                    ResourceContents::BlobResourceContents {
                        uri: u,
                        mime_type,
                        blob,
                        ..
                    } => {
                        use base64::Engine as _;
                        assert_eq!(u, uri);
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(blob)
                            .expect("base64 blob");
                        (bytes, mime_type)
                    }
                    other => panic!("unexpected resource contents {other:?}"),
                })
            }
            Err(rmcp::ServiceError::McpError(e)) => Err((e.code.0, e.data)),
            Err(e) => panic!("resources/read transport: {e}"),
        }
    }

    /// The advertised resource templates.
    pub async fn resource_templates(&self) -> Vec<ResourceTemplate> {
        self.service
            .list_all_resource_templates()
            .await
            .expect("resources/templates/list")
    }

    /// The URIs of the listed resources.
    pub async fn resource_uris(&self) -> Vec<String> {
        self.service
            .list_all_resources()
            .await
            .expect("resources/list")
            .into_iter()
            .map(|r| r.uri)
            .collect()
    }

    /// Closes the session (the server exits).
    pub async fn close(self) {
        let _ = self.service.cancel().await;
    }
}

/// Asserts that `value` conforms to `tool`'s advertised output schema.
#[track_caller]
pub fn check_schema(tool: &Tool, value: &Value) {
    let schema = tool
        .output_schema
        .as_ref()
        .unwrap_or_else(|| panic!("{} advertises no output schema", tool.name));
    let schema = Value::Object(Arc::unwrap_or_clone(schema.clone()));
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{}: bad schema: {e}", tool.name));
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{}: result does not match its output schema: {errors:?}\n{value}",
        tool.name
    );
}

/// A `vmcluster events --follow --json` child process, read line by line.
#[derive(Debug)]
pub struct EventsFollower {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl EventsFollower {
    /// Starts `vmcluster events --follow --json ARGS` with `env`.
    pub fn spawn(env: &[(String, String)], args: &[&str]) -> EventsFollower {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(vmcluster_bin())
            .args(["events", "--follow", "--json"])
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn vmcluster events");
        let stdout = child.stdout.take().expect("stdout");
        EventsFollower {
            child,
            lines: tokio::io::BufReader::new(stdout).lines(),
        }
    }

    /// The next event it prints (fails after `within`, or if it exits first).
    pub async fn next(&mut self, within: std::time::Duration) -> Value {
        let line = tokio::time::timeout(within, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no event printed within {within:?}"))
            .expect("read events output")
            .expect("vmcluster events exited");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON event ({e}): {line}"))
    }

    /// Every event it prints up to and including the first one `last` accepts (fails after
    /// `within` in total).
    pub async fn until(
        &mut self,
        within: std::time::Duration,
        last: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let e = self.next(left).await;
            let done = last(&e);
            out.push(e);
            if done {
                return out;
            }
        }
    }

    /// Stops it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}
