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
//!
//! A thread of the chat gateway's standalone server (a runtime per core) holds its lines
//! back ([`hold_lines_on_this_thread`]) and writes them together once the first of them
//! is [`WRITE_AFTER`] old: when its runtime is about to wait for work then
//! ([`write_held_lines`], the runtime's park hook), else from the thread's writer task
//! ([`write_held_lines_when_due`], woken by that hook), and also when they would pass
//! `PIPE_BUF`, or when a line comes after the first held one is 50 ms old. Written at
//! every park, a thread ran out of work almost once per request at 8 connections on two
//! cores (1.4 lines per `write(2)`), and once per request at one connection
//! (docs/benchmarks.md, "Log lines written together", and the fifteenth session's
//! section). A request's line reaches the log about [`WRITE_AFTER`] after its response
//! when the thread then runs out of work; a thread that stays busy writes it with a line
//! that comes 50 ms on, or at its next 1 s tick. Other threads (the
//! blocking pool, every thread under Lambda, the other functions) write each line at
//! once, so one of their lines can come before a line a server thread logged earlier
//! and still holds; each line carries its timestamp.

use std::cell::OnceCell;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

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

/// How long a held line may wait for others before it is written anyway.
const HOLD_AT_MOST: Duration = Duration::from_millis(50);

/// How long a server thread's first held line waits for others before the thread writes
/// them: a thread that runs out of work sooner leaves them to its writer task.
pub const WRITE_AFTER: Duration = Duration::from_millis(5);

/// A holding thread's writer task's alarm: the park hook rings it when it leaves lines
/// held. One per holding thread, for the life of the process (`Box::leak`: a few
/// server threads, and a task on each that borrows it).
struct Alarm {
    notify: Notify,
    /// Rung and not yet answered with a write: the hook need not ring again.
    rung: AtomicBool,
    /// The writer task runs (it is stopped with its runtime, or aborted when the server
    /// stops): the hook writes at once when it does not.
    listening: AtomicBool,
}

/// Marks the writer task stopped and writes what its thread holds, when the task ends.
struct StopListening<'a> {
    alarm: &'static Alarm,
    file: Option<&'a File>,
}

impl Drop for StopListening<'_> {
    fn drop(&mut self) {
        self.alarm.listening.store(false, Ordering::Relaxed);
        if let Some(file) = self.file {
            write_held_to(file);
        }
    }
}

/// Lines one thread has not written yet: whole lines, at most `ATOMIC_WRITE_BYTES`.
#[derive(Default)]
struct Held {
    bytes: Vec<u8>,
    /// When the first of them was held.
    since: Option<Instant>,
}

impl Held {
    /// Writes what is held in one `write(2)`; what fails to be written is dropped, so a
    /// broken destination does not make the buffer grow.
    fn write_out(&mut self, file: &File) -> io::Result<()> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        let written = write_whole(file, &self.bytes);
        self.bytes.clear();
        self.since = None;
        written
    }
}

/// Each holding thread's lines; locked by its own thread, and by another only to write
/// them all out at exit.
type HeldLines = Arc<Mutex<Held>>;

thread_local! {
    /// Set on a thread that holds its lines.
    static HELD: OnceCell<HeldLines> = const { OnceCell::new() };
    /// Set on a holding thread that runs [`write_held_lines_when_due`].
    static ALARM: OnceCell<&'static Alarm> = const { OnceCell::new() };
}

/// Every holding thread's lines, for [`write_all_held_lines`].
static EVERY_HOLDER: Mutex<Vec<HeldLines>> = Mutex::new(Vec::new());

/// From now on this thread's lines are held and written together: only for a runtime
/// thread whose park hook calls [`write_held_lines`], so a line never waits for longer
/// than the thread is busy. Without a second descriptor for stdout, nothing is held.
pub fn hold_lines_on_this_thread() {
    if STDOUT.is_none() {
        return;
    }
    HELD.with(|held| {
        held.get_or_init(|| {
            let lines = HeldLines::default();
            lock(&EVERY_HOLDER).push(lines.clone());
            lines
        });
    });
}

/// The runtime's park hook of a holding thread: writes the lines it holds if the first
/// is [`WRITE_AFTER`] old, else has its writer task write them then (or now, without
/// such a task).
pub fn write_held_lines() {
    if let Some(file) = STDOUT.as_ref() {
        write_due_or_ring(file);
    }
}

/// Runs on a holding thread's runtime for as long as it does: writes the thread's held
/// lines [`WRITE_AFTER`] after the park hook found them not yet due, and at least every
/// `every` (a timer the server keeps due anyway, `server/shards.rs`).
pub async fn write_held_lines_when_due(every: Duration) {
    write_when_due(STDOUT.as_ref(), every).await;
}

