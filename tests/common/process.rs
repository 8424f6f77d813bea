//! Child processes for end-to-end tests: the built demo, the load
//! generator and the `rotel` collector. Every child is killed on drop.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A built example (`cargo test` builds examples next to the test binary).
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --examples` first",
        path.display()
    );
    path
}

/// The `rotel-agent` binary from the PyPI `rotel` package (`ROTEL_AGENT`
/// overrides), or `None` when it is not there (no `python3`, no `rotel`
/// package, or no file at the path). `./scripts/test` installs it; tests
/// pass the answer to `common::require_tool`.
pub fn rotel_agent() -> Option<PathBuf> {
    let path = match std::env::var_os("ROTEL_AGENT") {
        Some(path) => PathBuf::from(path),
        None => {
            let output = Command::new("python3")
                .args([
                    "-c",
                    "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
                ])
                .output()
                .ok()?;
            if !output.status.success() {
                return None;
            }
            PathBuf::from(String::from_utf8(output.stdout).ok()?.trim())
        }
    };
    path.exists().then_some(path)
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child whose stderr lines are collected; killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
    lines: Arc<Mutex<Vec<String>>>,
    line_added: Arc<(Mutex<usize>, std::sync::Condvar)>,
}

impl Proc {
    pub fn spawn(name: &str, command: &mut Command) -> Proc {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let line_added = Arc::new((Mutex::new(0usize), std::sync::Condvar::new()));
        let stderr = child.stderr.take().unwrap();
        {
            let lines = lines.clone();
            let line_added = line_added.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line);
                    let (count, cvar) = &*line_added;
                    *count.lock().unwrap() += 1;
                    cvar.notify_all();
                }
            });
        }
        Proc {
            child,
            name: name.to_owned(),
            lines,
            line_added,
        }
    }

    pub fn stderr(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Blocks until a stderr line contains `needle` (or panics after
    /// `limit`, showing what the process wrote).
    pub fn wait_for_line(&self, needle: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        let (count, cvar) = &*self.line_added;
        let mut seen = count.lock().unwrap();
        loop {
            if let Some(line) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            let now = std::time::Instant::now();
            assert!(
                now < deadline,
                "{} did not print {needle:?} within {limit:?}; stderr:\n{}",
                self.name,
                self.stderr().join("\n")
            );
            seen = cvar.wait_timeout(seen, deadline - now).unwrap().0;
        }
    }

    /// Sends SIGTERM and waits for the exit; returns (status, stdout).
    pub fn terminate(self, limit: Duration) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.wait_exit(limit)
    }

    /// Waits for the process to exit by itself within `limit` (killed and
    /// failed otherwise); returns (status, stdout).
    pub fn wait_exit(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.read_stdout());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not exit within {limit:?}; stderr:\n{}",
                self.name,
                self.stderr().join("\n")
            );
            // No exit event to wait on for a child without a pidfd.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the (exited) child wrote to stdout.
    fn read_stdout(&mut self) -> String {
        use std::io::Read as _;
        let mut stdout = String::new();
        if let Some(mut pipe) = self.child.stdout.take() {
            pipe.read_to_string(&mut stdout).unwrap();
        }
        stdout
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts rotel (the `agent` binary, from [`rotel_agent`]): OTLP in on two
/// free ports, OTLP/gRPC out to `receiver`. Returns the process and its
/// (gRPC, HTTP) ports once it listens.
pub fn start_rotel(agent: &Path, receiver_grpc: std::net::SocketAddr) -> (Proc, u16, u16) {
    let grpc = free_port();
    let http = free_port();
    let pid_file = std::env::temp_dir().join(format!("rotel-bgq-{grpc}.pid"));
    let proc = Proc::spawn(
        "rotel",
        Command::new(agent).args([
            "start",
            "--otlp-grpc-endpoint",
            &format!("127.0.0.1:{grpc}"),
            "--otlp-http-endpoint",
            &format!("127.0.0.1:{http}"),
            "--exporter",
            "otlp",
            "--otlp-exporter-endpoint",
            &format!("http://{receiver_grpc}"),
            "--otlp-exporter-protocol",
            "grpc",
            "--batch-timeout",
            "100ms",
            "--pid-file",
            pid_file.to_str().unwrap(),
        ]),
    );
    wait_listening(grpc, &proc);
    wait_listening(http, &proc);
    (proc, grpc, http)
}

/// Waits until a child accepts TCP connections on `port`.
pub fn wait_listening(port: u16, proc: &Proc) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} is not listening on {port}; stderr:\n{}",
            proc.name,
            proc.stderr().join("\n")
        );
        // Readiness of an external process: retry the connect shortly.
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Starts the built demo on `port` with a clean environment (PATH,
/// `LISTEN_ADDR`, `RUST_LOG=info`, the debug listener on a port of its own
/// choosing, then `settings`, which may name `DEBUG_LISTEN_ADDR`) and waits
/// until it listens.
pub fn start_demo(port: u16, settings: &[(&str, String)]) -> Proc {
    let mut command = Command::new(example("webhook"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("DEBUG_LISTEN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .envs(settings.iter().map(|(k, v)| (*k, v.as_str())));
    let demo = Proc::spawn("demo", &mut command);
    demo.wait_for_line("listening", Duration::from_secs(60));
    demo
}

/// `key=value` from the demo's shutdown report line.
pub fn report_field(report: &str, key: &str) -> u64 {
    let prefix = format!("{key}=");
    report
        .split([' ', '(', ')', ',', ';'])
        .find_map(|word| word.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key} in {report:?}"))
        .parse()
        .unwrap()
}
