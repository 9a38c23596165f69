//! The operator's command line, in the function's own binary:
//!
//! ```text
//! backup run                      take a backup now, then apply retention
//! backup list                     backups, newest first
//! backup verify [ID|latest]       re-read every file against its manifest
//! backup restore [ID|latest] [--force]
//! backup prune                    apply retention only
//! ```
//!
//! On a terminal each table gets a progress bar (rows, bytes, rate, time left); piped or
//! in Lambda, one JSON log line per table. The result goes to stdout as JSON; the exit
//! code is 0 on success, 1 on failure, 2 on a usage error.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use shared::backup::{Backups, LogProgress, Progress};
use shared::AppContext;

const COMMANDS: &[&str] = &[
    "run", "list", "verify", "restore", "prune", "help", "--help",
];

const USAGE: &str =
    "usage: backup run | list | verify [ID|latest] | restore [ID|latest] [--force] | prune
Settings come from the environment, as for the function (DATABASE_URL, BACKUP_URL,
BACKUP_RETENTION_DAYS, SESSIONS_TABLE, IDEMPOTENCY_TABLE, ELASTICACHE_REPLICATION_GROUP_ID).";

/// Runs a command when the binary was started with one (and not by Lambda); the exit
/// code, or `None` to start the function.
pub async fn run_if_asked() -> Option<i32> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first()?;
    if !COMMANDS.contains(&command.as_str()) || shared::runtime::in_lambda() {
        return None;
    }
    Some(run(&args).await)
}

/// Progress bars on the terminal, one per file.
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    fn new() -> Self {
        Self {
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

impl Progress for Bars {
    fn start(&self, file: &str, rows: Option<u64>) {
        let bar = self.multi.add(ProgressBar::new(rows.unwrap_or(0)));
        let template = if rows.is_some() {
            "{prefix:32} [{bar:25}] {pos}/{len} rows {msg} {per_sec} eta {eta}"
        } else {
            "{prefix:32} {spinner} {pos} rows {msg} {per_sec}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(file.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        self.bars.lock().unwrap().insert(file.to_string(), bar);
    }

    fn advance(&self, file: &str, rows: u64, bytes: u64) {
        if let Some(bar) = self.bars.lock().unwrap().get(file) {
            bar.set_position(rows);
            if bytes > 0 {
                bar.set_message(format!("{}", HumanBytes(bytes)));
            }
        }
    }

    fn finish(&self, file: &str, rows: u64, bytes: u64, took: Duration) {
        if let Some(bar) = self.bars.lock().unwrap().remove(file) {
            bar.set_length(rows);
            bar.set_position(rows);
            bar.finish_with_message(format!(
                "{} stored, {:.1} s",
                HumanBytes(bytes),
                took.as_secs_f64()
            ));
        }
    }
}

async fn run(args: &[String]) -> i32 {
    let command = args[0].as_str();
    if matches!(command, "help" | "--help") {
        println!("{USAGE}");
        return 0;
    }
    let force = args.iter().any(|a| a == "--force");
    let rest: Vec<&String> = args[1..].iter().filter(|a| *a != "--force").collect();
    let valid = match command {
        "verify" | "restore" => rest.len() <= 1 && (force == (command == "restore") || !force),
        _ => rest.is_empty() && !force,
    };
    if !valid {
        eprintln!("{USAGE}");
        return 2;
    }
    let id = rest.first().map(|s| s.as_str()).unwrap_or("latest");
    let terminal = std::io::stderr().is_terminal();
    if terminal && std::env::var_os("LOG_LEVEL").is_none() {
        // The bars say what happens; only warnings and errors as log lines.
        std::env::set_var("LOG_LEVEL", "warn");
    }
    let ctx = match AppContext::init("backup").await {
        Ok(ctx) => ctx,
        Err(err) => {
            eprintln!("backup: {err}");
            return 1;
        }
    };
    let backups = shared::services::backups(&ctx);
    let progress: Box<dyn Progress> = if terminal {
        Box::new(Bars::new())
    } else {
        Box::new(LogProgress { operation: "cli" })
    };
    match execute(&backups, command, id, force, progress.as_ref()).await {
        Ok(result) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&result).unwrap_or_default()
            );
            0
        }
        Err(err) => {
            eprintln!("backup {command}: {err}");
            1
        }
    }
}

async fn execute(
    backups: &Backups,
    command: &str,
    id: &str,
    force: bool,
    progress: &dyn Progress,
) -> Result<Value, shared::backup::BackupError> {
    Ok(match command {
        "run" => {
            let manifest = backups.run("cli", progress).await?;
            let retention = backups.prune().await?;
            json!({ "backup": manifest.id, "rows": manifest.rows(), "bytes": manifest.bytes,
                    "location": backups.location(), "retention": retention })
        }
        "list" => json!({ "location": backups.location(), "backups": backups.list().await? }),
        "verify" => json!({ "status": "ok", "verified": backups.verify(id, progress).await? }),
        "restore" => {
            json!({ "status": "restored", "restored": backups.restore(id, force, progress).await? })
        }
        _ => json!({ "retention": backups.prune().await? }),
    })
}
