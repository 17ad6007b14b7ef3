//! Container logs: stdout and stderr go to one file per container in the CRI
//! log format (`<RFC3339Nano> <stdout|stderr> <F|P> <text>`), rotated once it
//! passes a size limit, and read back for `wkctl logs`.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Which stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Default size at which a log file is rotated.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// The writing end handed to a container: cheap to clone, never blocks.
#[derive(Clone)]
pub struct LogSink {
    tx: mpsc::UnboundedSender<(Stream, Vec<u8>)>,
}

/// A handle to wait until everything written has reached the file.
pub struct LogWriter {
    task: tokio::task::JoinHandle<()>,
}

impl LogWriter {
    /// Wait for the writer to drain (after every sink is dropped).
    pub async fn finish(self) {
        let _ = self.task.await;
    }
}

fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// How long a log file stays open after its last write. A quiet container
/// holds no descriptor for its log, so a node's open files do not grow
/// with its idle pods; a chatty one keeps its file open.
const IDLE_CLOSE: Duration = Duration::from_millis(500);

async fn open_append(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
}

/// Complete the writes in flight, then close.
async fn close(file: Option<tokio::fs::File>) {
    if let Some(mut f) = file {
        let _ = f.flush().await;
    }
}

/// Start a writer appending to `path`, rotating at `max_bytes` into `path.1`.
/// The file is created at once; it is open only while the container writes
/// ([`IDLE_CLOSE`]).
pub fn open(path: PathBuf, max_bytes: u64) -> (LogSink, LogWriter) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Stream, Vec<u8>)>();
    let task = tokio::spawn(async move {
        if let Some(dir) = path.parent() {
            let _ = tokio::fs::create_dir_all(dir).await;
        }
        let mut size = match open_append(&path).await {
            Ok(f) => f.metadata().await.map(|m| m.len()).unwrap_or(0),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open log file");
                return;
            }
        };
        let mut file: Option<tokio::fs::File> = None;
        let mut partial: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
        let write_line = |stream: Stream, line: &[u8], full: bool| {
            let mut out = format!(
                "{} {} {} ",
                timestamp(),
                stream.name(),
                if full { 'F' } else { 'P' }
            )
            .into_bytes();
            out.extend_from_slice(line);
            out.push(b'\n');
            out
        };
        loop {
            let next = if file.is_some() {
                match tokio::time::timeout(IDLE_CLOSE, rx.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        close(file.take()).await;
                        continue;
                    }
                }
            } else {
                rx.recv().await
            };
            let Some((stream, bytes)) = next else { break };
            let buf = &mut partial[stream as usize];
            buf.extend_from_slice(&bytes);
            let mut out = Vec::new();
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                out.extend(write_line(stream, &line[..line.len() - 1], true));
            }
            // Very long lines are written in parts, as the CRI format allows.
            if buf.len() > 16 * 1024 {
                let line = std::mem::take(buf);
                out.extend(write_line(stream, &line, false));
            }
            if out.is_empty() {
                continue;
            }
            if size + out.len() as u64 > max_bytes && size > 0 {
                close(file.take()).await;
                let _ = tokio::fs::rename(&path, rotated(&path)).await;
                size = 0;
            }
            let f = match file.as_mut() {
                Some(f) => f,
                None => match open_append(&path).await {
                    Ok(f) => file.insert(f),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot open log file");
                        return;
                    }
                },
            };
            if f.write_all(&out).await.is_err() {
                return;
            }
            size += out.len() as u64;
        }
        let mut rest = Vec::new();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let part = std::mem::take(&mut partial[stream as usize]);
            if !part.is_empty() {
                rest.extend(write_line(stream, &part, true));
            }
        }
        if !rest.is_empty() {
            if file.is_none() {
                file = open_append(&path).await.ok();
            }
            if let Some(f) = file.as_mut() {
                let _ = f.write_all(&rest).await;
            }
        }
        close(file).await;
    });
    (LogSink { tx }, LogWriter { task })
}

fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

