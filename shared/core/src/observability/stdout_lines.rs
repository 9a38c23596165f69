//! Log lines written to standard output without the process-wide stdout lock.
//!
//! `std::io::stdout()` holds one mutex across each `write(2)`: with a runtime per core,
//! two threads finishing requests at once queued on it, and the loser slept in the
//! kernel (`strace -f` on the gateway at 8 connections: 0.4 contended waits per request,
//! docs/benchmarks.md, "Log lines without the stdout lock"). A line is handed to the
//! kernel in one `write(2)` of its own instead, under a shared read lock (an atomic
//! increment, no wait) that only a long line takes exclusively. Up to `PIPE_BUF` bytes,
//! a write to a pipe is atomic (what the Lambda log agent and a container runtime read),
//! and Linux writes a regular file's bytes under the file's own lock, so short lines
//! never interleave; a stream socket (journald's stdout stream) gives no such promise
//! for concurrent writers. A longer line, which a pipe may take in pieces, is written
//! while no other line is. The EMF metric lines go through here too; nothing else in the
//! process writes to stdout after start-up.
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::{LazyLock, RwLock};

use tracing_subscriber::fmt::MakeWriter;

/// The largest write POSIX guarantees a pipe takes whole (`PIPE_BUF` on Linux).
const ATOMIC_WRITE_BYTES: usize = 4096;

/// Standard output's file description, through a second descriptor (`dup`): the same
/// offset and flags, and no lock in this process. `None` if it cannot be duplicated
/// (no descriptor left): lines then go through `io::stdout()`.
static STDOUT: LazyLock<Option<File>> = LazyLock::new(|| {
    io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(File::from)
});

/// Taken shared by a line the kernel writes whole, exclusively by a longer one.
static LONG_LINE: RwLock<()> = RwLock::new(());

/// The `MakeWriter` of the JSON log layer in production.
#[derive(Clone, Copy, Default)]
pub(crate) struct StdoutLines;

impl<'a> MakeWriter<'a> for StdoutLines {
    type Writer = LineOut;

    fn make_writer(&'a self) -> Self::Writer {
        LineOut
    }
}

/// Writes each buffer it is given (a whole line, from the redacting writer) in one go.
pub(crate) struct LineOut;

impl Write for LineOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        write_line(STDOUT.as_ref(), buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes one whole line (ending in a line feed) to standard output, as log lines are.
pub(crate) fn write_stdout_line(line: &[u8]) -> io::Result<()> {
    write_line(STDOUT.as_ref(), line)
}

/// One line to `file` (standard output's second descriptor) in one `write(2)`; a line
/// too long to be written whole waits for the others and holds them off meanwhile.
/// Without such a descriptor, through the stdout handle and its lock.
fn write_line(file: Option<&File>, line: &[u8]) -> io::Result<()> {
    let Some(mut file) = file else {
        let mut stdout = io::stdout().lock();
        stdout.write_all(line)?;
        return stdout.flush();
    };
    // A poisoned lock guards nothing but the order of writes: carry on.
    if line.len() <= ATOMIC_WRITE_BYTES {
        let _shared = LONG_LINE.read().unwrap_or_else(|e| e.into_inner());
        file.write_all(line)
    } else {
        let _alone = LONG_LINE.write().unwrap_or_else(|e| e.into_inner());
        file.write_all(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_output_is_reached_through_a_descriptor_of_its_own() {
        let file = STDOUT.as_ref().expect("stdout can be duplicated");
        let theirs = io::stdout();
        let ours = file.as_fd();
        // A second descriptor for the same open file: writing through it is writing to
        // standard output, without the standard handle's lock.
        assert_ne!(
            std::os::fd::AsRawFd::as_raw_fd(&ours),
            std::os::fd::AsRawFd::as_raw_fd(&theirs.as_fd())
        );
        let (a, b) = (
            file.metadata().unwrap(),
            File::from(theirs.as_fd().try_clone_to_owned().unwrap())
                .metadata()
                .unwrap(),
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
    }

    #[test]
    fn lines_written_at_once_from_many_threads_arrive_whole() {
        let (mut reader, writer) = io::pipe().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(writer));
        let reading = std::thread::spawn(move || {
            let mut all = String::new();
            io::Read::read_to_string(&mut reader, &mut all).unwrap();
            all
        });
        std::thread::scope(|scope| {
            for thread in 0..8 {
                let file = &file;
                scope.spawn(move || {
                    for n in 0..400 {
                        // Every tenth line is longer than a pipe takes whole.
                        let pad = if n % 10 == 0 { 9000 } else { 300 };
                        let line = format!(
                            "{{\"thread\":{thread},\"n\":{n},\"pad\":\"{}\"}}\n",
                            "x".repeat(pad)
                        );
                        write_line(Some(file), line.as_bytes()).unwrap();
                    }
                });
            }
        });
        drop(file);
        let all = reading.join().unwrap();
        let lines: Vec<&str> = all.lines().collect();
        assert_eq!(lines.len(), 8 * 400);
        for line in lines {
            let value: serde_json::Value = serde_json::from_str(line).expect("a whole line");
            let expected = if value["n"].as_u64().unwrap().is_multiple_of(10) {
                9000
            } else {
                300
            };
            assert_eq!(value["pad"].as_str().map(str::len), Some(expected));
        }
    }
}
