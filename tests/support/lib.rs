//! Starts the function binaries as real processes for end-to-end tests.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Directory of the workspace's built binaries (next to this test's `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .to_path_buf()
}

pub use chatkb_testing::free_port;

/// A running function process; killed when dropped.
pub struct Function {
    pub name: String,
    pub port: u16,
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl Function {
    /// Starts `name` in standalone HTTP mode with exactly these variables (plus `PORT`).
    pub fn spawn(name: &str, vars: &[(&str, &str)]) -> Self {
        let port = free_port();
        let binary = bin_dir().join(name);
        assert!(
            binary.exists(),
            "{} is missing: run `cargo build --workspace` first (make test does)",
            binary.display()
        );
        let mut command = Command::new(&binary);
        command
            .env_clear()
            .env("PORT", port.to_string())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in vars {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("function starts");
        let output = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Self {
            name: name.to_string(),
            port,
            child,
            output,
        }
    }

    /// Starts the function and waits until it accepts connections.
    pub async fn start(name: &str, vars: &[(&str, &str)]) -> Self {
        let mut function = Self::spawn(name, vars);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", function.port))
                .await
                .is_ok()
            {
                return function;
            }
            if let Ok(Some(status)) = function.child.try_wait() {
                panic!(
                    "{name} exited with {status}: {}",
                    function.output().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not start: {}",
                function.output().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Everything the process printed so far (stdout and stderr).
    pub fn output(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads drain the pipes.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a printed line satisfies `predicate`.
    pub async fn wait_for_line(&self, predicate: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(line) = self.output().into_iter().find(|l| predicate(l)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "line not printed; output: {}",
                self.output().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