async fn write_when_due(file: Option<&File>, every: Duration) {
    let alarm: &'static Alarm = ALARM.with(|alarm| {
        *alarm.get_or_init(|| {
            Box::leak(Box::new(Alarm {
                notify: Notify::new(),
                rung: AtomicBool::new(false),
                listening: AtomicBool::new(false),
            }))
        })
    });
    alarm.listening.store(true, Ordering::Relaxed);
    let _stop = StopListening { alarm, file };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = alarm.notify.notified() => tokio::time::sleep(WRITE_AFTER).await,
        }
        alarm.rung.store(false, Ordering::Relaxed);
        if let Some(file) = file {
            write_held_to(file);
        }
    }
}

fn write_due_or_ring(file: &File) {
    let _ = HELD.try_with(|held| {
        let Some(lines) = held.get() else { return };
        let mut lines = lock(lines);
        let Some(since) = lines.since else { return };
        let alarm = ALARM.try_with(|alarm| alarm.get().copied()).ok().flatten();
        match alarm {
            Some(alarm)
                if alarm.listening.load(Ordering::Relaxed) && since.elapsed() < WRITE_AFTER =>
            {
                if !alarm.rung.swap(true, Ordering::Relaxed) {
                    alarm.notify.notify_one();
                }
            }
            _ => {
                let _ = lines.write_out(file);
            }
        }
    });
}

/// Writes every thread's held lines: the process is about to exit.
pub fn write_all_held_lines() {
    if let Some(file) = STDOUT.as_ref() {
        write_all_held_to(file);
    }
}

fn write_held_to(file: &File) {
    let _ = HELD.try_with(|held| {
        if let Some(lines) = held.get() {
            let _ = lock(lines).write_out(file);
        }
    });
}

fn write_all_held_to(file: &File) {
    for lines in lock(&EVERY_HOLDER).iter() {
        let _ = lock(lines).write_out(file);
    }
}

/// A poisoned lock guards nothing but the order of writes: carry on.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

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

/// One line to `file` (standard output's second descriptor): held with the thread's
/// others where it holds them, else in one `write(2)`. Without such a descriptor,
/// through the stdout handle and its lock.
fn write_line(file: Option<&File>, line: &[u8]) -> io::Result<()> {
    let Some(file) = file else {
        let mut stdout = io::stdout().lock();
        stdout.write_all(line)?;
        return stdout.flush();
    };
    let held = HELD
        .try_with(|held| held.get().map(|lines| hold(file, &mut lock(lines), line)))
        .ok()
        .flatten();
    held.unwrap_or_else(|| write_whole(file, line))
}

/// Adds `line` to what this thread holds, writing the held lines first when they would
/// pass `PIPE_BUF` with it or have waited long enough; a line too long to hold goes out
/// on its own, after them.
fn hold(file: &File, held: &mut Held, line: &[u8]) -> io::Result<()> {
    let too_old = held
        .since
        .is_some_and(|since| since.elapsed() >= HOLD_AT_MOST);
    // A failed write of the held lines does not cost this line its own chance.
    let mut flushed = Ok(());
    if too_old || held.bytes.len() + line.len() > ATOMIC_WRITE_BYTES {
        flushed = held.write_out(file);
    }
    if line.len() > ATOMIC_WRITE_BYTES {
        return flushed.and(write_whole(file, line));
    }
    if held.bytes.is_empty() {
        held.since = Some(Instant::now());
        held.bytes.reserve(ATOMIC_WRITE_BYTES);
    }
    held.bytes.extend_from_slice(line);
    flushed
}