impl LogSink {
    /// An `AsyncWrite` for one stream.
    pub fn writer(&self, stream: Stream) -> SinkWriter {
        SinkWriter {
            tx: self.tx.clone(),
            stream,
        }
    }
}

/// `AsyncWrite` into a [`LogSink`].
pub struct SinkWriter {
    tx: mpsc::UnboundedSender<(Stream, Vec<u8>)>,
    stream: Stream,
}

impl AsyncWrite for SinkWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.tx.send((self.stream, buf.to_vec())) {
            Ok(()) => Poll::Ready(Ok(buf.len())),
            Err(_) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "log writer closed",
            ))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// One parsed log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub timestamp: String,
    pub stream: String,
    pub text: String,
}

/// Read a container's log (rotated part first), parsed.
pub async fn read(path: &Path) -> std::io::Result<Vec<LogLine>> {
    let mut out = Vec::new();
    for p in [rotated(path), path.to_path_buf()] {
        let text = match tokio::fs::read_to_string(&p).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in text.lines() {
            let mut parts = line.splitn(4, ' ');
            let (Some(ts), Some(stream), Some(_flag)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            out.push(LogLine {
                timestamp: ts.into(),
                stream: stream.into(),
                text: parts.next().unwrap_or_default().into(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_timestamped_and_split_by_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let (sink, writer) = open(path.clone(), DEFAULT_MAX_BYTES);
        let mut out = sink.writer(Stream::Stdout);
        let mut err = sink.writer(Stream::Stderr);
        out.write_all(b"hello ").await.unwrap();
        err.write_all(b"oops\n").await.unwrap();
        out.write_all(b"world\nsecond\n").await.unwrap();
        out.write_all(b"no newline at exit").await.unwrap();
        drop((sink, out, err));
        writer.finish().await;
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(
            raw.contains(" stderr F oops\n") && raw.contains(" stdout F hello world\n"),
            "{raw}"
        );
        let lines = read(&path).await.unwrap();
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            vec!["oops", "hello world", "second", "no newline at exit"]
        );
        assert!(lines
            .iter()
            .all(|l| chrono::DateTime::parse_from_rfc3339(&l.timestamp).is_ok()));
    }

    /// Whether this process has `path` open.
    fn is_open(path: &Path) -> bool {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .any(|target| target == path)
    }

    #[tokio::test]
    async fn a_quiet_container_holds_no_descriptor_for_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let (sink, writer) = open(path.clone(), DEFAULT_MAX_BYTES);
        let mut out = sink.writer(Stream::Stdout);
        out.write_all(b"first\n").await.unwrap();
        // written, and then closed once the container is quiet
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while read(&path).await.unwrap().is_empty() || is_open(&path) {
            assert!(
                std::time::Instant::now() < deadline,
                "the log of a quiet container is still open"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // the next write reopens it and appends
        out.write_all(b"second\n").await.unwrap();
        drop((sink, out));
        writer.finish().await;
        let texts: Vec<String> = read(&path)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.text)
            .collect();
        assert_eq!(texts, ["first", "second"]);
        assert!(!is_open(&path), "closed when the writer finished");
    }

    #[tokio::test]
    async fn rotation_bounds_the_files_and_keeps_the_newest_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let (sink, writer) = open(path.clone(), 300);
        let mut out = sink.writer(Stream::Stdout);
        let all: Vec<String> = (0..50).map(|i| format!("line {i}")).collect();
        for l in &all {
            out.write_all(format!("{l}\n").as_bytes()).await.unwrap();
        }
        drop((sink, out));
        writer.finish().await;
        let rotated = path.with_extension("log.1");
        for p in [&path, &rotated] {
            assert!(
                std::fs::metadata(p).unwrap().len() <= 300,
                "{} exceeds the limit",
                p.display()
            );
        }
        let kept: Vec<String> = read(&path)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.text)
            .collect();
        assert!(kept.len() >= 4 && kept.len() < all.len(), "{kept:?}");
        assert_eq!(
            kept[..],
            all[all.len() - kept.len()..],
            "the newest lines, in order"
        );
    }
}