/// Whole lines to `file` in one `write(2)`; more than a pipe takes whole waits for the
/// other writers and holds them off meanwhile.
fn write_whole(mut file: &File, lines: &[u8]) -> io::Result<()> {
    if lines.len() <= ATOMIC_WRITE_BYTES {
        let _shared = LONG_LINE.read().unwrap_or_else(PoisonError::into_inner);
        file.write_all(lines)
    } else {
        let _alone = LONG_LINE.write().unwrap_or_else(PoisonError::into_inner);
        file.write_all(lines)
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

    /// What `path` holds so far, as lines.
    fn lines_in(path: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The tests that hold lines, one at a time: writing every thread's held lines
    /// would otherwise write another test's into this one's file.
    static HOLDING_TESTS: Mutex<()> = Mutex::new(());

    #[test]
    fn a_holding_thread_writes_its_lines_together_in_order() {
        let _alone = lock(&HOLDING_TESTS);
        let path = std::env::temp_dir().join(format!("held-lines-{}.log", std::process::id()));
        let file = File::create(&path).unwrap();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    hold_lines_on_this_thread();
                    for n in 0..3 {
                        write_line(Some(&file), format!("short {n}\n").as_bytes()).unwrap();
                    }
                    assert!(lines_in(&path).is_empty(), "held until the thread waits");
                    write_held_to(&file);
                    assert_eq!(lines_in(&path), ["short 0", "short 1", "short 2"]);
                    write_held_to(&file);
                    assert_eq!(lines_in(&path).len(), 3, "nothing is written twice");

                    // Past PIPE_BUF the held lines go out first, whole; this line stays held.
                    let long = |n: usize| format!("{n}:{}\n", "y".repeat(1500));
                    for n in 0..3 {
                        write_line(Some(&file), long(n).as_bytes()).unwrap();
                    }
                    assert_eq!(
                        lines_in(&path).len(),
                        5,
                        "two fit in 4096 bytes, the third waits"
                    );
                    // A line longer than a pipe takes whole follows the held one, not before.
                    write_line(Some(&file), format!("{}\n", "z".repeat(9000)).as_bytes()).unwrap();
                    let lines = lines_in(&path);
                    assert_eq!(lines.len(), 7);
                    assert!(lines[5].starts_with("2:") && lines[6].starts_with("zzz"));

                    // A held line that has waited long enough goes out with the next one.
                    write_line(Some(&file), b"early\n").unwrap();
                    std::thread::sleep(HOLD_AT_MOST + Duration::from_millis(10));
                    write_line(Some(&file), b"late\n").unwrap();
                    assert_eq!(lines_in(&path).last().map(String::as_str), Some("early"));
                    // At exit, every thread's held lines are written.
                })
                .join()
                .unwrap();
        });
        write_all_held_to(&file);
        assert_eq!(lines_in(&path).last().map(String::as_str), Some("late"));
        // A thread that does not hold writes each line at once.
        write_line(Some(&file), b"at once\n").unwrap();
        assert_eq!(lines_in(&path).last().map(String::as_str), Some("at once"));
        let _ = std::fs::remove_file(&path);
    }

    /// Run out of work with a line held that is not yet due, a thread leaves it to its
    /// writer task, which writes it a few milliseconds later though nothing else runs.
    #[test]
    fn a_line_held_at_a_park_is_written_soon_after_by_the_writer_task() {
        let _alone = lock(&HOLDING_TESTS);
        let path = std::env::temp_dir().join(format!("due-lines-{}.log", std::process::id()));
        let file: &'static File = Box::leak(Box::new(File::create(&path).unwrap()));
        let written = path.clone();
        std::thread::spawn(move || {
            let path = written;
            hold_lines_on_this_thread();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .on_thread_park(move || write_due_or_ring(file))
                .build()
                .unwrap();
            runtime.block_on(async {
                let task = tokio::spawn(write_when_due(Some(file), Duration::from_secs(3600)));
                tokio::task::yield_now().await;
                let alarm = ALARM.with(|alarm| *alarm.get().expect("the task set its alarm"));
                // Not due (its first line held "from now on"): the hook rings, and waits.
                write_line(Some(file), b"young\n").unwrap();
                HELD.with(|held| {
                    lock(held.get().unwrap()).since =
                        Some(Instant::now() + Duration::from_secs(3600));
                });
                write_due_or_ring(file);
                assert!(lines_in(&path).is_empty(), "not written by the hook");
                assert!(
                    alarm.rung.load(Ordering::Relaxed),
                    "the writer task is woken"
                );
                // Nothing else logs, and the line stays young for the hook at every park
                // meanwhile: only the writer task can write it, a few milliseconds later.
                for _ in 0..1000 {
                    if !lines_in(&path).is_empty() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                assert_eq!(lines_in(&path), ["young"]);
                // Due already: the hook writes it itself.
                write_line(Some(file), b"old\n").unwrap();
                HELD.with(|held| {
                    lock(held.get().unwrap()).since = Some(Instant::now() - WRITE_AFTER);
                });
                write_due_or_ring(file);
                assert_eq!(lines_in(&path), ["young", "old"]);
                // Once the task has stopped, the hook writes at once, young lines too.
                task.abort();
                let _ = task.await;
                write_line(Some(file), b"after\n").unwrap();
                HELD.with(|held| {
                    lock(held.get().unwrap()).since =
                        Some(Instant::now() + Duration::from_secs(3600));
                });
                write_due_or_ring(file);
                assert_eq!(lines_in(&path), ["young", "old", "after"]);
            });
        })
        .join()
        .unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_line_is_kept_when_writing_the_held_ones_fails() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let mut held = Held {
            bytes: b"old\n".to_vec(),
            since: Some(Instant::now() - HOLD_AT_MOST),
        };
        assert!(
            hold(&full, &mut held, b"new\n").is_err(),
            "the failure is reported"
        );
        assert_eq!(
            held.bytes, b"new\n",
            "the failed lines are dropped, the new one held"
        );
    }

    #[test]
    fn lines_written_at_once_from_many_threads_arrive_whole() {
        let _alone = lock(&HOLDING_TESTS);
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
                    // Half the threads hold their lines and write them together.
                    if thread % 2 == 0 {
                        hold_lines_on_this_thread();
                    }
                    for n in 0..400 {
                        // Every tenth line is longer than a pipe takes whole.
                        let pad = if n % 10 == 0 { 9000 } else { 300 };
                        let line = format!(
                            "{{\"thread\":{thread},\"n\":{n},\"pad\":\"{}\"}}\n",
                            "x".repeat(pad)
                        );
                        write_line(Some(file), line.as_bytes()).unwrap();
                        if n % 7 == 0 {
                            write_held_to(file);
                        }
                    }
                    write_held_to(file);
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
